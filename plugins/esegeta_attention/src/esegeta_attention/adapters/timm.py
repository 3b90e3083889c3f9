"""timm's attention modules: the ``fused_attn`` switch and the ``attn_drop`` module.

timm's ``Attention`` (ViT, DeiT, register-token ViTs and most ViT variants),
``AttentionRope``, EVA's ``EvaAttention``, BEiT's ``Attention`` and
``RelPosAttention`` compute ``F.scaled_dot_product_attention`` when their instance
attribute ``fused_attn`` is True, which never materialises the probabilities. With
``fused_attn = False`` they run the explicit path of the installed timm (1.0)::

    attn = (q * scale) @ k.transpose(-2, -1)   # (+ mask / relative position bias)
    attn = attn.softmax(dim=-1)
    attn = self.attn_drop(attn)                  # nn.Dropout: identity in eval mode
    x = attn @ v

so a forward hook on ``attn_drop`` sees the probabilities ``(B, heads, N, N)``, and in
eval mode its output is the very tensor multiplied with ``v``: gradients with respect
to it are the gradients with respect to the attention. ``fused_attn`` is put back (to
its value, or removed when it was not an instance attribute) when the call ends.
"""

from __future__ import annotations

from typing import ClassVar

from esegeta_attention.adapters.base import UnfusedAdapter

CLASSES: tuple[tuple[str, str], ...] = (
    ("timm.layers.attention", "Attention"),
    ("timm.layers.attention", "AttentionRope"),
    ("timm.models.eva", "EvaAttention"),
    ("timm.models.beit", "Attention"),
    ("timm.models.vision_transformer_relpos", "RelPosAttention"),
)
"""timm classes whose explicit path was read: softmax, then ``attn_drop``, then ``@ v``."""


class TimmAdapter(UnfusedAdapter):
    """timm attention modules with a ``fused_attn`` switch and an ``attn_drop`` module."""

    family: ClassVar[str] = "timm"
    reached: ClassVar[str] = (
        "fused_attn switched off for the call; the probabilities read at attn_drop"
    )
    classes = CLASSES
    flag = "fused_attn"
    reads = "attn_drop"


__all__ = ["CLASSES", "TimmAdapter"]

"""MONAI's ``SABlock`` (the self-attention of MONAI's ViT, UNETR, and others).

``SABlock`` computes ``F.scaled_dot_product_attention`` when ``use_flash_attention``
is True; otherwise the explicit path of MONAI 1.4-1.6::

    att_mat = torch.einsum("blxd,blyd->blxy", q, k) * self.scale   # (+ rel. pos., masks)
    att_mat = att_mat.softmax(dim=-1)
    if self.save_attn:
        self.att_mat = att_mat.detach()       # detached: no gradient through it
    att_mat = self.drop_weights(att_mat)      # nn.Dropout: identity in eval mode
    x = torch.einsum("bhxy,bhyd->bhxd", att_mat, v)

``save_attn`` stores a *detached* copy, useless for gradients (and it would leave a
tensor on the model), so this adapter does not touch it: it switches
``use_flash_attention`` off for the call and hooks ``drop_weights``, whose output in
eval mode is the tensor multiplied with ``v``, in the autograd graph.
"""

from __future__ import annotations

from typing import ClassVar

from esegeta_attention.adapters.base import UnfusedAdapter

CLASSES: tuple[tuple[str, str], ...] = (("monai.networks.blocks.selfattention", "SABlock"),)


class MonaiAdapter(UnfusedAdapter):
    """MONAI ``SABlock``: flash attention off for the call, probabilities read at
    ``drop_weights``."""

    family: ClassVar[str] = "monai"
    reached: ClassVar[str] = (
        "use_flash_attention switched off for the call; the probabilities read at "
        "drop_weights (save_attn keeps only a detached copy)"
    )
    classes = CLASSES
    flag = "use_flash_attention"
    reads = "drop_weights"
    flag_optional = True  # an SABlock without the flag has no fused path


__all__ = ["CLASSES", "MonaiAdapter"]

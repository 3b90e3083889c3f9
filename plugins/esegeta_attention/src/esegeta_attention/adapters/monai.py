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

from contextlib import ExitStack
from typing import ClassVar

from torch import nn

from esegeta_attention.adapters.base import (
    AttentionAdapter,
    Record,
    defined_by,
    forward_hook,
    record_output,
    switch_attribute,
)

CLASSES: tuple[tuple[str, str], ...] = (("monai.networks.blocks.selfattention", "SABlock"),)


class MonaiAdapter(AttentionAdapter):
    """MONAI ``SABlock``: flash attention off for the call, probabilities read at
    ``drop_weights``."""

    family: ClassVar[str] = "monai"
    reached: ClassVar[str] = (
        "use_flash_attention switched off for the call; the probabilities read at "
        "drop_weights (save_attn keeps only a detached copy)"
    )

    def matches(self, module: nn.Module) -> bool:
        return defined_by(type(module), CLASSES) and isinstance(
            getattr(module, "drop_weights", None), nn.Module
        )

    def enable(self, module: nn.Module, record: Record, stack: ExitStack) -> None:
        if getattr(module, "use_flash_attention", False):
            switch_attribute(stack, module, "use_flash_attention", False)
        forward_hook(stack, module.drop_weights, record_output(record))  # type: ignore[arg-type]


__all__ = ["CLASSES", "MonaiAdapter"]

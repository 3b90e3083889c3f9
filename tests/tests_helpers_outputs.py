"""A model factory for the run-config tests of output adapters (imported by path)."""

from __future__ import annotations

import torch
from torch import nn

from esegeta_core.testing import tiny_model


class DictSegmenter(nn.Module):
    """The tiny 3D segmenter, returning ``{"seg": logits, "deep": half-resolution}``."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_model("segmentation", 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.inner(x)
        return {"seg": y, "deep": y[..., ::2, ::2, ::2]}


def dict_segmenter() -> nn.Module:
    return DictSegmenter().eval()

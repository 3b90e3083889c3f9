"""Small helpers for plugin authors: what several methods would otherwise each write.

- :func:`interpolation_mode`: the linear interpolation mode of a spatial rank
  (``"linear"``, ``"bilinear"``, ``"trilinear"``), for up-sampling maps or masks in 1D,
  2D and 3D alike;
- :func:`gather_target`: the ``(B,)`` scores of each item's target class in ``(B,
  classes)`` scores.

A leaf module: it imports nothing of esegeta, so any layer and any plugin may use it.
"""

from __future__ import annotations

import torch

__all__ = ["INTERPOLATION_MODES", "gather_target", "interpolation_mode"]

INTERPOLATION_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
"""``F.interpolate``'s linear mode per number of spatial dimensions."""


def interpolation_mode(rank: int) -> str:
    """The linear ``F.interpolate`` mode for ``rank`` spatial dimensions (1, 2 or 3)."""
    try:
        return INTERPOLATION_MODES[rank]
    except KeyError:
        raise ValueError(
            f"linear interpolation takes 1 to 3 spatial dimensions, not {rank}"
        ) from None


def gather_target(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``scores[i, target[i]]`` for every item: ``(B,)`` from ``(B, classes)`` scores and
    a ``(B,)`` long tensor of classes (moved to the scores' device)."""
    return scores.gather(1, target.reshape(-1, 1).to(scores.device)).squeeze(1)

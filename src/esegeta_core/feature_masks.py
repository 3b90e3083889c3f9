"""Feature masks for perturbation methods: which pixels or voxels move together.

A feature mask is a ``(B, 1, *spatial)`` long tensor of feature ids (0..n-1), shared by
every channel. ``grid`` cuts the image or volume into cells of a given size (2D and
3D); a user tensor is checked and broadcast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esegeta_core.errors import InvalidParamsError


def as_size(value: int | Sequence[int], rank: int, what: str, method: str = "") -> tuple[int, ...]:
    """``8`` -> ``(8, 8)`` for 2D; a per-dimension sequence must have ``rank`` entries."""
    sizes = (value,) * rank if isinstance(value, int) else tuple(int(v) for v in value)
    if len(sizes) != rank or any(s < 1 for s in sizes):
        raise InvalidParamsError(
            f"Method {method!r}: {what} must be a positive int or {rank} positive ints for "
            f"{rank}D inputs, got {value!r}."
        )
    return sizes


def grid_mask(inputs: torch.Tensor, cell: int | Sequence[int], *, method: str = "") -> torch.Tensor:
    """A ``(B, 1, *spatial)`` mask of grid cells of size ``cell`` (the last cells may be
    smaller); ids run in row-major order."""
    spatial = tuple(inputs.shape[2:])
    sizes = as_size(cell, len(spatial), "cell size", method)
    ids = torch.zeros(spatial, dtype=torch.long, device=inputs.device)
    for dim, (n, c) in enumerate(zip(spatial, sizes, strict=False)):
        count = -(-n // c)
        index = torch.arange(n, device=inputs.device) // c
        shape = [1] * len(spatial)
        shape[dim] = n
        ids = ids * count + index.view(shape)
    return ids.expand(inputs.shape[0], 1, *spatial).clone()


def check_mask(mask: torch.Tensor, inputs: torch.Tensor, *, method: str = "") -> torch.Tensor:
    """Broadcast a user mask to ``(B, 1, *spatial)`` long ids, renumbered 0..n-1."""
    spatial = tuple(inputs.shape[2:])
    m = torch.as_tensor(mask, device=inputs.device)
    if m.is_floating_point() and not bool((m == m.round()).all()):
        raise InvalidParamsError(f"Method {method!r}: a feature mask must hold integer ids.")
    m = m.long()
    while m.ndim < len(spatial) + 2:
        m = m.unsqueeze(0)
    if tuple(m.shape[2:]) != spatial or m.shape[0] not in (1, inputs.shape[0]) or m.shape[1] != 1:
        raise InvalidParamsError(
            f"Method {method!r}: feature mask shape {tuple(mask.shape)} does not fit inputs "
            f"{tuple(inputs.shape)}; give one id per pixel/voxel, shaped like the spatial "
            "dimensions (optionally with batch and channel dimensions of size 1)."
        )
    _, renumbered = torch.unique(m, return_inverse=True)
    return renumbered.expand(inputs.shape[0], 1, *spatial).clone()

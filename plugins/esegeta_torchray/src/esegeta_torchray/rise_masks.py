"""TorchRay's RISE masks, drawn as TorchRay draws them, made for any range of them.

TorchRay's ``rise`` reseeds torch's generator with ``seed`` and draws its random masks
``batch_size`` at a time: a chunk's low-resolution binary grid, then the chunk's row
and column shifts. Each chunk's grids are reflect-padded, up-sampled (bilinear) to the
input's size plus one cell, and each mask is cropped at its shift; the chunk is then
scored in one pass per item. So its masks depend on ``batch_size``, and so do its
passes.

:class:`DrawnMasks` draws the same grids and shifts in the same order (a few bytes per
mask) from generators of its own, leaving torch's global ones alone (TorchRay restores
the CPU generator and leaves the CUDA one reseeded), and makes the masks of any range:
the same numbers TorchRay makes for them, since the up-sampling and the crop work mask
by mask. The passes need not follow TorchRay's chunks, and the pass planner can size
them (``torchray.rise``'s ``pass_size``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Upsample = Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]
"""TorchRay's ``_upsample_reflect(grids, size)``: reflect-pad by one cell, up-sample
bilinearly, crop to ``size``."""


MaskRange = Callable[[int, int], torch.Tensor]
"""``(first, last) -> (last - first, 1, H, W)``: masks ``first`` to ``last - 1``."""


class DrawnMasks:
    """TorchRay's random RISE masks: the grids and shifts of every mask, drawn as
    TorchRay draws them (:meth:`draw`), up-sampled and cropped per range on request."""

    def __init__(
        self,
        grids: torch.Tensor,
        shifts: list[tuple[int, int]],
        spatial: tuple[int, int],
        upsample: Upsample,
    ) -> None:
        self.grids = grids
        """``(N, 1, cells, cells)`` binary grids, float32, on the input's device."""
        self.shifts = shifts
        """Each mask's (row, column) shift into its up-sampled grid."""
        self.spatial = spatial
        self.upsample = upsample
        cell = tuple(math.ceil(s / grids.shape[-1]) for s in spatial)
        self.up_size = tuple(s + c for s, c in zip(spatial, cell, strict=True))
        """The up-sampled size: the input's plus one cell (TorchRay's ``up_size``)."""

    @classmethod
    def draw(
        cls,
        count: int,
        cells: int,
        p: float,
        chunk: int,
        seed: int,
        spatial: tuple[int, int],
        device: torch.device,
        upsample: Upsample,
    ) -> DrawnMasks:
        """``count`` masks drawn ``chunk`` at a time as TorchRay's ``rise(seed=seed,
        batch_size=chunk)``: per chunk, its grids from the input device's generator
        (``rand < p``), then its row and column shifts from the CPU's (``randint``
        below the cell size). On the CPU both are the one generator, in that order."""
        cpu = torch.Generator().manual_seed(seed)
        on_device = cpu if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
        cell = [math.ceil(s / cells) for s in spatial]
        grids: list[torch.Tensor] = []
        shifts: list[tuple[int, int]] = []
        for first in range(0, count, chunk):
            n = min(chunk, count - first)
            drawn = torch.rand(n, 1, cells, cells, device=device, generator=on_device)
            grids.append((drawn < p).float())
            rows = torch.randint(0, cell[0], (n,), generator=cpu).tolist()
            columns = torch.randint(0, cell[1], (n,), generator=cpu).tolist()
            shifts.extend(zip(rows, columns, strict=True))
        return cls(torch.cat(grids), shifts, spatial, upsample)

    def __call__(self, first: int, last: int) -> torch.Tensor:
        """Masks ``first`` to ``last - 1``, ``(n, 1, H, W)`` float32: their grids
        up-sampled together, each cropped at its shift (TorchRay's numbers)."""
        up = self.upsample(self.grids[first:last], self.up_size)
        height, width = self.spatial
        masks = torch.empty(last - first, 1, height, width, device=up.device, dtype=up.dtype)
        for i, (row, column) in enumerate(self.shifts[first:last]):
            masks[i] = up[i, :, row : row + height, column : column + width]
        return masks


def given_masks(masks: torch.Tensor) -> MaskRange:
    """Precomputed ``(N, 1, H, W)`` masks (TorchRay's ``filter_masks``) as a range."""

    def taken(first: int, last: int) -> torch.Tensor:
        return masks[first:last]

    return taken

"""Patch-based execution: explain volumes too large for memory, one patch at a time.

The input is split with torchio's ``GridSampler`` (patch size and overlap per spatial
dimension, 2D and 3D), each patch batch is explained like a normal input, and the maps
are stitched with ``GridAggregator`` (``average`` or Hann-weighted overlap, or
``crop``). Peak device memory depends on the patch size, not on the volume: only one
patch batch is on the device at a time, and the stitched map is accumulated on the
CPU. 2D images are handled as volumes of depth 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from esegeta_core.errors import InvalidParamsError
from esegeta_core.toolkit import interpolation_mode

OverlapMode = Literal["average", "hann", "crop"]


class PatchSpec(BaseModel):
    """How to cut inputs into patches (sizes in voxels, per spatial dimension)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int | tuple[int, ...] = Field(description="Patch size: one int or one per dim.")
    overlap: int | tuple[int, ...] = Field(
        0, description="Overlap between neighbouring patches (even numbers), per dim."
    )
    mode: OverlapMode = Field(
        "average", description="How overlapping maps are combined: average, hann or crop."
    )
    batch_size: int = Field(1, ge=1, description="Patches explained together in one call.")

    def sizes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Patch size and overlap as ``rank``-tuples, checked."""
        size = _expand(self.size, rank, "patch size")
        overlap = _expand(self.overlap, rank, "patch overlap")
        for s, o in zip(size, overlap):
            if s < 1 or o < 0 or o % 2 or o >= s:
                raise InvalidParamsError(
                    f"patches: need size >= 1 and an even overlap smaller than the size, got "
                    f"size {size} and overlap {overlap}."
                )
        return size, overlap


def _expand(value: int | Sequence[int], rank: int, what: str) -> tuple[int, ...]:
    out = (int(value),) * rank if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != rank:
        raise InvalidParamsError(
            f"patches: {what} needs {rank} values for {rank}D inputs, got {value!r}."
        )
    return out


def needs_patches(spec: PatchSpec, spatial: Sequence[int]) -> bool:
    """Whether an input of this spatial shape is larger than one patch."""
    size, _ = spec.sizes(len(spatial))
    return any(n > s for n, s in zip(spatial, size))


def _to_tio(t: torch.Tensor) -> torch.Tensor:
    """(C, *spatial) -> torchio's (C, W, H, D); 2D gets a depth of 1."""
    return t.unsqueeze(-1) if t.ndim == 3 else t


def _from_tio(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[..., 0] if rank == 2 else t


def iterate_patches(
    item: torch.Tensor,
    spec: PatchSpec,
    extra: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Yield ``(patches, extra_patches, locations)`` batches for one item ``(C, *spatial)``.

    ``extra`` (``(C', *spatial)``, for example a region mask) is cut at the same places.
    """
    rank = item.ndim - 1
    sampler = _grid(item, spec, extra)
    batch: list = []
    for patch in sampler():
        batch.append(patch)
        if len(batch) == spec.batch_size:
            yield _collate(batch, rank, extra is not None)
            batch = []
    if batch:
        yield _collate(batch, rank, extra is not None)


def _collate(batch: list, rank: int, has_extra: bool):
    import torchio as tio

    data = torch.stack([_from_tio(p["image"].data, rank) for p in batch])
    extra = torch.stack([_from_tio(p["extra"].data, rank) for p in batch]) if has_extra else None
    locations = torch.stack([torch.as_tensor(p[tio.LOCATION]) for p in batch])
    return data, extra, locations


def _grid(item: torch.Tensor, spec: PatchSpec, extra: torch.Tensor | None = None):
    """torchio's GridSampler over one item ``(C, *spatial)`` (and ``extra`` alongside)."""
    import torchio as tio

    rank = item.ndim - 1
    size, overlap = spec.sizes(rank)
    if rank == 2:
        size, overlap = (*size, 1), (*overlap, 0)
    images = {"image": tio.ScalarImage(tensor=_to_tio(item.detach().cpu()))}
    if extra is not None:
        images["extra"] = tio.LabelMap(tensor=_to_tio(extra.detach().cpu()))
    return tio.GridSampler(tio.Subject(**images), size, overlap)


def aggregator_for(item: torch.Tensor, spec: PatchSpec):
    """A torchio ``GridAggregator`` matching :func:`iterate_patches` for ``item``."""
    import torchio as tio

    return tio.GridAggregator(_grid(item[:1], spec), overlap_mode=spec.mode)


def stitch_item(
    item: torch.Tensor,
    spec: PatchSpec,
    explain_batch: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    extra: torch.Tensor | None = None,
    on_patch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Explain one item ``(C, *spatial)`` patch batch by patch batch and stitch the maps.

    ``explain_batch(patches, extra_patches)`` returns maps ``(P, C', *patch)`` (maps at a
    coarser resolution are up-sampled to the patch first). Returns ``(C', *spatial)``.
    """
    rank = item.ndim - 1
    aggregator = aggregator_for(item, spec)
    for patches, extra_patches, locations in iterate_patches(item, spec, extra):
        maps = explain_batch(patches, extra_patches).detach().float()
        if tuple(maps.shape[2:]) != tuple(patches.shape[2:]):
            mode = interpolation_mode(rank)
            maps = F.interpolate(maps, size=patches.shape[2:], mode=mode, align_corners=False)
        maps = maps.cpu()
        if rank == 2:
            maps = maps.unsqueeze(-1)
        aggregator.add_batch(maps, locations)
        if on_patch is not None:
            on_patch(patches.shape[0])
    return _from_tio(aggregator.get_output_tensor(), rank)


def count_patches(item: torch.Tensor, spec: PatchSpec) -> int:
    """How many patches one item ``(C, *spatial)`` is cut into."""
    return len(_grid(item[:1], spec))

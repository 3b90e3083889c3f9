"""RISE (Petsiuk et al., https://arxiv.org/abs/1806.07421), N-dimensional and batched.

Random binary grids of ``cells`` cells per side are up-sampled (bilinear in 2D,
trilinear in 3D) with one cell of reflection padding and cropped at a random shift
of less than a cell, as in the paper and TorchRay; masks are made on the model's
device, ``batch_size`` at a time, from a generator seeded with ``mask_seed`` (or torch's
default generator, so ``explain(seed=...)`` is reproducible). Each item's saliency is
``sum_m P(target | x * m) * m / (N * p)``; only the target's score is accumulated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from esegeta_cnnvis.params import RiseParams
from esegeta_core import Explainer, InvalidParamsError
from esegeta_core.explainer import Workload
from esegeta_core.feature_masks import as_size


def rise_masks(
    count: int,
    cells: tuple[int, ...],
    spatial: tuple[int, ...],
    p: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(count, 1, *spatial)`` smooth random masks in [0, 1]; a cell is on with
    probability ``p``.

    The (bi/tri)linear up-sampling of each padded grid, cropped at its random shift, is
    computed one dimension at a time as a product with the rows of that dimension's
    interpolation matrix (PyTorch's own weights, read off an identity): the same masks
    as ``F.interpolate`` then a crop, without up-sampling the margins that the crop
    drops (7x faster for 256 masks at 48^3)."""
    rank = len(spatial)
    cell = [math.ceil(s / c) for s, c in zip(spatial, cells, strict=True)]
    grid = (torch.rand((count, 1, *cells), generator=generator, device=device) < p).to(dtype)
    mode = "reflect" if min(cells) > 1 else "replicate"
    masks = F.pad(grid, [1, 1] * rank, mode=mode)[:, 0]
    rows = []
    for n, c, k in zip(spatial, cell, cells, strict=True):
        # (c * (k + 2), k + 2): output position -> weights of the padded cells
        eye = torch.eye(k + 2, device=device, dtype=dtype).unsqueeze(1)
        weights = F.interpolate(eye, size=c * (k + 2), mode="linear", align_corners=False)
        # crop at one padding cell plus a random shift in [0, cell) per dimension
        shift = torch.randint(0, c, (count,), generator=generator, device=device)
        positions = c + shift.view(-1, 1) + torch.arange(n, device=device)
        rows.append(weights[:, 0].T[positions])  # (count, n, k + 2)
    for d in reversed(range(rank)):
        moved = masks.movedim(1 + d, -1)
        shape = moved.shape
        flat = torch.bmm(moved.reshape(count, -1, shape[-1]), rows[d].transpose(1, 2))
        masks = flat.reshape(*shape[:-1], rows[d].shape[1]).movedim(-1, 1 + d)
    return masks.unsqueeze(1).contiguous()


def _score(out: torch.Tensor, target: int, how: str) -> torch.Tensor:
    if how == "softmax":
        return out.float().softmax(1)[:, target]
    if how == "sigmoid":
        return out[:, target].float().sigmoid()
    return out[:, target].float()


def _user_masks(masks: torch.Tensor, inputs: torch.Tensor, method: str) -> torch.Tensor:
    spatial = tuple(inputs.shape[2:])
    m = masks if masks.ndim == len(spatial) + 2 else masks.unsqueeze(1)
    if m.ndim != len(spatial) + 2 or m.shape[1] != 1 or tuple(m.shape[2:]) != spatial:
        raise InvalidParamsError(
            f"Method {method!r}: masks must be shaped (N, 1, *{spatial}) or (N, *{spatial}), "
            f"got {tuple(masks.shape)}."
        )
    return m.to(device=inputs.device, dtype=inputs.dtype)


class Rise(Explainer[RiseParams]):
    """RISE: saliency as the average of random masks weighted by the target's score."""

    name = "cnnvis.rise"
    count_params = ("num_masks",)
    family = "perturbation"
    output = "input"
    ranks = (2, 3)
    cost = "high"
    paper = "https://arxiv.org/abs/1806.07421"
    deterministic = False
    batch_params = ("batch_size",)
    # masked copies are scored without gradients: the core's pass planner runs them
    pass_params = ("batch_size",)

    def workload(
        self, params: RiseParams, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """One pass per mask and item, ``batch_size`` masked copies of one item per pass
        (the masks of a pass are made at the input's size, a few copies each)."""
        total = params.num_masks if params.masks is None else int(params.masks.shape[0])
        together = min(params.batch_size, total)
        return Workload(
            passes=total,
            inputs=together,
            extra=4 * together * math.prod(shape[2:]) * 4,
            counts=("num_masks",) if params.masks is None else ("masks",),
            fix="" if params.masks is None else "give fewer masks",
            batch=("batch_size",),
        )

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: RiseParams
    ) -> torch.Tensor:
        spatial = tuple(inputs.shape[2:])
        given = None if params.masks is None else _user_masks(params.masks, inputs, self.name)
        total = params.num_masks if given is None else given.shape[0]
        cells = as_size(params.cells, len(spatial), "cells", self.name)
        generator = None
        if given is None and params.mask_seed is not None:
            generator = torch.Generator(device=inputs.device).manual_seed(params.mask_seed)
        saliency = torch.zeros(inputs.shape[0], math.prod(spatial), device=inputs.device)
        targets = target.tolist()
        with torch.no_grad():
            for start in range(0, total, params.batch_size):
                count = min(params.batch_size, total - start)
                if given is None:
                    masks = rise_masks(
                        count,
                        cells,
                        spatial,
                        params.p,
                        generator=generator,
                        device=inputs.device,
                        dtype=inputs.dtype,
                    )
                else:
                    masks = given[start : start + count]
                flat = masks.reshape(count, -1).float()
                for i, t in enumerate(targets):
                    weights = _score(model(inputs[i : i + 1] * masks), t, params.scores)
                    saliency[i] += weights @ flat
        saliency /= total * params.p
        shape = (inputs.shape[0], 1, *spatial)
        return saliency.view(shape).to(inputs.dtype).expand(inputs.shape).contiguous()


RISE_METHODS: list[type[Explainer]] = [Rise]

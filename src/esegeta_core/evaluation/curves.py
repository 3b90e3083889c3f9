"""Perturbation curves: AOPC (MoRF), deletion and insertion.

All three order the input's pixels (or voxels), or the cells of a grid, by the map's
relevance, most relevant first, and change them cumulatively: after step ``k`` the
first ``n_k`` units are replaced (AOPC, deletion) or revealed (insertion), with
``n_k = floor(k * U / L)`` for ``U`` units and ``L`` steps. The model's score of the
target is read after every step: the curve has ``L + 1`` points, ``k = 0`` included.

Every (step, item) pair is an independent input, so the pairs are built on the fly and
run through the model ``batch_size`` at a time: one forward pass per chunk, no Python
loop over items or steps beyond the chunking. ``batch_size="auto"`` (the default)
tunes the pass size and memory layout on the metric's own passes (:mod:`.passes`).

Ties in relevance are broken by position (a stable sort), so results are repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from esegeta_core.baselines import gaussian_blur
from esegeta_core.devices import seeded
from esegeta_core.errors import InvalidParamsError
from esegeta_core.evaluation._common import (
    Score,
    check_attributions,
    check_inputs,
    check_positive_int,
    check_score,
    check_target,
    cpu,
    eval_mode,
    spatial_map,
    target_scores,
)
from esegeta_core.runtime.passes import BatchSize, check_batch_size, memory_format, run_passes
from esegeta_core.runtime.precision import Precision, check_precision, run_with_precision

Perturbation = Literal["zero", "mean", "blur", "noise"] | float | torch.Tensor
"""What replaces a pixel (or what insertion starts from).

``"zero"``: 0; ``"mean"``: the item's per-channel mean; ``"blur"``: the input blurred
with a Gaussian (``blur_sigma``, default 1/16 of the smallest spatial size, at least 1);
``"noise"``: uniform noise in the item's value range (seeded; drawn once per call, so
a replaced pixel keeps its value, and for the whole batch, so an item's noise depends
on the batch it came in); a number; or a tensor broadcastable to the inputs.
"""

__all__ = ["AOPCResult", "CurveResult", "Perturbation", "aopc", "deletion", "insertion"]


@dataclass(frozen=True)
class CurveResult:
    """A deletion or insertion curve.

    ``curve``: ``(B, L + 1)`` target scores after each step; ``fractions``: ``(L + 1,)``
    share of units changed at each step (0 to 1); ``auc``: ``(B,)`` trapezoidal area
    under the curve over ``fractions``.
    """

    curve: torch.Tensor
    fractions: torch.Tensor
    auc: torch.Tensor


@dataclass(frozen=True)
class AOPCResult:
    """``curve``: ``(B, L + 1)`` scores ``f(x_k)``; ``fractions``: ``(L + 1,)`` share of
    cells perturbed; ``aopc``: ``(B,)`` mean over ``k = 0..L`` of ``f(x_0) - f(x_k)``
    (higher is better)."""

    curve: torch.Tensor
    fractions: torch.Tensor
    aopc: torch.Tensor


def aopc(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    attributions: torch.Tensor,
    *,
    grid: int | Sequence[int] = 8,
    perturbation: Perturbation = "noise",
    steps: int | None = None,
    absolute: bool = False,
    score: Score = "softmax",
    blur_sigma: float | None = None,
    batch_size: BatchSize = "auto",
    seed: int | None = 0,
    amp: Precision | None = None,
) -> AOPCResult:
    """Area over the MoRF perturbation curve (Samek et al. 2017).

    The map is split into cells of ``grid`` pixels/voxels (one int, or one per spatial
    dimension; border cells may be smaller), cells are ranked by mean relevance and
    perturbed cumulatively, most relevant first; ``AOPC = mean_{k=0..L} f(x_0) - f(x_k)``
    (https://arxiv.org/abs/1509.06321). A faithful map makes the score drop early,
    giving a large AOPC. The xML paper reports cell sizes 4 to 32.

    Args:
        model: returns ``(B, classes)`` scores.
        inputs: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        target: ``(B,)`` class indices (or one int).
        attributions: shaped like the inputs (channels are summed) or
            ``(B, 1, *spatial)``.
        grid: cell size.
        perturbation: see :data:`Perturbation` (default ``"noise"``, Samek's choice).
        steps: ``L``; default all cells (one per step), else at most that many steps.
        absolute: rank by absolute relevance instead of signed relevance.
        score: ``"softmax"`` (the target's probability) or ``"raw"``.
        blur_sigma: Gaussian width for ``"blur"``.
        batch_size: perturbed inputs per forward pass, or ``"auto"``: at most 64, the
            fastest size and memory layout found on the first passes when the work is
            long (see :mod:`esegeta_core.runtime.passes`).
        seed: seeds ``"noise"``.
        amp: mixed precision for the forward passes, ``"bf16"`` (CPU or CUDA) or
            ``"fp16"`` (CUDA): faster, scores within about 1e-2 of float32's; scores
            are read in float32, and curves with NaN or infinite values are recomputed
            in float32 (logged); ``"tf32"``: CUDA's TF32 convolutions and matrix
            products. ``None`` (default): the model's own precision (float32 without
            TF32 on CUDA).
    """
    curve, fractions = _run_curve(
        "aopc",
        model,
        inputs,
        target,
        attributions,
        grid,
        perturbation,
        steps,
        absolute,
        score,
        blur_sigma,
        batch_size,
        seed,
        insert=False,
        amp=amp,
    )
    drop = curve[:, :1] - curve
    return AOPCResult(curve=curve, fractions=fractions, aopc=drop.mean(dim=1))


def deletion(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    attributions: torch.Tensor,
    *,
    grid: int | Sequence[int] = 1,
    steps: int | None = 100,
    perturbation: Perturbation = "zero",
    absolute: bool = False,
    score: Score = "softmax",
    blur_sigma: float | None = None,
    batch_size: BatchSize = "auto",
    seed: int | None = 0,
    amp: Precision | None = None,
) -> CurveResult:
    """Deletion curve and its AUC (Petsiuk et al. 2018, RISE).

    Pixels/voxels (``grid=1``) or grid cells are removed most relevant first
    (replaced by ``perturbation``, default zeros as in RISE) in ``steps`` equal
    portions; the AUC over the share removed is low when the map found what the model
    relies on (https://arxiv.org/abs/1806.07421). Arguments as in :func:`aopc`;
    ``steps=None`` removes one unit per step.
    """
    curve, fractions = _run_curve(
        "deletion",
        model,
        inputs,
        target,
        attributions,
        grid,
        perturbation,
        steps,
        absolute,
        score,
        blur_sigma,
        batch_size,
        seed,
        insert=False,
        amp=amp,
    )
    return CurveResult(curve=curve, fractions=fractions, auc=_auc(curve, fractions))


def insertion(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    attributions: torch.Tensor,
    *,
    grid: int | Sequence[int] = 1,
    steps: int | None = 100,
    baseline: Perturbation = "blur",
    absolute: bool = False,
    score: Score = "softmax",
    blur_sigma: float | None = None,
    batch_size: BatchSize = "auto",
    seed: int | None = 0,
    amp: Precision | None = None,
) -> CurveResult:
    """Insertion curve and its AUC (Petsiuk et al. 2018, RISE).

    Starting from ``baseline`` (default: the blurred input, as in RISE), the input's
    pixels/voxels or grid cells are put back most relevant first; the AUC is high when
    the map's top units alone restore the score (https://arxiv.org/abs/1806.07421).
    Arguments as in :func:`deletion`.
    """
    curve, fractions = _run_curve(
        "insertion",
        model,
        inputs,
        target,
        attributions,
        grid,
        baseline,
        steps,
        absolute,
        score,
        blur_sigma,
        batch_size,
        seed,
        insert=True,
        amp=amp,
    )
    return CurveResult(curve=curve, fractions=fractions, auc=_auc(curve, fractions))


def _auc(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    if curve.shape[1] < 2:
        return curve[:, 0] * 0
    return torch.trapezoid(curve.double(), fractions.double()[None], dim=1).to(curve.dtype)


def _run_curve(
    metric: str,
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    attributions: torch.Tensor,
    grid: int | Sequence[int],
    fill_spec: Perturbation,
    steps: int | None,
    absolute: bool,
    score: Score,
    blur_sigma: float | None,
    batch_size: BatchSize,
    seed: int | None,
    *,
    insert: bool,
    amp: Precision | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    x = check_inputs(metric, inputs)
    a = spatial_map(check_attributions(metric, attributions, x))
    spatial = tuple(x.shape[2:])
    cells = _check_grid(metric, grid, spatial)
    if steps is not None:
        check_positive_int(metric, "steps", steps)
    check_batch_size(metric, batch_size)
    check_score(metric, score)
    if blur_sigma is not None and not (isinstance(blur_sigma, (int, float)) and blur_sigma > 0):
        raise InvalidParamsError(
            f"Metric {metric!r}: blur_sigma must be a positive number, got {blur_sigma!r}."
        )
    with eval_mode(model, metric, amp) as device, seeded(seed, device), torch.inference_mode():
        check_precision(amp, device, metric, kind="Metric")
        x, a = x.to(device), a.to(device)
        t = check_target(metric, target, x.shape[0], device)
        other = _fill(metric, fill_spec, x, blur_sigma)
        rank, units = _unit_ranks(a, cells, absolute)
        n_steps = units if steps is None else min(steps, units)
        counts = torch.arange(n_steps + 1) * units // n_steps
        start, end = (other, x) if insert else (x, other)
        counts_dev = counts.to(device=device, dtype=rank.dtype)
        curve = run_with_precision(
            lambda: _scores(metric, model, start, end, rank, counts_dev, t, score, batch_size),
            amp,
            device,
            metric,
        )
    return cpu(curve), counts.double() / units


def _check_grid(metric: str, grid: object, spatial: tuple[int, ...]) -> tuple[int, ...]:
    sizes = (grid,) * len(spatial) if isinstance(grid, int) else grid
    ok = (
        isinstance(sizes, Sequence)
        and len(sizes) == len(spatial)
        and all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in sizes)
    )
    if not ok:
        raise InvalidParamsError(
            f"Metric {metric!r}: grid must be a positive int or one per spatial dimension "
            f"({len(spatial)} for inputs of spatial size {spatial}), got {grid!r}."
        )
    return tuple(min(g, s) for g, s in zip(sizes, spatial))  # type: ignore[union-attr]


def _fill(
    metric: str, spec: Perturbation, x: torch.Tensor, blur_sigma: float | None
) -> torch.Tensor:
    """The values a perturbed unit takes: shaped like ``x`` or broadcastable to it (a
    constant stays ``(1, 1, 1, 1)``, a mean ``(B, C, 1, 1)``: nothing is materialised
    that ``torch.where`` can broadcast)."""
    ones = (1,) * (x.ndim - 1)
    if isinstance(spec, torch.Tensor):
        fill = spec.detach().to(device=x.device, dtype=x.dtype)
        fill = fill.reshape((1,) * (x.ndim - fill.ndim) + tuple(fill.shape))
        try:
            ok = torch.broadcast_shapes(fill.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
        if not ok or fill.shape[0] not in (1, x.shape[0]):
            raise InvalidParamsError(
                f"Metric {metric!r}: a perturbation tensor of shape {tuple(spec.shape)} does "
                f"not broadcast to the inputs {tuple(x.shape)}."
            )
        return fill
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return torch.full((1, *ones), float(spec), device=x.device, dtype=x.dtype)
    if spec == "zero":
        return torch.zeros((1, *ones), device=x.device, dtype=x.dtype)
    if spec == "mean":
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    if spec == "blur":
        sigma = blur_sigma or max(1.0, min(x.shape[2:]) / 16)
        return gaussian_blur(x, sigma)
    if spec == "noise":
        flat = x.flatten(1)
        lo = flat.min(1).values.view(-1, *ones)
        hi = flat.max(1).values.view(-1, *ones)
        return lo + (hi - lo) * torch.rand_like(x)
    raise InvalidParamsError(
        f"Metric {metric!r}: perturbation {spec!r} is not one of 'zero', 'mean', 'blur', "
        "'noise', a number or a tensor."
    )


def _cell_ids(spatial: tuple[int, ...], cells: tuple[int, ...], device: torch.device):
    """Flat cell index of every pixel/voxel, ``(N,)``, and the number of cells."""
    n_cells = [math.ceil(s / c) for s, c in zip(spatial, cells)]
    ids = torch.zeros((), dtype=torch.long, device=device)
    for dim, (s, c) in enumerate(zip(spatial, cells)):
        idx = torch.arange(s, device=device) // c
        shape = [1] * len(spatial)
        shape[dim] = s
        ids = ids * n_cells[dim] + idx.view(shape)
    return ids.flatten(), math.prod(n_cells)


def _unit_ranks(
    smap: torch.Tensor, cells: tuple[int, ...], absolute: bool
) -> tuple[torch.Tensor, int]:
    """Each pixel's unit rank (0 = most relevant unit), ``(B, 1, *spatial)``, and ``U``."""
    b, spatial = smap.shape[0], tuple(smap.shape[2:])
    rel = smap.flatten(1).float()
    if absolute:
        rel = rel.abs()
    if all(c == 1 for c in cells):
        cell_rel, ids, units = rel, None, rel.shape[1]
    else:
        ids, units = _cell_ids(spatial, cells, smap.device)
        index = ids.expand(b, -1)
        sums = torch.zeros(b, units, device=smap.device).scatter_add_(1, index, rel)
        cell_rel = sums / torch.bincount(ids, minlength=units).clamp_min(1)
    order = torch.sort(cell_rel, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(units, device=smap.device).expand(b, -1))
    if units < 2**31:  # a quarter of the memory traffic when building inputs
        ranks = ranks.int()
    if ids is not None:
        ranks = ranks.gather(1, ids.expand(b, -1))
    return ranks.view(b, 1, *spatial), units


def _scores(
    metric: str,
    model: nn.Module,
    start: torch.Tensor,
    end: torch.Tensor,
    rank: torch.Tensor,
    counts: torch.Tensor,
    t: torch.Tensor,
    score: Score,
    batch_size: BatchSize,
) -> torch.Tensor:
    """``(B, L + 1)`` scores: input ``(k, i)`` is ``end`` where ``rank < counts[k]``, else
    ``start`` (both ``(B, ...)`` or broadcastable with a batch dimension of 1).

    The pairs are numbered step-major (``k * B + i``) and run in passes of consecutive
    pairs (:func:`~esegeta_core.runtime.passes.run_passes`); each pass is built by one
    broadcast ``torch.where`` per step it spans, straight into a buffer in the pass's
    memory layout (no gathers, no copies).
    """
    b, n = rank.shape[0], counts.shape[0]
    shape = torch.broadcast_shapes(start.shape, end.shape, (b,) + (1,) * (start.ndim - 1))

    def rows(tensor: torch.Tensor, items: slice) -> torch.Tensor:
        return tensor if tensor.shape[0] == 1 else tensor[items]

    def chunk(first: int, stop: int, channels_last: bool) -> torch.Tensor:
        x = torch.empty(
            (stop - first, *shape[1:]),
            dtype=start.dtype,
            device=rank.device,
            memory_format=memory_format(channels_last, len(shape)),
        )
        done = first
        while done < stop:
            k, i = divmod(done, b)
            items = slice(i, min(b, i + stop - done))
            changed = rank[items] < counts[k]
            out = x[done - first : done - first + items.stop - items.start]
            torch.where(changed, rows(end, items), rows(start, items), out=out)
            done += items.stop - items.start
        pairs = torch.arange(first, stop, device=rank.device) % b
        return target_scores(metric, model, x, t[pairs], score).float()

    item = torch.empty((1, *shape[1:]), dtype=start.dtype, device=rank.device)
    scores = run_passes(n * b, chunk, batch_size, model, item)
    return scores.view(n, b).T.contiguous()

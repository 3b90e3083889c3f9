"""Localisation metrics: does the map point at the object a mask marks?

No model is needed: each metric compares maps with ground-truth masks, batched over
items, in 2D and 3D. Maps are ``(B, 1, *spatial)`` or shaped like the inputs
``(B, C, *spatial)`` (channels are then summed); masks are ``(B, 1, *spatial)`` or
``(B, *spatial)``, boolean or 0/1. An item whose mask is empty (or whose map has
nothing to measure) gets NaN and a logged warning, as in Quantus (POMPOM excepted:
its definition covers empty masks).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from esegeta_core.errors import InvalidInputError, InvalidParamsError
from esegeta_core.evaluation._common import check_mask, check_nonnegative, cpu, spatial_map

log = logging.getLogger(__name__)

__all__ = [
    "PointingAccuracy",
    "PointingGameResult",
    "pointing_accuracy",
    "pointing_game",
    "pompom",
    "relevance_mass",
    "relevance_rank_accuracy",
]


@dataclass(frozen=True)
class PointingGameResult:
    """``hit``: ``(B,)`` 1.0 hit, 0.0 miss, NaN for an empty mask (skipped);
    ``point``: ``(B, rank)`` index of each map's maximum (first one on ties)."""

    hit: torch.Tensor
    point: torch.Tensor


@dataclass(frozen=True)
class PointingAccuracy:
    """``per_class``: ``(K,)`` hits / (hits + misses), NaN for classes never seen;
    ``accuracy``: their mean over the classes seen; ``counts``: ``(K,)`` items used."""

    per_class: torch.Tensor
    accuracy: torch.Tensor
    counts: torch.Tensor


def _maps_and_masks(
    metric: str, attributions: object, mask: object, *, empty_is_nan: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened maps ``(B, N)`` (float) and masks ``(B, N)`` (bool) on the maps' device."""
    if not isinstance(attributions, torch.Tensor) or attributions.ndim not in (4, 5):
        shape = tuple(attributions.shape) if isinstance(attributions, torch.Tensor) else None
        raise InvalidInputError(
            f"Metric {metric!r}: attributions must be a tensor shaped (B, 1 or C, H, W) "
            f"or (B, 1 or C, D, H, W), got {shape or type(attributions).__name__}."
        )
    a = spatial_map(attributions.detach()).float()
    if not bool(torch.isfinite(a).all()):
        raise InvalidInputError(f"Metric {metric!r}: attributions contain NaN or infinite values.")
    m = check_mask(metric, mask, a.shape[0], a.shape[2:]).to(a.device)
    empty = ~m.flatten(1).any(1)
    if empty_is_nan and bool(empty.any()):
        log.warning(
            "Metric %r: %d item(s) have an empty mask; their score is NaN.",
            metric,
            int(empty.sum()),
        )
    return a.flatten(1), m.flatten(1)


def _spacing(metric: str, spacing: object, rank: int) -> list[float]:
    values = [spacing] * rank if isinstance(spacing, (int, float)) else spacing
    if (
        not isinstance(values, Sequence)
        or len(values) != rank
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        or not all(v > 0 for v in values)  # type: ignore[operator]
    ):
        raise InvalidParamsError(
            f"Metric {metric!r}: spacing must be a positive number or one per spatial "
            f"dimension ({rank}), got {spacing!r}."
        )
    return [float(v) for v in values]  # type: ignore[arg-type]


def pointing_game(
    attributions: torch.Tensor,
    mask: torch.Tensor,
    *,
    tolerance: float = 15,
    spacing: float | Sequence[float] = 1.0,
) -> PointingGameResult:
    """Pointing game (Zhang et al. 2016, https://arxiv.org/abs/1608.00507), as TorchRay.

    A hit when the map's maximum (the first one on ties, as ``argmax``) lies less than
    ``tolerance`` pixels/voxels from a mask pixel, i.e. some mask pixel ``p`` has
    ``|p - point|^2 < tolerance^2`` (TorchRay's test; its benchmark uses 15 px).
    ``tolerance=1`` asks for the maximum itself to lie in the mask (Quantus's
    ``PointingGame`` for a unique maximum). ``spacing`` gives the voxel size per
    spatial dimension, so that the tolerance is in physical units for anisotropic
    volumes. Average hits per class with :func:`pointing_accuracy`.
    """
    metric = "pointing_game"
    check_nonnegative(metric, "tolerance", tolerance)
    a, m = _maps_and_masks(metric, attributions, mask)
    spatial = tuple(attributions.shape[2:])
    steps = _spacing(metric, spacing, len(spatial))
    _warn_lenient(tolerance, spatial, steps)
    flat = a.argmax(dim=1)
    coords = torch.stack(torch.unravel_index(flat, spatial), dim=1)  # (B, rank)
    dist2 = torch.zeros((a.shape[0],) + (1,) * len(spatial), device=a.device)
    for dim, (size, step) in enumerate(zip(spatial, steps)):
        shape = [a.shape[0]] + [1] * len(spatial)
        shape[1 + dim] = size
        axis = torch.arange(size, device=a.device, dtype=torch.float32)
        delta = (axis[None] - coords[:, dim, None].float()) * step
        dist2 = dist2 + (delta**2).view(shape)
    accept = dist2.flatten(1) < float(tolerance) ** 2
    hit = (m & accept).any(1).float()
    hit[~m.any(1)] = torch.nan
    return PointingGameResult(hit=cpu(hit), point=cpu(coords))


_WARNED: set[tuple[float, tuple[float, ...]]] = set()


def _warn_lenient(tolerance: float, spatial: tuple[int, ...], steps: list[float]) -> None:
    """Warn (once per tolerance and size) when the tolerance spans over a seventh of the
    image: TorchRay's 15 px is meant for 224 px images (15/224), and at 64 px a map
    that always points at the centre already scores about 0.77 on shapes anywhere."""
    extent = tuple(n * step for n, step in zip(spatial, steps))
    key = (float(tolerance), extent)
    if tolerance * 7 <= min(extent) or key in _WARNED:
        return
    _WARNED.add(key)
    scaled = 15 * min(extent) / 224
    log.warning(
        "pointing_game: tolerance %g spans more than a seventh of the %s input, which "
        "makes hits easy (TorchRay's 15 px is for 224 px images); consider "
        "tolerance=%.1f (15 px scaled to this size).",
        tolerance,
        "x".join(f"{e:g}" for e in extent),
        scaled,
    )


def pointing_accuracy(
    hit: torch.Tensor, classes: torch.Tensor, num_classes: int | None = None
) -> PointingAccuracy:
    """Per-class pointing accuracy and its mean over classes (TorchRay's benchmark).

    ``hit`` from :func:`pointing_game` (NaN items are skipped), ``classes`` the
    ``(B,)`` class of each item. Unlike TorchRay, whose mean runs over all
    ``num_classes`` (a class with no items counts as 0%), the mean here runs over the
    classes that have items; ``per_class`` is NaN for the others.
    """
    metric = "pointing_accuracy"
    h = torch.as_tensor(hit).detach().flatten().double().cpu()
    c = torch.as_tensor(classes).detach().flatten().cpu()
    if c.shape != h.shape or c.is_floating_point() or bool((c < 0).any()):
        raise InvalidInputError(
            f"Metric {metric!r}: classes must be non-negative integers, one per hit "
            f"({h.numel()}), got {tuple(c.shape)} {c.dtype}."
        )
    k = int(c.max()) + 1 if c.numel() else 0
    if num_classes is not None:
        if num_classes < k:
            raise InvalidParamsError(
                f"Metric {metric!r}: num_classes={num_classes} but a class {k - 1} occurs."
            )
        k = num_classes
    valid = ~torch.isnan(h)
    counts = torch.bincount(c[valid], minlength=k)
    hits = torch.bincount(c[valid], weights=h[valid], minlength=k)
    per_class = torch.where(counts > 0, hits / counts.clamp_min(1), torch.nan)
    seen = counts > 0
    accuracy = per_class[seen].mean() if bool(seen.any()) else torch.tensor(torch.nan)
    return PointingAccuracy(per_class=per_class, accuracy=accuracy, counts=counts)


def relevance_mass(attributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Relevance mass accuracy: the share of positive relevance inside the mask.

    ``sum(R+ inside) / sum(R+)`` per item, ``(B,)`` in [0, 1], higher is better
    (Arras et al. 2022, https://arxiv.org/abs/2003.07258). Negative relevance is
    ignored, as in the paper; NaN when the map has no positive relevance.
    """
    a, m = _maps_and_masks("relevance_mass", attributions, mask)
    pos = a.clamp_min(0)
    total = pos.sum(1)
    inside = (pos * m).sum(1)
    out = inside / total
    out[(total == 0) | ~m.any(1)] = torch.nan
    return cpu(out)


def relevance_rank_accuracy(attributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Relevance rank accuracy: the share of the K most relevant pixels inside the mask.

    ``K`` is the mask's size per item; ``(B,)`` in [0, 1], higher is better (Arras et
    al. 2022, https://arxiv.org/abs/2003.07258). Ranks use the signed relevance; ties
    at the K-th value are broken by position.
    """
    a, m = _maps_and_masks("relevance_rank_accuracy", attributions, mask)
    k = m.sum(1)
    order = torch.sort(a, dim=1, descending=True, stable=True).indices
    inside = m.gather(1, order).cumsum(1)  # mask pixels among the top j+1
    top = inside.gather(1, (k - 1).clamp_min(0)[:, None])[:, 0]
    out = top.double() / k.clamp_min(1)
    out[k == 0] = torch.nan
    return cpu(out.float())


def pompom(
    attributions: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-6, relative: bool = False
) -> torch.Tensor:
    """POMPOM: the percentage of meaningful pixels outside the mask.

    ``#{outside the mask and value > eps} / #{outside the mask}`` per item, ``(B,)`` in
    [0, 1], lower is better (Rio-Torto et al. 2020, "Understanding the decisions of
    CNNs: an in-model approach", https://doi.org/10.1016/j.patrec.2020.04.004, whose
    maps lie in [0, 1) and whose ``eps`` is about 1e-6). With ``relative`` the
    threshold is ``eps`` times the item's largest value, for maps in arbitrary units
    (then choose e.g. ``eps=0.05``; :func:`~esegeta_core.evaluation.evaluate` uses
    ``relative=True, eps=0.05`` by default). A mask covering everything gives 0, as the
    paper's formula (whose denominator carries ``+ eps``) does.
    """
    metric = "pompom"
    check_nonnegative(metric, "eps", eps)
    a, m = _maps_and_masks(metric, attributions, mask, empty_is_nan=False)
    level = eps * a.max(1, keepdim=True).values.clamp_min(0) if relative else eps
    outside = ~m
    n_outside = outside.sum(1)
    meaningful = ((a > level) & outside).sum(1)
    return cpu(meaningful.float() / n_outside.clamp_min(1))

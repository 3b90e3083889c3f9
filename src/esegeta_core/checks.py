"""Checks around a method call: costs refused before running, maps checked after.

A map that comes back empty, non-finite or in the wrong shape is never handed to the
user: :func:`check_map` raises :class:`~esegeta_core.MethodFailedError` naming the
method and the likely cause, for every method of every plugin, in one place. An
all-zero map is legal (a class with no evidence) but is reported with a warning.

:func:`check_cost` refuses requests whose forward passes run into the hundreds of
thousands (``n_steps``, ``num_masks``, ``num_samples`` in the millions), with an
estimate of time and memory measured on the model, unless ``force=True``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch import nn

from esegeta_core.errors import InvalidParamsError, MethodFailedError
from esegeta_core.explainer import Explainer, MethodParams

log = logging.getLogger(__name__)

MAX_PASSES = 200_000
"""Forward-pass equivalents one call may run without ``force=True``."""

_MULTIPLIERS = ("nt_samples", "noise_samples")
"""Copy counts of the noise tunnels that multiply a method's passes (named in messages)."""


def check_map(result: torch.Tensor, x: torch.Tensor, cls: type[Explainer], plugin: str) -> str:
    """Raise for an empty, non-finite or wrongly shaped map; return a warning for the
    caller to log (or "")."""
    who = f"Method {cls.name!r} (plugin {plugin!r})"
    shape = tuple(result.shape)
    if result.numel() == 0:
        raise MethodFailedError(
            f"{who} returned an empty map {shape}. Likely cause: the layer it read has no "
            "spatial positions in the layout it expected (a transformer's tokens, or an "
            "output after global pooling). Choose another layer, or layer='auto'."
        )
    if cls.output == "image":
        return _finite(result, who, shape) or ""
    if result.ndim < 2 or shape[0] != x.shape[0]:
        raise MethodFailedError(
            f"{who} returned a map shaped {shape} for a batch of {x.shape[0]} "
            f"{tuple(x.shape)}: one map per item is required. This is a bug in the plugin."
        )
    if cls.output == "input":
        spatial = tuple(x.shape[2:])
        ok = result.ndim == x.ndim and shape[2:] == spatial and shape[1] in (1, x.shape[1])
        if not ok:
            raise MethodFailedError(
                f"{who} returned a map shaped {shape}; an input map for {tuple(x.shape)} "
                f"must be (B, C or 1, {', '.join(map(str, spatial))}). This is a bug in "
                "the plugin."
            )
    elif result.ndim not in (x.ndim - 1, x.ndim):
        raise MethodFailedError(
            f"{who} returned a layer map shaped {shape}, which has no {x.ndim - 2}-D "
            f"spatial layout for the input {tuple(x.shape)}. Choose a layer whose output is "
            "a spatial map (B, C, *spatial), or layer='auto'."
        )
    _finite(result, who, shape)
    if not bool((result != 0).any()):
        return (
            f"{cls.name}: the map is zero everywhere; the target's score may not depend on "
            "what this method looks at (a layer after the decision, a ReLU that removed "
            "all evidence, a class the model never scores)."
        )
    return ""


def _finite(result: torch.Tensor, who: str, shape: tuple[int, ...]) -> None:
    if result.is_floating_point() and not bool(torch.isfinite(result).all()):
        bad = int((~torch.isfinite(result)).sum())
        raise MethodFailedError(
            f"{who} returned {bad} non-finite values (NaN or inf) in a map shaped {shape}. "
            "Likely cause: a propagation rule divided by a zero or negative denominator "
            "(excitation backprop and LRP assume non-negative activations; SiLU, GELU and "
            "Hardswish produce negative ones), or an overflow under mixed precision."
        )


def check_cost(
    explainer: Explainer,
    params: MethodParams,
    model: nn.Module,
    x: torch.Tensor,
    *,
    probe: torch.Tensor,
    force: bool,
    plugin: str,
) -> None:
    """Refuse a call estimated at more than :data:`MAX_PASSES` passes unless ``force``
    (``x``: the whole batch; ``probe``: what one pass sees, an item or a patch)."""
    per_item = explainer.passes(params, tuple(probe.shape))
    if per_item is None or force:
        return
    total = per_item * x.shape[0]
    if total <= MAX_PASSES:
        return
    start = time.perf_counter()
    with torch.no_grad():
        model(probe[:1])
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    per_pass = time.perf_counter() - start
    from esegeta_core.runtime.batching import bytes_per_sample

    per_sample = bytes_per_sample(model, probe)
    batched = _batch(explainer, params, per_item)
    names = (*explainer.count_params, *(n for n in _MULTIPLIERS if n not in explainer.count_params))
    counts = ", ".join(
        f"{n}={getattr(params, n)}" for n in names if isinstance(getattr(params, n, None), int)
    )
    raise InvalidParamsError(
        f"Method {explainer.name!r} (plugin {plugin!r}): {counts or 'these parameters'} ask "
        f"for about {total:,} forward passes ({per_item:,} per item): about "
        f"{_duration(per_pass * total)} on {x.device} (one pass of one item took "
        f"{per_pass * 1e3:.1f} ms; gradient methods add a backward pass each), with up to "
        f"{_size(per_sample * batched)} of activations per batch of {batched:,}. Lower the "
        "counts, or pass force=True to run it anyway."
    )


def _batch(explainer: Explainer, params: MethodParams, per_item: int) -> int:
    """Inputs per pass: the method's batch parameters, or everything at once if unset."""
    sizes = [getattr(params, n, None) for n in explainer.batch_params]
    sizes = [s for s in sizes if isinstance(s, int)]
    return min(sizes) if sizes else per_item


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if num_bytes < 1024 or unit == "TB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"  # pragma: no cover


def product_of_counts(params: MethodParams, names: tuple[str, ...]) -> int | None:
    """The product of the integer parameters ``names`` (None if there are none)."""
    values: list[Any] = [getattr(params, n, None) for n in names]
    counts = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return math.prod(counts) if counts else None

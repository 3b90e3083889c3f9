"""How a metric runs its many forward passes: inputs per pass and memory layout.

Perturbation curves call the model thousands of times (100 steps x 64 images is 6,400
inputs), so the forward pass is the whole cost, and two choices a user rarely makes
change it severalfold on a CPU. Inputs per pass: larger passes amortise overhead but
stop fitting in the cache (measured on 2 cores: the same 6,400 inputs through a small
CNN took 3.3 s in passes of 64 and 1.7 s in passes of 32). Memory layout: oneDNN's
convolutions run much faster on channels-last tensors (0.7 s in passes of 16).

With ``batch_size="auto"`` a metric whose work is long enough measures both on its own
first inputs (a few passes, a few per cent of the work) and keeps the fastest; the
channels-last layout is used only when the model accepts it and its scores agree with
the contiguous ones. The outcome is cached per model, input shape and autocast dtype
for the process.
An integer ``batch_size`` runs exactly that many inputs per pass, contiguous: no
measurement, predictable memory.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from esegeta_core.errors import InvalidParamsError

log = logging.getLogger(__name__)

BatchSize = int | Literal["auto"]
"""Inputs per forward pass: an integer, or ``"auto"`` (see :mod:`.passes`)."""

AUTO_MAX = 64
"""Most inputs per pass under ``batch_size="auto"``."""
AUTO_MIN = 4
"""Fewest inputs per pass the measurement tries."""
MEASURE_FROM = 32 * AUTO_MAX
"""Work (inputs) from which ``"auto"`` measures: below, passes of ``AUTO_MAX`` as is."""

_plans: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], PassPlan]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class PassPlan:
    """Inputs per forward pass and whether they are laid out channels-last."""

    batch_size: int
    channels_last: bool = False

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the plan's memory layout (a copy only when it changes)."""
        if not self.channels_last:
            return x
        return x.contiguous(memory_format=_channels_last(x))


def check_batch_size(metric: str, batch_size: object) -> BatchSize:
    """An integer >= 1 or ``"auto"``."""
    if batch_size == "auto":
        return "auto"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParamsError(
            f"Metric {metric!r}: batch_size must be an integer >= 1 or 'auto', got {batch_size!r}."
        )
    return batch_size


def plan_passes(
    batch_size: BatchSize,
    work: int,
    model: nn.Module,
    sample: torch.Tensor,
    scores: Callable[[torch.Tensor], torch.Tensor],
) -> PassPlan:
    """The plan for ``work`` inputs shaped like ``sample``'s items.

    ``scores(x)`` runs the model on ``x`` and returns what the metric reads (the
    comparison of layouts uses it); ``sample`` holds real items (on the model's
    device), repeated as needed to fill the measured passes.
    """
    if batch_size != "auto":
        return PassPlan(batch_size)
    if work < MEASURE_FROM:
        return PassPlan(min(AUTO_MAX, work))
    key = (tuple(sample.shape[1:]), sample.dtype, sample.device, _autocast(sample.device))
    cached = _plans.get(model, {}).get(key)
    if cached is not None:
        return cached
    plan = _measure(sample, scores)
    _plans.setdefault(model, {})[key] = plan
    log.debug("forward passes for %s: %s", type(model).__name__, plan)
    return plan


def _autocast(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs in on ``device`` now, ``None`` when it is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def _channels_last(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.ndim == 4 else torch.channels_last_3d


def _repeat_items(sample: torch.Tensor, size: int) -> torch.Tensor:
    index = torch.arange(size, device=sample.device) % sample.shape[0]
    return sample.index_select(0, index)


def _timed(scores: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Seconds per input of the second of two passes (the first pays the set-up of new
    shapes and layouts)."""
    scores(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    scores(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) / x.shape[0]


def _layout_agrees(
    scores: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[bool, float]:
    """Whether channels-last scores equal the contiguous ones, and its time per input."""
    if x.ndim not in (4, 5) or x.shape[1] == 1:
        return False, 0.0  # one channel: both layouts are the same memory
    channels_last = x.contiguous(memory_format=_channels_last(x))
    try:
        seconds = _timed(scores, channels_last)
        got = scores(channels_last).float()
    except Exception as exc:  # noqa: BLE001 - any failure here only rules the layout out
        # e.g. a .view() that needs contiguous strides, or a check of is_contiguous()
        log.debug("channels-last inputs rejected by the model: %s", exc)
        return False, 0.0
    want = scores(x).float()
    # under autocast the two layouts round differently; a layout-dependent model
    # differs by far more than either tolerance
    rtol = 1e-3 if _autocast(x.device) is None else 3e-2
    atol = rtol / 10 * max(1.0, float(want.abs().max()))
    return bool(torch.allclose(got, want, rtol=rtol, atol=atol)), seconds


def _measure(sample: torch.Tensor, scores: Callable[[torch.Tensor], torch.Tensor]) -> PassPlan:
    """Time passes of ``AUTO_MAX``, halving while the time per input improves by 5%,
    in the faster layout that agrees."""
    x = _repeat_items(sample, AUTO_MAX)
    best = _timed(scores, x)
    agrees, seconds = _layout_agrees(scores, x)
    channels_last = agrees and seconds < best
    if channels_last:
        best = seconds
    plan = PassPlan(AUTO_MAX, channels_last)
    size = AUTO_MAX // 2
    while size >= AUTO_MIN:
        seconds = _timed(scores, plan.layout(x[:size]))
        if seconds > 0.95 * best:
            break
        best, plan = seconds, PassPlan(size, channels_last)
        size //= 2
    return plan

"""The pass planner: how many inputs per forward pass, in which memory layout.

One planner for the metrics' perturbation curves (:func:`run_passes`) and for the
methods' perturbation passes under ``explain(auto_batch=True)`` (:class:`PassSplitter`),
with one cache of plans per network, input shape, dtype, device and autocast dtype.

Perturbation curves call the model thousands of times (100 steps x 64 images is 6,400
inputs), so the forward pass is the whole cost, and two choices a user rarely makes
change it severalfold on a CPU. Inputs per pass: larger passes amortise overhead but
stop fitting in the cache (measured on 2 cores: the same 6,400 inputs through a small
CNN took 3.3 s in passes of 64 and 1.7 s in passes of 32). Memory layout: oneDNN's
convolutions run much faster on channels-last tensors (0.7 s in passes of 16).

With ``batch_size="auto"`` the metric tunes both on its own passes, which all count
towards the result: one pass of 64 computed in both layouts (channels-last is used only
when the model accepts it and its scores agree with the contiguous ones), one more
timed pass in each, then halving the pass while the time per input improves by 5%; the
rest of the work runs in the fastest. The outcome is cached per model, input
shape and autocast dtype for the process, so later calls start at full speed. An
integer ``batch_size`` runs exactly that many inputs per pass, contiguous: no tuning,
predictable memory.
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
from esegeta_core.targets import ScoreModel

log = logging.getLogger(__name__)

BatchSize = int | Literal["auto"]
"""Inputs per forward pass: an integer, or ``"auto"`` (see :mod:`.passes`)."""

AUTO_MAX = 64
"""Most inputs per pass under ``batch_size="auto"``."""
AUTO_MIN = 4
"""Fewest inputs per pass the tuning tries."""
TUNE_FROM = 8 * AUTO_MAX
"""Work (inputs) from which ``"auto"`` tunes: below, passes of ``AUTO_MAX`` as is. It
covers the longest tuning, 2 x 64 + 64 + 64 + 2 x (32 + 16 + 8 + 4) = 376 inputs."""

Chunk = Callable[[int, int, bool], torch.Tensor]
"""``(start, stop, channels_last) -> (stop - start,)`` float scores of those inputs."""

_plans: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], PassPlan]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class PassPlan:
    """Inputs per forward pass and whether they are laid out channels-last."""

    batch_size: int
    channels_last: bool = False


def check_batch_size(metric: str, batch_size: object) -> BatchSize:
    """An integer >= 1 or ``"auto"``."""
    if batch_size == "auto":
        return "auto"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParamsError(
            f"Metric {metric!r}: batch_size must be an integer >= 1 or 'auto', got {batch_size!r}."
        )
    return batch_size


def memory_format(channels_last: bool, ndim: int) -> torch.memory_format:
    """The layout of ``ndim``-dimensional inputs under a plan."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def run_passes(
    work: int,
    chunk: Chunk,
    batch_size: BatchSize,
    model: nn.Module,
    sample: torch.Tensor,
) -> torch.Tensor:
    """``(work,)`` scores of inputs ``0 .. work - 1``, computed ``chunk`` by chunk.

    ``sample`` is an input (one item is enough) of the shape, dtype and device the
    chunks build: it keys the cache of plans and says whether channels-last is
    possible.
    """
    if batch_size != "auto":
        return _Runner(work, chunk, sample.device).finish(PassPlan(batch_size))
    # a segmentation model's scores come through a fresh ScoreModel per method: the
    # plan is the network's, kept with it (the wrapper's kind is part of the key)
    reduce = None
    if isinstance(model, ScoreModel):
        model, reduce = model.model, type(model.reduce).__name__
    key = (
        tuple(sample.shape[1:]),
        sample.dtype,
        sample.device,
        _autocast(sample.device),
        reduce,
    )
    cached = _plans.get(model, {}).get(key)
    runner = _Runner(work, chunk, sample.device)
    if cached is not None:
        return runner.finish(cached)
    if work < TUNE_FROM:
        return runner.finish(PassPlan(AUTO_MAX))
    reshapes = sample.ndim in (4, 5) and sample.shape[1] > 1  # else both layouts are one
    plan = _tune(runner, reshapes)
    _plans.setdefault(model, {})[key] = plan
    log.debug("forward passes for %s: %s", type(model).__name__, plan)
    return runner.finish(plan)


class _Runner:
    """Runs the work's chunks in order, keeping every score, timing on request."""

    def __init__(self, work: int, chunk: Chunk, device: torch.device) -> None:
        self.work, self.chunk, self.device = work, chunk, device
        self.done = 0
        self.scores: list[torch.Tensor] = []

    @property
    def left(self) -> int:
        return self.work - self.done

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, size: int, channels_last: bool, *, timed: bool = False) -> float:
        """Run the next ``size`` inputs; seconds per input when ``timed`` (which waits
        for the device), else 0."""
        stop = min(self.work, self.done + size)
        if timed:
            self._sync()
        start = time.perf_counter()
        self.scores.append(self.chunk(self.done, stop, channels_last))
        if timed:
            self._sync()
        seconds = (time.perf_counter() - start) / (stop - self.done)
        self.done = stop
        return seconds if timed else 0.0

    def timed(self, size: int, channels_last: bool) -> float:
        """Seconds per input of the second of two passes of ``size`` (the first pays
        the set-up of a new shape or layout)."""
        self.run(size, channels_last)
        return self.run(size, channels_last, timed=True)

    def layout_agrees(self, size: int) -> bool:
        """One pass computed both ways: whether channels-last is accepted and agrees
        (the contiguous scores are kept)."""
        stop = min(self.work, self.done + size)
        try:
            got = self.chunk(self.done, stop, True).float()
        except Exception as exc:  # noqa: BLE001 - any failure only rules the layout out
            # e.g. a .view() that needs contiguous strides, or a check of is_contiguous()
            log.debug("channels-last inputs rejected by the model: %s", exc)
            return False
        want = self.chunk(self.done, stop, False)
        self.scores.append(want)
        self.done = stop
        want = want.float()
        # under autocast the two layouts round differently; a layout-dependent model
        # differs by far more than either tolerance
        rtol = 1e-3 if _autocast(self.device) is None else 3e-2
        atol = rtol / 10 * max(1.0, float(want.abs().max()))
        return bool(torch.allclose(got, want, rtol=rtol, atol=atol))

    def finish(self, plan: PassPlan) -> torch.Tensor:
        while self.left > 0:
            self.run(plan.batch_size, plan.channels_last)
        return torch.cat(self.scores) if self.scores else torch.empty(0)


def _tune(runner: _Runner, reshapes: bool) -> PassPlan:
    """The fastest plan, found on the runner's own passes (at least ``TUNE_FROM``)."""
    channels_last = False
    if reshapes and runner.layout_agrees(AUTO_MAX):  # also the first pass of each layout
        best = runner.run(AUTO_MAX, False, timed=True)
        seconds = runner.run(AUTO_MAX, True, timed=True)
        if seconds < best:
            best, channels_last = seconds, True
    else:
        best = runner.timed(AUTO_MAX, False)
    plan = PassPlan(AUTO_MAX, channels_last)
    size = AUTO_MAX // 2
    while size >= AUTO_MIN:
        seconds = runner.timed(size, channels_last)
        if seconds > 0.95 * best:
            break
        best, plan = seconds, PassPlan(size, channels_last)
        size //= 2
    return plan


def _autocast(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs in on ``device`` now, ``None`` when it is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


# -- methods -------------------------------------------------------------------------
CLIMB_START = 16
"""Inputs per pass the methods' planner tries first; it then doubles while that is
faster per input, else halves (perturbation passes are many but a method's first
passes are few: starting in the middle reaches the best size in the fewest inputs)."""


CLIMB_FROM = 8 * CLIMB_START
"""Fewest inputs in one batch for the methods' planner to measure on it; a smaller
batch runs in passes of up to :data:`AUTO_MAX` as is (the measuring would cost more
than it can save)."""


def _climb(runner: _Runner, reshapes: bool, cap: int) -> tuple[PassPlan, bool]:
    """The fastest plan found on the runner's own inputs (all of them count): a pass at
    :data:`CLIMB_START` to set up, the layouts compared there when the input allows,
    then doubling while the time per input improves by 5%, else halving. Returns the
    plan and whether the search ended (false: the work ran out first)."""
    size = max(1, min(CLIMB_START, cap))
    if runner.left < CLIMB_FROM:  # too little work to pay for measuring: few big passes
        return PassPlan(max(1, min(cap, AUTO_MAX, runner.left))), False
    runner.run(size, False)  # the first pass of a shape pays its set-up
    channels_last = False
    # the layout trial computes one pass twice: only where that is a small share
    if reshapes and runner.left >= 16 * size and runner.layout_agrees(size):
        best = runner.run(size, False, timed=True)
        seconds = runner.run(size, True, timed=True)
        if seconds < best:
            best, channels_last = seconds, True
    else:
        best = runner.run(size, False, timed=True)
    plan = PassPlan(size, channels_last)
    for up in (True, False):
        step = size * 2 if up else size // 2
        while 1 <= step <= cap:
            if runner.left < step:
                return plan, False
            seconds = runner.run(step, channels_last, timed=True)
            if seconds > 0.95 * best:
                break
            best, plan = seconds, PassPlan(step, channels_last)
            step = step * 2 if up else step // 2
        if plan.batch_size != size:  # going up helped: no need to go down
            break
    return plan, True


def _forward_halving(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``; a CUDA out-of-memory splits the pass in two and retries each half."""
    try:
        return model(x)
    except torch.cuda.OutOfMemoryError:
        if x.shape[0] <= 1:
            raise
        if x.is_cuda:
            torch.cuda.empty_cache()
        half = x.shape[0] // 2
        log.warning("out of memory in a pass of %d inputs; retrying in halves", x.shape[0])
        return torch.cat([_forward_halving(model, x[:half]), _forward_halving(model, x[half:])])


def _batch_dependent(network: nn.Module) -> bool:
    """Whether splitting a pass could change its outputs: a batch-norm layer in training
    mode normalises with the statistics of the pass itself."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in network.modules()
    )


class PassSplitter(nn.Module):
    """The model as a method sees it under ``explain(auto_batch=True)``: a batch the
    method sends without gradients (its perturbations, masks) is run as the planner's
    fastest forward passes, found on these very passes and cached per network, so the
    method may send everything that fits in memory at once. Outputs are the model's,
    concatenated; passes with gradients, extra arguments or one input go through as is,
    and so does every pass of a network whose outputs depend on the batch (batch-norm in
    training mode).
    ``plan`` holds the last plan used (``None`` before any split pass)."""

    def __init__(self, model: nn.Module, network: nn.Module, cap: int = AUTO_MAX) -> None:
        super().__init__()
        self.model = model
        self._network = weakref.ref(network)
        self.cap = max(1, cap)
        self.plan: PassPlan | None = None
        self.tuned = False

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        network = self._network()
        if (
            args
            or kwargs
            or network is None
            or _batch_dependent(network)
            or torch.is_grad_enabled()
            or not isinstance(x, torch.Tensor)
            or x.ndim < 2
            or x.shape[0] <= 1
        ):
            return self.model(x, *args, **kwargs)
        key = ("method", tuple(x.shape[1:]), x.dtype, x.device, _autocast(x.device))
        model = self.model

        def chunk(start: int, stop: int, channels_last: bool) -> torch.Tensor:
            part = x[start:stop]
            if channels_last:
                part = part.contiguous(memory_format=memory_format(True, part.ndim))
            return _forward_halving(model, part)

        runner = _Runner(x.shape[0], chunk, x.device)
        plan = _plans.get(network, {}).get(key)
        if plan is None:
            reshapes = x.ndim in (4, 5) and x.shape[1] > 1
            plan, ended = _climb(runner, reshapes, self.cap)
            if ended:
                _plans.setdefault(network, {})[key] = plan
                self.tuned = True
                log.debug("forward passes for %s: %s", type(network).__name__, plan)
        self.plan = plan
        return runner.finish(plan)

"""The pass planner: how many inputs per forward pass, in which memory layout.

Perturbation work (a metric's curves, a method's occlusions, masks, ablations) runs the
model thousands of times, so the forward pass is the whole cost, and two choices a user
rarely makes change it severalfold on a CPU. Inputs per pass: larger passes amortise
overhead but stop fitting in the cache (measured on 2 cores: the same 6,400 inputs
through a small CNN took 3.3 s in passes of 64 and 1.7 s in passes of 32). Memory
layout: oneDNN's convolutions run much faster on channels-last tensors (0.7 s in passes
of 16).

One planner serves every caller, with one strategy (:func:`_climb`) and one cache of
plans per network, kind of pass, input shape, dtype, device and autocast dtype:

- the metrics' perturbation curves, ``batch_size="auto"`` (:func:`run_passes`);
- methods whose model sees big batches of perturbed inputs under
  ``explain(auto_batch=True)``: the core hands them a :class:`PassSplitter` as model;
- methods that build their passes themselves (Score-CAM, layer replay, the ablation
  engine) call :func:`method_passes`, planned while ``explain(auto_batch=True)`` holds
  the :func:`planning` context, else in passes of their fixed size.

The strategy measures on the work's own passes, which all count towards the result: a
first pass pays the set-up of a new shape; where the model accepts channels-last and its
outputs agree (checked on a few inputs computed both ways), both layouts are timed
twice and channels-last kept only when clearly faster; then the pass size doubles while
the time per input improves by 3% on a CPU, 5% elsewhere (else halves), each size timed
twice and a winner checked against the size it replaces timed again after it, within
the cap that fits in memory.
The search starts from the pass size the call would run without the planner (a
method's default pass parameter, :func:`~.pass_defaults.default_pass_start`), so it
leaves that size only for one it timed faster.
Work too short to finish the search keeps it: the next work of the same kind goes on
from the last size timed (after one untimed pass of the plan: a work's first pass runs
cold), so repeated short jobs converge.
A CUDA out-of-memory error in any pass splits it in two and retries. An integer
``batch_size`` outside these contexts runs exactly that many inputs per pass,
contiguous: no tuning, predictable memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from esegeta_core.errors import InvalidParamsError
from esegeta_core.runtime.heap import held_heap
from esegeta_core.runtime.precision import reduced
from esegeta_core.targets import ScoreModel

log = logging.getLogger(__name__)

BatchSize = int | Literal["auto"]
"""Inputs per forward pass: an integer, or ``"auto"`` (see :mod:`.passes`)."""

AUTO_MAX = 64
"""Most inputs per pass of a metric's curves under ``batch_size="auto"``."""
CLIMB_START = 16
"""Inputs per pass the planner tries first where the call names no default of its own
(the metrics' curves); it then doubles while that is faster per input, else halves
(starting in the middle reaches the best size in the fewest inputs)."""

Chunk = Callable[[int, int, bool], torch.Tensor]
"""``(start, stop, channels_last) -> (stop - start, ...)`` outputs of those inputs."""

_plans: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], PassPlan]] = (
    weakref.WeakKeyDictionary()
)
_unfinished: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], Search]] = (
    weakref.WeakKeyDictionary()
)
"""Searches the work ran out on: the next work of the same key resumes them where they
stopped (short work repeated, as a run's jobs, converges instead of starting over)."""


def clear_plans() -> None:
    """Forget every plan of the process (benchmarks measure the first call with it)."""
    _plans.clear()
    _unfinished.clear()


@dataclass(frozen=True)
class PassPlan:
    """Inputs per forward pass and whether they are laid out channels-last."""

    batch_size: int
    channels_last: bool = False


@dataclass
class Search:
    """Where a search for the fastest pass size stands: the best plan so far, its
    seconds per input (``inf`` before one was timed), the next size to time and
    whether the search is doubling (else halving) from the size it started at."""

    plan: PassPlan
    best: float
    step: int
    up: bool
    origin: int
    pending: float | None = None
    """The first timing of ``step`` when the work ran out before a second one."""
    trials: list[bool] = field(default_factory=list)
    """Layouts (channels-last or not) still to time at ``trial_size``."""
    timings: dict[bool, float] = field(default_factory=dict)
    """The best seconds per input of each layout timed at ``trial_size``."""
    layout: str = "checked"
    """``"deferred"`` while channels-last waits to be checked (after the climb, on
    short work), else ``"checked"``."""
    climbed: bool = False
    """Whether the pass size is found (only the deferred layout trial is left)."""
    trial_size: int = 0
    """Inputs per pass of the layout trial's timings (0: the plan's size)."""


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


def _autocast(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs in on ``device`` now, ``None`` when it is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def _key(kind: object, sample: torch.Tensor) -> tuple[object, ...]:
    """The cache key of a plan: what the passes compute on inputs like ``sample``, in
    which precision (autocast's dtype, TF32 or not)."""
    device = sample.device
    precision = (_autocast(device), reduced(device))
    return (kind, tuple(sample.shape[1:]), sample.dtype, device, precision)


def _layouts_differ(sample: torch.Tensor) -> bool:
    """Whether channels-last is a different layout for inputs like ``sample``."""
    return sample.ndim in (4, 5) and sample.shape[1] > 1


class _Runner:
    """Runs the work's chunks in order, keeping every output, timing on request. A CUDA
    out-of-memory error splits a chunk in two and retries each half."""

    def __init__(self, work: int, chunk: Chunk, device: torch.device, stretch: int = 0) -> None:
        self.work, self.chunk, self.device = work, chunk, device
        self.stretch = stretch  # a planned pass may grow to this to take a short rest
        self.done = 0
        self.outputs: list[torch.Tensor] = []

    @property
    def left(self) -> int:
        return self.work - self.done

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _call(self, start: int, stop: int, channels_last: bool) -> torch.Tensor:
        try:
            return self.chunk(start, stop, channels_last)
        except torch.cuda.OutOfMemoryError:
            if stop - start <= 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("out of memory in a pass of %d inputs; retrying in halves", stop - start)
            half = start + (stop - start) // 2
            return torch.cat(
                [self._call(start, half, channels_last), self._call(half, stop, channels_last)]
            )

    def run(self, size: int, channels_last: bool, *, timed: bool = False) -> float:
        """Run the next ``size`` inputs; seconds per input when ``timed`` (which waits
        for the device), else 0 (and 0 when no work is left)."""
        if self.left <= 0:
            return 0.0
        stop = min(self.work, self.done + size)
        short_rest = 0 < self.work - stop < max(1, size // 4) and self.left <= self.stretch
        if short_rest and not timed:
            # a last pass of a few inputs costs nearly a whole one; a timed pass keeps
            # its size (a stretched one is a new shape, whose set-up, ~60 ms for a
            # ResNet-50 at 64 px, made passes of 32 lose to 16 where they are 16% faster)
            stop = self.work
        if timed:
            self._sync()
        start = time.perf_counter()
        self.outputs.append(self._call(self.done, stop, channels_last))
        if timed:
            self._sync()
        seconds = (time.perf_counter() - start) / (stop - self.done)
        self.done = stop
        return seconds if timed else 0.0

    def layout_agrees(self, size: int) -> bool:
        """The next ``size`` inputs computed both ways: whether channels-last is
        accepted and agrees (the contiguous outputs are kept)."""
        stop = min(self.work, self.done + size)
        try:
            got = self.chunk(self.done, stop, True).float()
        except Exception as exc:  # noqa: BLE001 - any failure only rules the layout out
            # e.g. a .view() that needs contiguous strides, or a check of is_contiguous()
            log.debug("channels-last inputs rejected by the model: %s", exc)
            return False
        want = self._call(self.done, stop, False)
        self.outputs.append(want)
        self.done = stop
        want = want.float()
        if got.shape != want.shape:
            return False
        # under autocast the two layouts round differently; a layout-dependent model
        # differs by far more than either tolerance
        rtol = 3e-2 if reduced(self.device) else 1e-3
        atol = rtol / 10 * max(1.0, float(want.abs().max()))
        return bool(torch.allclose(got, want, rtol=rtol, atol=atol))

    def finish(self, plan: PassPlan) -> torch.Tensor:
        while self.left > 0:
            self.run(plan.batch_size, plan.channels_last)
        return torch.cat(self.outputs) if self.outputs else torch.empty(0)


AGREE_INPUTS = 4
"""Inputs the layout trial computes both ways: channels-last must be accepted and give
the same outputs (a model that depends on the layout does so on any input)."""
CHANNELS_LAST_GAIN = 0.97
"""Channels-last is chosen only when it takes at most this share of the contiguous
time per input (it also rounds differently: a tie keeps the layout the user gave)."""
SIZE_GAIN = {"cpu": 0.97}
"""Per device type, the share of the kept size's time per input a pass size must take
at most to replace it (the best of its two timings against the best of the kept size's,
timed again after it); :data:`SIZE_GAIN_ELSEWHERE` on other devices.
On a CPU, at 0.95 a real gain of 5-7% was lost about half the time to the timings'
spread of a few percent: KernelSHAP on a ResNet-50 at 64 px, 200 samples in passes of
32, 64 or 128 (bare passes: 0.673, 0.630, 0.613 s, medians of 6) kept 32 in 7 of 14
searches at 0.95 and in 1 of 14 at 0.97; sizes within 3% of each other cost about the
same whichever is kept."""
SIZE_GAIN_ELSEWHERE = 0.95
"""The bar on a GPU, unchanged where no lower one has been measured: bigger passes there
are nearly always a little faster per input as timed (fewer launches), and on an H200
the U-Net's occlusion at batch 4 already ran 7% slower planned at 512 inputs per pass
than at the default's size (session 25's benchmark)."""
CHANNELS_LAST_HOPELESS = 1.5
"""A first channels-last timing this many times slower than contiguous is not
repeated."""


LAYOUT_WORK = 16
"""Passes of the starting size a work must still hold for the layout trial to run in
it; shorter work (a one-off call) leaves the trial to the next work of its kind, once
the pass size is found, so that a single call never pays channels-last's set-up."""


def _climb(
    runner: _Runner,
    reshapes: bool,
    cap: int,
    start: int = CLIMB_START,
    search: Search | None = None,
) -> tuple[PassPlan, Search | None]:
    """The fastest plan found on the runner's own inputs (all of them count): a pass at
    ``start`` to set up, the starting size timed twice, then doubling while the time
    per input improves by 3% on a CPU (:data:`SIZE_GAIN`), else halving (each size
    timed twice, the second time by the next work if this one ends first: a new size's
    first pass pays its set-up, and a single timing on a busy machine misleads; a size
    that seems to win is kept only if it still does against the size kept so far timed
    again after it).
    Where the input allows, channels-last is checked on a few inputs computed both ways
    and, when it agrees, both layouts are timed twice: at the starting size when the
    work is long (:data:`LAYOUT_WORK`), else at the size found, by the next works.
    Every pass counts towards the result, so short work climbs too, as far as it goes,
    and returns its :class:`Search` (``None`` once the search has ended): given back
    with the next work of the same kind, the search goes on from there instead of
    starting over. Where the next size up is more than the work holds, a deferred
    layout trial goes on with the size found (and ends the search), rather than
    waiting for a longer work."""
    if search is None:
        # never more than the work: a start its first pass would swallow whole is
        # never timed (Ablation-CAM's 256 rows under layer replay's start of 512 kept
        # one untimed pass, and never tried channels-last, 1.2x the floor's 256 rows)
        size = max(1, min(start, cap, runner.work))
        runner.run(size, False)  # the first pass of a shape pays its set-up
        search = Search(PassPlan(size), math.inf, size * 2, True, size, trials=[False, False])
        search.layout = "deferred" if reshapes else "checked"
        if reshapes and runner.left >= LAYOUT_WORK * size:
            _check_layout(runner, search)
    deferred = search.climbed and search.layout == "deferred"
    if (search.trials or deferred) and not _time_layouts(runner, search):
        return search.plan, search  # the work ran out: the next work goes on from here
    if search.climbed:  # only the layout trial was left
        return search.plan, None
    _warm_up(runner, search)
    plan, search_left = _climb_sizes(runner, search, cap)
    if search.layout == "deferred" and (
        search_left is None or (search.up and search.step > runner.work)
    ):
        # the size is found, or the next size up is more than works like this one hold
        # (they could never time it, and the layout trial would wait for ever): the
        # next work checks and times channels-last, and the search ends with it
        search.climbed = True
        return plan, search
    return plan, search_left


def _warm_up(runner: _Runner, search: Search) -> None:
    """A resumed search's work starts with one untimed pass of the plan, where the work
    still holds the size to time after it: a work's first pass runs cold, and the
    second timing of a size left to the next work was that pass (KernelSHAP on a
    ResNet-50 at 64 px, 200 samples: passes of 64 took 4.2-5.1 ms per input as a
    call's first pass, 2.8-3.1 ms later, and lost to 32 in 3 of 3 searches, though 10%
    faster on the floor; with the warm-up they won 2 of 3)."""
    step = search.step
    if runner.done == 0 and step >= 1 and runner.left >= search.plan.batch_size + step:
        runner.run(search.plan.batch_size, search.plan.channels_last)


def _climb_sizes(runner: _Runner, search: Search, cap: int) -> tuple[PassPlan, Search | None]:
    """The pass-size part of :func:`_climb`."""
    gain = SIZE_GAIN.get(runner.device.type, SIZE_GAIN_ELSEWHERE)
    while True:
        step, plan = search.step, search.plan
        if 1 <= step <= cap:
            if runner.left < step:
                return plan, search  # the work ran out: the next work goes on from here
            # every size is timed twice, as the start was, and its best kept: the
            # first pass of a new size pays its set-up, and a single timing on a busy
            # machine misleads
            seconds = runner.run(step, plan.channels_last, timed=True)
            if search.pending is not None:  # its first timing, by the last work
                seconds = min(seconds, search.pending)
            elif runner.left >= step:
                seconds = min(seconds, runner.run(step, plan.channels_last, timed=True))
            else:  # the next work times it again
                search.pending = seconds
                return plan, search
            search.pending = None
            if seconds <= gain * search.best and runner.left >= plan.batch_size:
                # before it loses, the size kept so far is timed again, after the new
                # one: a call's passes speed up as it runs (memory the process gets
                # back, caches), which favours whatever is timed later (a 3D DenseNet's
                # passes of 16 took 56 ms per input at a call's start and 27 ms later,
                # and passes of 32, timed after them, won though 20% slower)
                again = runner.run(plan.batch_size, plan.channels_last, timed=True)
                search.best = min(search.best, again)
            if seconds <= gain * search.best:
                search.best, search.plan = seconds, PassPlan(step, plan.channels_last)
                search.step = step * 2 if search.up else step // 2
                continue
        if search.up and search.plan.batch_size == search.origin:
            search.up, search.step = False, search.origin // 2  # going up did not help
            continue
        return search.plan, None


def _check_layout(runner: _Runner, search: Search) -> bool:
    """Whether channels-last is accepted and agrees, on a few inputs computed both ways
    (a model that depends on the layout does so on any input); if so, both layouts are
    to be timed twice (``search.trials``, at ``search.trial_size``). False when no input was
    left to check on (the check waits for the next work)."""
    if runner.left <= 0:
        return False
    search.layout = "checked"
    if runner.layout_agrees(min(search.plan.batch_size, AGREE_INPUTS)):
        # each layout timed once before the other and once after it: the first big
        # pass of a work may grow the heap, faulting fresh pages in (a 3D DenseNet's
        # 124-row pass faulted 4,000 pages), and whichever layout always went first
        # paid for it (channels-last, 15% faster on that model, lost in session 20's
        # benchmark)
        search.trials = [True, False, False, True]
        search.timings.clear()
        # both layouts at one size; where the work is one pass of the plan (layer
        # replay's), at half of what it has left, so that both fit in a work
        search.trial_size = min(search.plan.batch_size, max(1, runner.left // 2))
    return True


def _time_layouts(runner: _Runner, search: Search) -> bool:
    """Time ``search.trials`` at one size (the plan's, or ``trial_size``; each layout's
    best kept, the first pass of channels-last paying its set-up); then choose the
    layout. False when the work ran out before a channels-last trial (the next work
    times it)."""
    timings = search.timings
    deferred = search.layout == "deferred" and search.climbed
    if runner.done == 0 and (deferred or search.trials[:1] == [True]):
        # a work's first pass stays contiguous: it may carry the work's own set-up
        # (layer replay checks it), which a rejected layout must not take with it
        runner.run(min(search.plan.batch_size, AGREE_INPUTS), False)
    if deferred:  # the layout trial left to this work
        if not _check_layout(runner, search):
            return False
        if not search.trials:
            return True
    size = search.trial_size or search.plan.batch_size
    while search.trials:
        if runner.left < size:
            if not (True in search.trials or True in timings) and False in timings:
                search.trials = []  # the start's second timing is not worth waiting for
                break
            # short work: the next work times what is left of the layout trial, each
            # layout twice (the best of two timings against one would favour the
            # layout timed twice: channels-last, 20% slower for a ResNet-50 at 64 px,
            # was chosen so)
            return False
        layout = search.trials.pop(0)
        seconds = runner.run(size, layout, timed=True)
        timings[layout] = min(timings.get(layout, math.inf), seconds)
        if timings.get(True, 0.0) > CHANNELS_LAST_HOPELESS * timings.get(False, math.inf):
            search.trials = [t for t in search.trials if not t]
    channels_last = timings.get(True, math.inf) <= CHANNELS_LAST_GAIN * timings[False]
    # after the climb only the layout changes; before it, the trial sized the start
    search.plan = PassPlan(search.plan.batch_size if search.climbed else size, channels_last)
    search.best = timings[channels_last]
    return True


@dataclass
class Planning:
    """The planner's state for one explanation: the network whose plans are cached and
    used, the most inputs per pass that fit in memory, the plan used last (``None``
    before any planned pass) and whether it was measured now (not from the cache)."""

    network: weakref.ref[nn.Module]
    cap: int
    plan: PassPlan | None = None
    tuned: bool = False
    start: int = CLIMB_START
    """The pass size a new search starts from: the size the call would run without the
    planner (its default pass parameter), so that the search leaves it only for a size
    measured faster, and ``auto_batch`` is never slower than the default by choice."""

    def run(
        self,
        work: int,
        chunk: Chunk,
        sample: torch.Tensor,
        kind: object,
        cap: int,
        layouts: bool,
        start: int | None = None,
    ) -> torch.Tensor:
        """``work`` inputs through the cached plan of ``(kind, sample)``, measuring one
        on these passes when there is none (from ``start``, else :attr:`start`)."""
        network = self.network()
        runner = _Runner(work, chunk, sample.device, stretch=cap)
        if network is None:
            return runner.finish(PassPlan(cap))
        key = _key(kind, sample)
        plan = _plans.get(network, {}).get(key)
        if plan is None or plan.batch_size > cap:
            search = _unfinished.get(network, {}).get(key)
            if search is not None and search.plan.batch_size > cap:
                search = None
            reshapes = layouts and _layouts_differ(sample)
            first = self.start if start is None else start
            plan, search = _climb(runner, reshapes, cap, first, search)
            if search is None:
                _plans.setdefault(network, {})[key] = plan
                _unfinished.get(network, {}).pop(key, None)
                self.tuned = True
                log.debug("passes of %s (%s): %s", type(network).__name__, kind, plan)
            else:
                _unfinished.setdefault(network, {})[key] = search
        self.plan = plan
        return runner.finish(plan)


def _batch_dependent(network: nn.Module) -> bool:
    """Whether splitting a pass could change its outputs: a batch-norm layer in training
    mode normalises with the statistics of the pass itself."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in network.modules()
    )


# -- metrics ---------------------------------------------------------------------------
def run_passes(
    work: int,
    chunk: Chunk,
    batch_size: BatchSize,
    model: nn.Module,
    sample: torch.Tensor,
) -> torch.Tensor:
    """``(work, ...)`` outputs of inputs ``0 .. work - 1``, computed ``chunk`` by chunk:
    in passes of ``batch_size``, or planned for speed with ``"auto"`` (at most
    :data:`AUTO_MAX` inputs per pass).

    ``sample`` is an input (one item is enough) of the shape, dtype and device the
    chunks build: it keys the cache of plans and says whether channels-last is
    possible. The passes hold freed memory for the next pass, as ``explain()`` does
    (:func:`~esegeta_core.runtime.heap.held_heap`).
    """
    with held_heap(sample.device):
        return _metric_passes(work, chunk, batch_size, model, sample)


def _metric_passes(
    work: int, chunk: Chunk, batch_size: BatchSize, model: nn.Module, sample: torch.Tensor
) -> torch.Tensor:
    if batch_size != "auto":
        return _Runner(work, chunk, sample.device).finish(PassPlan(batch_size))
    # a segmentation model's scores come through a fresh ScoreModel per method: the
    # plan is the network's, kept with it (the wrapper's kind is part of the key)
    kind: object = "metric"
    if isinstance(model, ScoreModel):
        model, kind = model.model, ("metric", type(model.reduce).__name__)
    if _batch_dependent(model):
        return _Runner(work, chunk, sample.device).finish(PassPlan(AUTO_MAX))
    return Planning(weakref.ref(model), AUTO_MAX).run(
        work, chunk, sample, kind, AUTO_MAX, layouts=True
    )


# -- methods ---------------------------------------------------------------------------
_planning: ContextVar[Planning | None] = ContextVar("esegeta_pass_planning", default=None)


@contextlib.contextmanager
def planning(network: nn.Module, cap: int, start: int | None = None) -> Iterator[Planning]:
    """Within the block, :func:`method_passes` plans its passes for ``network`` (the
    model a method explains; plans are cached with it) with at most ``cap`` inputs per
    pass, a new search starting from ``start`` inputs per pass (the method's default;
    ``None``: :data:`CLIMB_START`). ``explain(auto_batch=True)`` holds it around methods
    that build their own passes (``Explainer.own_passes``)."""
    state = Planning(weakref.ref(network), max(1, cap), start=max(1, start or CLIMB_START))
    token = _planning.set(state)
    try:
        yield state
    finally:
        _planning.reset(token)


def method_passes(
    work: int,
    chunk: Chunk,
    batch_size: int,
    sample: torch.Tensor,
    *,
    kind: object = "forward",
    layouts: bool = True,
    fits: int | None = None,
    start: int | None = None,
) -> torch.Tensor:
    """``(work, ...)`` outputs of a method's own passes, built and run by ``chunk``.

    Outside :func:`planning`, passes of ``batch_size`` inputs, contiguous. Within it
    (``explain(auto_batch=True)`` with the method's pass parameter left unset), the
    fastest plan for ``(kind, sample)`` on the network, at most ``batch_size`` and the
    planning cap per pass, measured on these passes when none is cached. ``kind`` names
    what a pass computes (``"forward"``: the whole model on inputs like ``sample``,
    whose plans the :class:`PassSplitter` shares); ``layouts=False`` when ``chunk``
    ignores its ``channels_last`` argument. The network's outputs must not depend on
    the batch: with batch norm in training mode the passes stay at ``batch_size``.
    ``fits``: the most inputs per pass that fit when a pass's inputs are lighter than
    whole inputs through the model (layer replay runs only the layers after one), in
    place of the planning cap and ``batch_size``. ``start``: the pass size the search
    starts from, where it differs from the method's default that :func:`planning` holds
    (layer replay's own default, for passes through the layers after one).
    """
    state = _planning.get()
    network = state.network() if state is not None else None
    if state is None or network is None or _batch_dependent(network):
        return _Runner(work, chunk, sample.device).finish(PassPlan(max(1, batch_size)))
    cap = max(1, fits if fits is not None else min(batch_size, state.cap))
    return state.run(work, chunk, sample, kind, cap, layouts, start)


class PassSplitter(nn.Module):
    """The model as a method sees it under ``explain(auto_batch=True)``: a batch the
    method sends without gradients (its perturbations, masks) is run as the planner's
    fastest forward passes, found on these very passes and cached per network, so the
    method may send everything that fits in memory at once. Outputs are the model's,
    concatenated; passes with gradients, extra arguments or one input go through as is,
    and so does every pass of a network whose outputs depend on the batch (batch-norm in
    training mode). ``state`` holds the plan used last."""

    def __init__(
        self, model: nn.Module, network: nn.Module, cap: int = AUTO_MAX, start: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.state = Planning(weakref.ref(network), max(1, cap), start=max(1, start or CLIMB_START))

    @property
    def plan(self) -> PassPlan | None:
        return self.state.plan

    @property
    def tuned(self) -> bool:
        return self.state.tuned

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        network = self.state.network()
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
        model = self.model

        def chunk(start: int, stop: int, channels_last: bool) -> torch.Tensor:
            part = x[start:stop]
            if channels_last:
                part = part.contiguous(memory_format=memory_format(True, part.ndim))
            return model(part)

        return self.state.run(x.shape[0], chunk, x, "forward", self.state.cap, layouts=True)

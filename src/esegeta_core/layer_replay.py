"""Scores with a layer's output replaced, computing the layers before it once per item.

Channel ablation (Ablation-CAM, Captum's layer feature ablation) scores the model many
times with one layer's output changed: a 2048-channel layer means 2048 forward passes
per item. Run naively, every pass recomputes everything before the layer, although
that part is the same for every ablated copy of an item. :func:`replaced_scores` runs
the model on the item once per chunk and, at the layer, expands to the chunk's
replacements, so the layers before it run once and only the rest of the model runs
per copy.

Whether this is valid depends on the model: a tensor from before the layer that meets
the expanded batch later (a skip connection) broadcasts from the one item to its copies,
which is right, but a concatenation or an explicit reshape with the item's batch size
fails or changes the result. Each item's first pass therefore carries the unmodified
output as one extra row, whose score must equal the plain forward pass's; otherwise (or
on any error) the call falls back to full passes, with the same result. The item's
second pass replays the layers before the layer from a record of the first
(:class:`~esegeta_core.prefix_memo.PrefixMemo`) and carries the extra row too: a replay
that changes it is dropped and the layers computed. The checks ride on real passes, so
they cost one row of the tail each, not passes of their own. A caller that runs the
plain forward pass of a single item anyway (the CAM template, Captum's layer ablation)
records it with :func:`recording_prefix`: then even the first pass replays the layers
before the layer instead of computing them again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from esegeta_core.prefix_memo import PrefixMemo, PrefixMismatchError
from esegeta_core.runtime.pass_buffer import PassBuffer
from esegeta_core.runtime.passes import method_passes
from esegeta_core.sites import Tap

log = logging.getLogger(__name__)

Build = Callable[[int, list[Any], torch.Tensor], None]
"""``build(item, keys, out)`` writes the replacements of one item's rows into ``out``,
``(len(keys), *original.shape[1:])``, which may be laid out channels-last."""

FAST_CHUNK = 256
"""Rows per pass when only the layers after the replaced one run per row. Measured on
2 CPU threads, the floor's sweeps of ResNet-50 at 64 px, `layer3` (1,024 rows of
``captum.layer_feature_ablation``, 990 of ``cnnvis.ablation_cam``): 256 rows per pass
fastest in 7 of 8 sweeps, 512 up to 21% slower."""
FAST_MOST = 512
"""Most rows per pass the planner may try on the fast path under ``auto_batch``."""
FULL_CHUNK = 32
"""Rows per pass when every row runs the whole model."""


def replaced_scores(
    model: nn.Module,
    module: nn.Module,
    inputs: torch.Tensor,
    original: torch.Tensor,
    target: torch.Tensor,
    reference: torch.Tensor,
    rows: list[tuple[int, Any]],
    build: Build,
    *,
    chunk: int | None,
    method: str = "",
    prefix: PrefixMemo | None = None,
) -> torch.Tensor:
    """The target score of each replaced row.

    ``original``: ``module``'s output on ``inputs`` ``(B, ...)``; ``reference``: the
    ``(B,)`` target scores of the plain forward pass; ``rows``: ``(item, key)`` pairs;
    ``build`` writes the replacements of one item's rows (see :data:`Build`; a chunk at
    a time, into one reused buffer). ``chunk``: rows per forward pass; None picks
    :data:`FAST_CHUNK` when only the layers after ``module`` run per row and
    :data:`FULL_CHUNK` when whole passes do; under ``explain(auto_batch=True)`` the
    most, the pass planner choosing the fastest size (and, for the layers after
    ``module``, layout) within it (:func:`~esegeta_core.runtime.passes.method_passes`).
    ``prefix``: the record :func:`recording_prefix` made of the plain forward pass of
    ``inputs`` (a single item). Returns a ``(len(rows),)`` tensor, in the order of
    ``rows``.
    """
    scores = torch.empty(len(rows), dtype=reference.dtype, device=reference.device)
    by_item: dict[int, list[int]] = {}
    for r, (item, _) in enumerate(rows):
        by_item.setdefault(item, []).append(r)
    buffer = PassBuffer(original[0])
    fast, memo = True, True
    for item, indices in by_item.items():
        keys = [rows[r][1] for r in indices]
        got: torch.Tensor | None = None
        if fast:
            record = PrefixMemo(model, module) if memo else None
            if prefix is not None and len(inputs) == 1:
                record = prefix  # the caller's plain pass recorded the item's layers
            replay = _ItemReplay(
                model, module, inputs[item : item + 1], original[item], int(target[item]),
                reference[item], keys, build, item, buffer, record,
            )  # fmt: skip
            try:
                # planned under explain(auto_batch=True): a pass runs the layers after
                # ``module`` on activations like ``original``; the layers before it run
                # once per pass, so the planner may go up to the fast path's own size,
                # and starts its search there (the passes run without the planner)
                got = method_passes(
                    len(keys), replay, chunk or FAST_CHUNK, original[:1],
                    kind=("replay", id(module)), fits=max(chunk or 0, FAST_MOST),
                    start=FAST_CHUNK,
                )  # fmt: skip
            except _NotExact as exc:
                log.info(
                    "%s: layer replay falls back to full passes (%s)", method or "ablation", exc
                )
                fast = False
            memo = replay.memo is not None and replay.memo.usable
        if got is None:
            got = method_passes(
                len(keys),
                _full_passes(model, module, inputs[item : item + 1], keys, build, item, buffer,
                             int(target[item])),
                chunk or FULL_CHUNK, inputs[:1], layouts=False, start=FULL_CHUNK,
            )  # fmt: skip
        scores[indices] = got.to(scores.dtype)
    return scores


class _NotExact(Exception):  # noqa: N818 - a signal inside this module, not an error
    """Expanding at the layer does not reproduce the plain score: run full passes."""


class _ItemReplay:
    """The passes of one item's rows, the layers before ``module`` computed once per
    pass or replayed from ``memo``'s record: called as the planner's chunk, ``(start,
    stop, channels_last)`` -> the rows' target scores.

    The first pass carries the unmodified output as an extra row whose score must equal
    ``reference`` (else :class:`_NotExact`), and so does the first replayed pass: a
    replay that changes it drops the memo and computes the layers. The first pass
    records the memo when it holds nothing yet."""

    def __init__(
        self,
        model: nn.Module,
        module: nn.Module,
        one: torch.Tensor,
        original: torch.Tensor,
        target: int,
        reference: torch.Tensor,
        keys: list[Any],
        build: Build,
        item: int,
        buffer: PassBuffer,
        memo: PrefixMemo | None,
    ) -> None:
        self.model, self.module, self.one = model, module, one
        self.original, self.target, self.reference = original, target, reference
        self.keys, self.build, self.item, self.buffer = keys, build, item, buffer
        self.memo = memo
        self.calls = 0
        self.replay_checked = False

    def __call__(self, start: int, stop: int, channels_last: bool) -> torch.Tensor:
        first, self.calls = self.calls == 0, self.calls + 1
        memo = self.memo
        replay = memo is not None and memo.usable and memo.recorded
        check = first or (replay and not self.replay_checked)  # the unmodified row first
        batch = self.buffer.take(stop - start + check, channels_last)
        if check:
            batch[0] = self.original
        self.build(self.item, self.keys[start:stop], batch[int(check) :])
        if replay and memo is not None:
            out = self._replayed(memo, batch, check, channels_last)
            if out is not None:
                return out[int(check) :, self.target]
        if first:  # computes everything, and records it when the memo holds nothing
            try:
                with memo.running() if memo is not None else contextlib.nullcontext():
                    out = _run(self.model, self.module, self.one, batch)
            except torch.cuda.OutOfMemoryError:
                raise  # the planner splits the pass
            except Exception as exc:  # any other failure means: run full passes
                raise _NotExact(f"{type(exc).__name__}: {exc}") from exc
            if not _replay_agrees(out, len(batch), self.target, self.reference):
                raise _NotExact("the unmodified row's score differs from the forward pass")
            return out[1:, self.target]
        out = _run(self.model, self.module, self.one, batch)
        return out[int(check) :, self.target]

    def _replayed(
        self, memo: PrefixMemo, batch: torch.Tensor, check: bool, channels_last: bool
    ) -> torch.Tensor | None:
        """The pass with the layers before ``module`` replayed; ``None`` (and the memo
        dropped) when the replay does not apply: its calls differ from the record, or,
        on a checked pass, it fails or changes the unmodified row. A checked pass laid
        out channels-last that fails raises instead and keeps the memo: the layout, not
        the record, may be at fault (the planner's trial then rules channels-last out,
        and the next contiguous pass is checked)."""
        try:
            with memo.running():
                out = _run(self.model, self.module, self.one, batch)
            if check:
                if not _replay_agrees(out, len(batch), self.target, self.reference):
                    raise PrefixMismatchError("the replayed pass changes the unmodified row")
                self.replay_checked = True
            return out
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            if check and channels_last:
                raise RuntimeError(f"layer replay: a channels-last pass failed ({exc})") from exc
            if isinstance(exc, PrefixMismatchError):
                log.info("layer replay: the layers before do not replay (%s); computing them", exc)
            elif not check:
                raise
            else:
                log.info("layer replay: replaying failed (%s); computing the layers", exc)
        memo.usable = False
        return None


@contextlib.contextmanager
def recording_prefix(
    model: nn.Module, module: nn.Module, inputs: torch.Tensor
) -> Iterator[PrefixMemo | None]:
    """Around a plain forward pass of ``inputs`` that a caller of
    :func:`replaced_scores` runs anyway: for a single item, records the layers before
    ``module`` (yields the :class:`PrefixMemo` to pass on as ``prefix``), so that the
    replay does not compute them again; ``None`` for a batch of several items."""
    if len(inputs) != 1:
        yield None
        return
    memo = PrefixMemo(model, module)
    with memo.running():
        yield memo


def _full_passes(
    model: nn.Module,
    module: nn.Module,
    one: torch.Tensor,
    keys: list[Any],
    build: Build,
    item: int,
    buffer: PassBuffer,
    target: int,
) -> Callable[[int, int, bool], torch.Tensor]:
    """Whole passes of one item's rows: the item's copies through the model, ``module``'s
    output replaced row by row."""

    def run(start: int, stop: int, _layout: bool) -> torch.Tensor:
        batch = buffer.take(stop - start, False)
        build(item, keys[start:stop], batch)
        return _run(model, module, one.expand(stop - start, *one.shape[1:]), batch)[:, target]

    return run


def _replay_agrees(out: object, rows: int, target: int, reference: torch.Tensor) -> bool:
    """Whether a pass's scores are ``(rows, classes)`` and its first row's target score
    (the unmodified output's) equals the plain forward pass's ``reference``."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != rows:
        return False
    return _close(out[:1, target].float(), reference.float().reshape(1))


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + float(want.abs().max()))))


def _run(
    model: nn.Module, module: nn.Module, x: torch.Tensor, replacements: torch.Tensor
) -> torch.Tensor:
    """``model(x)`` with ``module``'s output replaced by ``replacements`` (whose batch
    may be larger than ``x``'s: the layers after ``module`` run on it)."""

    def hook(_m: nn.Module, _args: Any, _out: Any) -> torch.Tensor:
        return replacements

    handle = _site(model, module).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def _site(model: nn.Module, module: nn.Module) -> nn.Module:
    """Where ``module``'s output is replaced: the core's tap around it when the call
    tapped the layer (its output is the layer's, copied so that in-place code downstream
    cannot touch what a method recorded; the replacements are made per pass, so copying
    them again would only cost a pass's worth of memory traffic), else ``module``."""
    for candidate in model.modules():
        if isinstance(candidate, Tap) and candidate.inner is module and candidate.view is None:
            return candidate
    return module

"""A forward pass replayed from memory up to one layer.

Layer replay (:mod:`esegeta_core.layer_replay`) runs the model on one item many times
with one layer's output replaced. Everything the model computes before that layer is
the same on every run, and for a layer deep in the network it is most of a pass: on a
ResNet-50 at 64 px the layers up to ``layer3`` cost about as much as the ablated copies
of one pass of 32. :class:`PrefixMemo` records one run and makes later runs skip the
work before the layer:

- while recording, every module's ``forward`` is wrapped; the raw output of each
  module call that finishes before the layer starts is kept (a copy), and when a call
  finishes its children's copies are dropped, so what is kept at the layer's start is
  the outermost finished calls only (with the layer's own first output);
- while replaying, module calls are counted in the order the replay makes them (calls
  inside a kept call are not made); a call recorded at that position, by the same
  module, returns a copy of its recorded output instead of computing, and every call
  from the layer on computes as usual. Hooks run as usual around both.

Code outside modules (``torch.cat``, additions, activations written as functions) still
runs, on the recorded tensors. The copies protect the record from in-place changes by
that code. The memo is only valid when the model's control flow before the layer does
not depend on anything but the item: the caller checks a replayed run against a
computed one before relying on it, and a replay whose calls do not match the record
raises :class:`PrefixMismatchError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_MISSING = object()


class PrefixMismatchError(RuntimeError):
    """A replay made module calls in another order than the recorded run (the memo
    does not apply to this model: the caller computes whole passes instead)."""


@dataclass(slots=True)
class _Call:
    module: nn.Module
    position: int  # the call's number among all module calls of the run, in start order
    parent: _Call | None
    output: Any = None


@dataclass
class _Record:
    """What one recording run saw up to the layer's start."""

    stack: list[_Call] = field(default_factory=list)
    finished: list[_Call] = field(default_factory=list)
    count: int = 0
    kept: dict[int, _Call] | None = None  # replay position -> call, once the layer started
    layer_call: _Call | None = None


def _copy(value: Any) -> Any:
    """A copy of a module's output that later in-place changes cannot reach; raises
    TypeError for anything but tensors, numbers, strings, None and their tuples, lists
    and dicts (such an output cannot be recorded safely)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return type(value)(_copy(v) for v in value)
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    raise TypeError(f"cannot record a {type(value).__name__} output")


class PrefixMemo:
    """The recorded prefix of ``model``'s pass on one item, up to ``layer``'s first call.

    Use :meth:`running` around each run of the model on that item: the first records,
    later ones replay. ``usable`` turns false when the record cannot be made (an output
    that cannot be copied, a module whose ``forward`` cannot be wrapped, a run that
    never reaches the layer); runs then simply compute.
    """

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        self.model, self.layer = model, layer
        self.usable = True
        self._record: _Record | None = None
        self._next = 0  # the replay's next call position

    @property
    def recorded(self) -> bool:
        """Whether a run has been recorded up to the layer."""
        return self._record is not None and self._record.kept is not None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around one run of the model: record it if nothing is recorded yet, else
        replay the record (no-op once the memo is not usable)."""
        if not self.usable:
            yield
            return
        replay = self.recorded
        if not replay:
            self._record = _Record()
        wrap = self._replaying if replay else self._recording
        with self._wrapped(wrap):
            yield
        if not replay and not self.recorded:
            self.usable = False  # the run never reached the layer

    # -- wrapping ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _wrapped(self, make: Callable[[nn.Module, Callable[..., Any]], Callable[..., Any]]):
        """Every module's ``forward`` replaced by ``make(module, forward)`` in the block,
        restored exactly after (a module without its own ``forward`` attribute gets it
        removed again)."""
        saved: list[tuple[nn.Module, object]] = []
        try:
            for module in self.model.modules():
                before = module.__dict__.get("forward", _MISSING)
                if isinstance(module, torch.jit.ScriptModule):
                    self.usable = False  # its forward runs in C++, not through the attribute
                    break
                # the instance attribute, written as nn.Module.__setattr__ ends up writing
                # it, without its checks (a Parameter isinstance check in Python per
                # module: wrapping a 3D DenseNet's 495 modules took 1.0 ms, now 0.5 ms)
                module.__dict__["forward"] = make(module, module.forward)
                saved.append((module, before))
            self._next = 0
            yield
        finally:
            for module, before in reversed(saved):
                if before is _MISSING:
                    del module.__dict__["forward"]
                else:
                    module.__dict__["forward"] = before

    def _recording(self, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        assert self._record is not None
        return _Recording(self, self._record, module, forward)

    def _layer_started(self, record: _Record, call: _Call) -> None:
        """At the layer's first call: the calls a replay makes up to it, numbered in
        the order it makes them (the layer's ancestors, the outermost finished calls,
        the layer), and which of them return their record."""
        seen = sorted([*record.stack, *record.finished], key=lambda c: c.position)
        record.kept = {}
        for position, c in enumerate(seen):
            if c is call or c in record.finished:
                record.kept[position] = c
        record.layer_call = call
        record.count = len(seen)
        record.finished = []

    def _replaying(self, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        assert self._record is not None and self._record.kept is not None
        return _Replaying(self, self._record, module, forward)


class _Wrapper:
    """A module's ``forward`` while the memo runs: one object per module and run (a
    closure would be a function, its cells and their tuple; what lives through a call
    is what Python's garbage collector walks over and over)."""

    __slots__ = ("forward", "memo", "module", "record")

    def __init__(
        self, memo: PrefixMemo, record: _Record, module: nn.Module, forward: Callable[..., Any]
    ) -> None:
        self.memo, self.record, self.module, self.forward = memo, record, module, forward


class _Recording(_Wrapper):
    """Records the module's calls up to the layer's start (see :class:`PrefixMemo`)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        memo, record, module, forward = self.memo, self.record, self.module, self.forward
        if record.kept is not None or not memo.usable:
            return forward(*args, **kwargs)
        parent = record.stack[-1] if record.stack else None
        call = _Call(module, record.count, parent)
        record.count += 1
        record.stack.append(call)
        if module is memo.layer:
            memo._layer_started(record, call)
            record.stack.pop()
            out = forward(*args, **kwargs)
            try:
                call.output = _copy(out)
            except TypeError:
                memo.usable = False
            return out
        out = forward(*args, **kwargs)
        if record.kept is not None:  # the layer started inside this call
            return out
        record.stack.pop()
        try:
            call.output = _copy(out)
        except TypeError:
            memo.usable = False
            return out
        record.finished = [c for c in record.finished if c.parent is not call]
        record.finished.append(call)
        return out


class _Replaying(_Wrapper):
    """Returns the recorded outputs of the calls kept up to the layer (see
    :class:`PrefixMemo`)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        memo, record, forward = self.memo, self.record, self.forward
        position = memo._next
        if position >= record.count:
            return forward(*args, **kwargs)
        memo._next = position + 1
        kept = record.kept
        call = kept.get(position) if kept is not None else None
        if call is None:  # an ancestor of the layer: it runs, its children replay
            return forward(*args, **kwargs)
        if call.module is not self.module:
            raise PrefixMismatchError(
                f"call {position} was {type(call.module).__name__} when recorded, "
                f"{type(self.module).__name__} now"
            )
        if call is record.layer_call:
            memo._next = record.count  # everything from the layer on computes
        return _copy(call.output)

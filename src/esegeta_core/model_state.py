"""Leaving the user's model exactly as it was found.

:class:`ModelState` records, before a method runs, each module's train/eval mode, the
hook dictionaries of every module, each parameter's ``requires_grad`` and ``.grad``, and
each module's own attributes (its ``__dict__``, children, parameters and buffers by
identity); :meth:`ModelState.restore` puts all of it back, removes hooks a method forgot
and attributes it left (Captum's DeepLift and LRP leave ``input``, ``output`` and
``activations`` tensors on modules), and says how many hooks it had to remove so the
core can warn about a leaky plugin.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


_TABLES = ("_modules", "_parameters", "_buffers")
"""Per-module tables whose entries are restored by identity too."""

_MISSING = object()


@dataclass(slots=True)
class _Module:
    """One module's snapshot, in few objects (a snapshot of a 3D DenseNet's 495 modules
    is taken for every call, and what lives through a call is what Python's garbage
    collector walks over and over). ``own`` is a copy of the module's ``__dict__``
    (None for a ``ScriptModule``, whose attributes live in C++); ``tables`` the copies
    of its non-empty tables (:data:`_TABLES`) by name (None: all were empty)."""

    module: nn.Module
    training: bool
    full_backward: bool | None
    hooks: dict[str, frozenset[int]] | None
    """The keys of each hook dictionary that held any (None: none held any)."""
    own: dict[str, object] | None
    tables: dict[str, dict[str, object]] | None = None


@dataclass
class ModelState:
    """A snapshot of what methods are allowed to touch temporarily."""

    modules: list[_Module] = field(default_factory=list)
    params: list[tuple[torch.Tensor, bool, torch.Tensor | None]] = field(default_factory=list)
    owner: str = ""
    """The top-level package of the model's class: hooks its own code installs during a
    forward pass (Hugging Face models add output-capturing hooks on first use) are
    removed too, but not counted as left behind by the method."""

    @classmethod
    def capture(cls, model: nn.Module) -> ModelState:
        state = cls(owner=type(model).__module__.split(".")[0])
        for module in model.modules():
            scripted = isinstance(module, torch.jit.ScriptModule)
            # plain modules keep these in __dict__: no nn.Module.__getattr__ (which raises
            # and catches an AttributeError for each one that is missing)
            where = _Attributes(module) if scripted else module.__dict__
            hooks = None
            for attr in _HOOK_DICTS:
                found = where.get(attr)
                if found:
                    if hooks is None:
                        hooks = {}
                    hooks[attr] = frozenset(found.keys())
            own = None if scripted else module.__dict__.copy()
            tables: dict[str, dict[str, object]] | None = None
            if own is not None:
                for key in _TABLES:
                    table = own.get(key)
                    if isinstance(table, dict) and table:
                        if tables is None:
                            tables = {}
                        tables[key] = table.copy()
            snap = _Module(
                module, module.training, where.get("_is_full_backward_hook"), hooks, own, tables
            )
            state.modules.append(snap)
        for p in model.parameters():
            state.params.append((p, p.requires_grad, p.grad))
        return state

    def restore(self) -> int:
        """Put everything back; return how many leftover hooks were removed."""
        removed = 0
        for snap in self.modules:
            module = snap.module
            if snap.own is not None:
                _restore_attributes(module.__dict__, snap.own, snap)
            removed += self._prune_hooks(module, snap.hooks or _NO_HOOKS)
            if snap.full_backward is not None or "_is_full_backward_hook" in module.__dict__:
                module._is_full_backward_hook = snap.full_backward
            if module.training != snap.training:
                module.training = snap.training
        for p, requires_grad, grad in self.params:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad
        return removed

    def _prune_hooks(self, module: nn.Module, saved: Mapping[str, frozenset[int]]) -> int:
        """Remove the hooks added since the capture; count those the model's own
        library did not install."""
        removed = 0
        where = module.__dict__ if _HOOK_DICTS[0] in module.__dict__ else _Attributes(module)
        for attr in _HOOK_DICTS:
            hooks = where.get(attr)
            if not hooks:
                continue
            keys = saved.get(attr, frozenset())
            for key in [k for k in hooks if k not in keys]:
                origin = getattr(hooks[key], "__module__", None) or ""
                del hooks[key]
                if attr in _COUNTED and not (self.owner and origin.split(".")[0] == self.owner):
                    removed += 1
        return removed


class _Attributes:
    """``dict.get`` over a module's attributes, for modules that keep them elsewhere
    than ``__dict__`` (``ScriptModule``)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def get(self, name: str) -> Any:
        return getattr(self.module, name, None)


_COUNTED = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
"""The hook dictionaries whose leftovers are reported."""


_NO_HOOKS: Mapping[str, frozenset[int]] = {}
_NO_TABLES: Mapping[str, dict[str, object]] = {}


def _same(current: dict[str, object], saved: dict[str, object]) -> bool:
    """Whether ``current`` holds the very objects ``saved`` does, under the very same
    keys in the same order (compared at C speed: no loop in Python for an untouched
    module; keys in another order, or equal but other strings, take the slow path)."""
    return (
        len(current) == len(saved)
        and all(map(operator.is_, current, saved))
        and all(map(operator.is_, current.values(), saved.values()))
    )


def _restore_attributes(current: dict[str, object], own: dict[str, object], snap: _Module) -> None:
    """A module's ``__dict__`` (saved as ``own``) and tables back to the snapshot:
    attributes a method added are removed, replaced ones put back (compared by
    identity); a table that was empty is emptied again."""
    if not _same(current, own):
        for key in [k for k in current if k not in own]:
            del current[key]
        for key, value in own.items():
            if current.get(key, _MISSING) is not value:
                current[key] = value
    tables = snap.tables or _NO_TABLES
    for key in _TABLES:
        table = current.get(key)
        if not isinstance(table, dict):
            continue
        saved = tables.get(key)
        if saved is None:  # empty when captured
            if table:
                table.clear()
        elif not _same(table, saved):
            table.clear()
            table.update(saved)


def count_hooks(model: nn.Module) -> int:
    """Forward and backward hooks currently registered on ``model`` and its children."""
    return sum(
        len(getattr(m, attr))
        for m in model.modules()
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    )

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

from collections.abc import Iterable
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


@dataclass
class _Module:
    """One module's snapshot. ``own`` is a copy of its ``__dict__`` (None for a
    ``ScriptModule``, whose attributes live in C++), with the keys and the identities
    of the values, so an untouched module is recognised at C speed on restore."""

    module: nn.Module
    training: bool
    full_backward: bool | None
    hooks: dict[str, frozenset[int]]
    """The keys of each hook dictionary that held any (an empty one is not stored)."""
    own: dict[str, object] | None
    keys: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()
    tables: dict[str, tuple[dict[str, object], tuple[int, ...]]] = field(default_factory=dict)


def _ids(values: Iterable[object]) -> tuple[int, ...]:
    return tuple(map(id, values))


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
            hooks = {}
            for attr in _HOOK_DICTS:
                found = where.get(attr)
                if found:
                    hooks[attr] = frozenset(found.keys())
            snap = _Module(
                module,
                module.training,
                where.get("_is_full_backward_hook"),
                hooks,
                None if scripted else module.__dict__.copy(),
            )
            if snap.own is not None:  # the values are kept alive by ``own``: ids stay valid
                snap.keys, snap.ids = tuple(snap.own), _ids(snap.own.values())
                for key in _TABLES:
                    table = snap.own.get(key)
                    if isinstance(table, dict):
                        snap.tables[key] = (table.copy(), _ids(table.values()))
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
            removed += self._prune_hooks(module, snap.hooks)
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

    def _prune_hooks(self, module: nn.Module, saved: dict[str, frozenset[int]]) -> int:
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


def _restore_attributes(current: dict[str, object], own: dict[str, object], snap: _Module) -> None:
    """A module's ``__dict__`` (saved as ``own``) and tables back to the snapshot:
    attributes a method added are removed, replaced ones put back (compared by
    identity)."""
    if tuple(current) != snap.keys or _ids(current.values()) != snap.ids:
        for key in [k for k in current if k not in own]:
            del current[key]
        for key, value in own.items():
            if current.get(key, _MISSING) is not value:
                current[key] = value
    for key, (saved, ids) in snap.tables.items():
        table = current[key]
        if not isinstance(table, dict):
            continue
        if tuple(table) != tuple(saved) or _ids(table.values()) != ids:
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

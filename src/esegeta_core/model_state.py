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

from dataclasses import dataclass, field

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
class ModelState:
    """A snapshot of what methods are allowed to touch temporarily."""

    modes: list[tuple[nn.Module, bool]] = field(default_factory=list)
    hooks: list[tuple[nn.Module, str, frozenset[int]]] = field(default_factory=list)
    params: list[tuple[torch.Tensor, bool, torch.Tensor | None]] = field(default_factory=list)
    is_full_backward_hook: list[tuple[nn.Module, bool | None]] = field(default_factory=list)
    attributes: list[tuple[nn.Module, dict[str, object], dict[str, dict[str, object]]]] = field(
        default_factory=list
    )
    owner: str = ""
    """The top-level package of the model's class: hooks its own code installs during a
    forward pass (Hugging Face models add output-capturing hooks on first use) are
    removed too, but not counted as left behind by the method."""

    @classmethod
    def capture(cls, model: nn.Module) -> ModelState:
        state = cls(owner=type(model).__module__.split(".")[0])
        for module in model.modules():
            state.modes.append((module, module.training))
            state.is_full_backward_hook.append(
                (module, getattr(module, "_is_full_backward_hook", None))
            )
            for attr in _HOOK_DICTS:
                hooks = getattr(module, attr, None)
                if hooks is not None:
                    state.hooks.append((module, attr, frozenset(hooks.keys())))
            if isinstance(module, torch.jit.ScriptModule):  # attributes live in C++
                continue
            own = {k: v for k, v in module.__dict__.items() if k not in _HOOK_DICTS}
            tables = {k: dict(module.__dict__[k]) for k in _TABLES if k in module.__dict__}
            state.attributes.append((module, own, tables))
        for p in model.parameters():
            state.params.append((p, p.requires_grad, p.grad))
        return state

    def restore(self) -> int:
        """Put everything back; return how many leftover hooks were removed."""
        removed = 0
        for module, attr, keys in self.hooks:
            hooks = getattr(module, attr)
            for key in [k for k in hooks if k not in keys]:
                origin = getattr(hooks[key], "__module__", None) or ""
                del hooks[key]
                if attr in (
                    "_forward_hooks",
                    "_forward_pre_hooks",
                    "_backward_hooks",
                    "_backward_pre_hooks",
                ) and not (self.owner and origin.split(".")[0] == self.owner):
                    removed += 1
        for module, flag in self.is_full_backward_hook:
            if flag is not None or hasattr(module, "_is_full_backward_hook"):
                module._is_full_backward_hook = flag
        for module, own, tables in self.attributes:
            current = module.__dict__
            for key in [k for k in current if k not in own and k not in _HOOK_DICTS]:
                del current[key]
            for key, value in own.items():
                if current.get(key, _MISSING) is not value:
                    current[key] = value
            for key, saved in tables.items():
                table = current[key]
                if table.keys() != saved.keys() or any(table[k] is not v for k, v in saved.items()):
                    table.clear()
                    table.update(saved)
        for module, training in self.modes:
            if module.training != training:
                module.training = training
        for p, requires_grad, grad in self.params:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad
        return removed


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

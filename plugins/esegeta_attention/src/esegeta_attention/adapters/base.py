"""What every attention adapter provides, and the reversible switches they share.

An adapter knows one family of attention modules (timm, ``torch.nn.MultiheadAttention``,
MONAI, Hugging Face): which modules it can read (:meth:`AttentionAdapter.find`) and how
to make one of them hand over its softmax probabilities for a call
(:meth:`AttentionAdapter.enable`): switch the module to its unfused path and hook the
tensor that holds the probabilities, with every change registered on an
:class:`~contextlib.ExitStack` so that closing the stack puts the module back exactly
as it was (attribute values, attributes that did not exist, hooks).

Adapters import nothing from the libraries they support: classes are recognised by
their module and qualified name along the MRO, so importing this plugin stays cheap
and a library that is not installed simply has no module to match.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from esegeta_core.toolkit import replacing_output

_MISSING = object()


class Record(Protocol):
    """Called by an enabled adapter with the attention probabilities of one call of its
    module: ``source`` is the tensor the model computed (part of the autograd graph
    when gradients are on) and ``shape`` the ``(B, heads, queries, keys)`` view of it
    when ``source`` is laid out otherwise (None: ``source`` already is that shape)."""

    def __call__(self, source: torch.Tensor, shape: tuple[int, ...] | None = None) -> None: ...


class AttentionAdapter(ABC):
    """One family of attention modules: how to find them and read their probabilities."""

    family: ClassVar[str] = ""
    """Short name used in records and messages (``"timm"``, ``"torch"``, ...)."""
    reached: ClassVar[str] = ""
    """How the probabilities are reached, in words (for messages and the README)."""

    def find(self, root: nn.Module) -> list[nn.Module]:
        """The modules of ``root`` this adapter can read, in definition order."""
        return [m for m in root.modules() if self.matches(m)]

    @abstractmethod
    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is an attention module of this family."""

    @abstractmethod
    def enable(self, module: nn.Module, record: Record, stack: ExitStack) -> None:
        """Make ``module`` call ``record`` with its probabilities on every forward call
        until ``stack`` closes; register every change on ``stack``."""

    def token_count(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> int | None:
        """How many tokens a call of ``module`` mixes, from its arguments (read without
        unfusing anything): the first ``(B, N, C)`` tensor argument's ``N``."""
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                return int(value.shape[1]) if value.ndim == 3 else None
        return None


def defined_by(cls: type, names: Iterable[tuple[str, str]]) -> bool:
    """Whether ``cls`` or one of its bases is one of ``(module, qualname)`` ``names``."""
    wanted = set(names)
    return any((getattr(k, "__module__", ""), k.__qualname__) in wanted for k in cls.__mro__)


def switch_attribute(stack: ExitStack, obj: Any, name: str, value: Any) -> None:
    """Set ``obj.name = value`` until ``stack`` closes, then put back the old value (or
    remove the attribute from the instance when it only existed on the class)."""
    before = obj.__dict__.get(name, _MISSING) if hasattr(obj, "__dict__") else _MISSING
    setattr(obj, name, value)

    def restore() -> None:
        if before is _MISSING:
            if name in obj.__dict__:
                delattr(obj, name)
        else:
            setattr(obj, name, before)

    stack.callback(restore)


def forward_hook(
    stack: ExitStack, module: nn.Module, hook: Callable[..., Any], **kwargs: Any
) -> None:
    """``module.register_forward_hook(hook)`` until ``stack`` closes."""
    stack.callback(module.register_forward_hook(hook, **kwargs).remove)


def forward_pre_hook(
    stack: ExitStack, module: nn.Module, hook: Callable[..., Any], **kwargs: Any
) -> None:
    """``module.register_forward_pre_hook(hook)`` until ``stack`` closes."""
    stack.callback(module.register_forward_pre_hook(hook, **kwargs).remove)


def read_output(stack: ExitStack, module: nn.Module, record: Record) -> None:
    """Hand every output of ``module`` (the module applied to the probabilities: timm's
    ``attn_drop``, MONAI's ``drop_weights``) to ``record`` until ``stack`` closes; the
    output itself goes on unchanged."""

    def keep(output: torch.Tensor) -> torch.Tensor:
        record(output)
        return output

    stack.enter_context(replacing_output(module, keep))


class UnfusedAdapter(AttentionAdapter):
    """Attention modules with a flag that selects a fused kernel and a sub-module applied
    to the probabilities on the explicit path: the flag is switched off for the call and
    the sub-module's output read."""

    classes: ClassVar[tuple[tuple[str, str], ...]] = ()
    """``(module, qualname)`` of the classes whose explicit path was read."""
    flag: ClassVar[str] = ""
    """The instance attribute that selects the fused kernel when True."""
    reads: ClassVar[str] = ""
    """The sub-module whose output is the probabilities."""
    flag_optional: ClassVar[bool] = False
    """Whether a module may lack ``flag`` (then it is switched only when set)."""

    def matches(self, module: nn.Module) -> bool:
        return (
            defined_by(type(module), self.classes)
            and (self.flag_optional or hasattr(module, self.flag))
            and isinstance(getattr(module, self.reads, None), nn.Module)
        )

    def enable(self, module: nn.Module, record: Record, stack: ExitStack) -> None:
        if not self.flag_optional or getattr(module, self.flag, False):
            switch_attribute(stack, module, self.flag, False)
        read_output(stack, getattr(module, self.reads), record)


__all__ = [
    "AttentionAdapter",
    "Record",
    "UnfusedAdapter",
    "defined_by",
    "forward_hook",
    "forward_pre_hook",
    "read_output",
    "switch_attribute",
]

"""Modules that stand for one call site of an operation during a prepared method call.

Rule-based methods (DeepLift, LRP, guided backprop, deconvnet) attach their rules to
modules. Real networks compute some of what needs a rule without a module of its own:
one ``nn.ReLU`` called three times (torchvision's Bottleneck), ``F.relu`` in a forward
(torchvision's DenseNet), a skip connection written as ``out += identity``. The model
preparation (:mod:`esegeta_core.preparation`) puts one of these modules at each such
call site for the duration of the call, so every rule has exactly one module to live
on. None of them changes what the model computes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

SiteKind = Literal["activation", "pass"]


class Sum(nn.Module):
    """Sums ``dims`` of its input: the point where relevance rules split a total among
    its terms in proportion to their values (skip connections, pixel sums)."""

    def __init__(self, dims: int | Sequence[int] = -1, keepdim: bool = False) -> None:
        super().__init__()
        self.dims = dims if isinstance(dims, int) else tuple(dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=self.dims, keepdim=self.keepdim)


class PairSum(nn.Module):
    """``a + b`` (or ``a - b``) as a module with two inputs, like Captum's
    ``Addition_Module``: what rules that hook each input tensor (Captum's LRP) need."""

    def __init__(self, subtract: bool = False) -> None:
        super().__init__()
        self.subtract = subtract

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b if self.subtract else a + b


class MergeSite(nn.Module):
    """``a + b`` (or ``a - b``) of two activations, where relevance rules see both terms.

    By default it is a :class:`Sum` over a stacked last dimension (one input holding
    both terms: zennit's convention, where relevance flows between modules); with
    ``stacked = False`` it is a :class:`PairSum` of the two tensors (Captum's
    convention, where each input tensor converts the gradient it receives). A plugin
    sets the form it needs for its call.
    """

    def __init__(self, subtract: bool = False) -> None:
        super().__init__()
        self.subtract = subtract
        self.stacked = True
        self.sum = Sum(-1)
        self.pair = PairSum(subtract)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = torch.broadcast_tensors(a, b)
        if not self.stacked:
            return self.pair(a, b)
        return self.sum(torch.stack([a, -b if self.subtract else b], dim=-1))


class FunctionSite(nn.Module):
    """One call of a functional operation on one activation, as a module.

    ``kind`` says how rule-based methods treat it: ``"activation"`` (an element-wise
    non-linearity such as ``F.relu`` or ``torch.sigmoid``: guided rules, DeepLift's
    rescale rule, LRP's pass-through) or ``"pass"`` (an element-wise scaling or a
    functional normalisation: relevance passes through unchanged). ``name`` is the
    function's name, for messages.
    """

    def __init__(self, kind: SiteKind, name: str) -> None:
        super().__init__()
        self.kind = kind
        self.name = name
        self._call: Callable[[torch.Tensor], torch.Tensor] | None = None

    def bind(self, call: Callable[[torch.Tensor], torch.Tensor]) -> FunctionSite:
        """Set what the next forward computes (the call's other arguments are bound in)."""
        self._call = call
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._call is None:  # pragma: no cover - a routing bug, never user input
            raise RuntimeError(f"FunctionSite {self.name!r} called without a bound call")
        return self._call(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, name={self.name!r}"


class CallSites(nn.Module):
    """Stands in for a module called several times per forward pass: call ``k`` runs
    ``sites[k]``, a copy sharing the original's parameters, buffers and hooks."""

    def __init__(self, original: nn.Module, calls: int) -> None:
        super().__init__()
        self.original_name = type(original).__name__
        self.sites = nn.ModuleList(shallow_copy(original) for _ in range(calls))
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.calls >= len(self.sites):
            raise RuntimeError(
                f"a {self.original_name} module ran {self.calls + 1} times in one forward "
                f"pass, but {len(self.sites)} times when esegeta traced the model: the "
                "forward pass depends on the data, so its call sites cannot be separated"
            )
        site = self.sites[self.calls]
        self.calls += 1
        return site(*args, **kwargs)


def shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object of the same class that shares parameters, buffers, children
    and the user's hooks (hook dictionaries are copied, so hooks added to the copy do
    not reach the original)."""
    clone = module.__class__.__new__(module.__class__)
    state = dict(module.__dict__)
    for key, value in state.items():
        if isinstance(value, dict):
            state[key] = copy.copy(value)
    clone.__dict__.update(state)
    return clone


class Probe(nn.Module):
    """A copy of its input: where a tapped layer's output (or input) is handed on."""

    def forward(self, x: Any) -> Any:
        return x.clone() if isinstance(x, torch.Tensor) else x


class LayoutView(nn.Module):
    """A layer's output seen channels-first, ``(B, C, *grid)``: where methods read (and
    replace) a token or channels-last layer's output. ``layout`` is an
    :class:`esegeta_core.layouts.Layout`."""

    def __init__(self, layout: Any) -> None:
        super().__init__()
        self.layout = layout

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self.produced = self.layout.to_channels_first(y)
        return self.produced

    def restore(self, view: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The layer's output from a (possibly replaced) channels-first ``view``."""
        produced = self.__dict__.pop("produced", None)
        if getattr(self.layout, "kind", "") == "callable":
            return self.layout.restore(view, y, produced)
        return self.layout.restore(view, y)

    def extra_repr(self) -> str:
        return f"{self.layout.kind}, grid={self.layout.grid}, extra={self.layout.extra}"


class Tap(nn.Module):
    """Stands in for a layer a method reads or replaces, for one call.

    The rest of the model gets a copy of the layer's output (``after``) and the layer
    gets a copy of its first input (``before``), so an in-place operation downstream
    (``F.relu(x, inplace=True)`` after a block, ``out += identity``) can neither alter
    what a method recorded nor act on a tensor a method substituted. ``before`` and
    ``after`` are leaf modules, so relevance can be read there too. With a ``layout``
    that is not channels-first, ``view`` presents the output as ``(B, C, *grid)`` and
    the rest of the model gets the original layout back from it.
    """

    def __init__(self, inner: nn.Module, layout: Any = None) -> None:
        super().__init__()
        self.inner = inner
        self.before = Probe()
        self.after = Probe()
        self.view = LayoutView(layout) if layout is not None and not layout.trivial else None

    @property
    def output_module(self) -> nn.Module:
        """The leaf whose output is the layer's output, channels-first."""
        return self.view if self.view is not None else self.after

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            args = (self.before(args[0]), *args[1:])
        y = self.inner(*args, **kwargs)
        if self.view is None:
            return self.after(y)
        return self.view.restore(self.view(y), y)

"""Model preparation for rule-based methods, applied for one call and undone after it.

Methods that attach rules to modules (DeepLift, LRP, guided backprop, deconvnet,
excitation backprop) break on the models people use: one ``nn.ReLU`` called three
times per block keeps only the last call's state, an in-place activation overwrites
what a hook saved, ``F.relu`` in a forward gets no rule at all, ``out += identity``
adds two branches where no relevance rule can see it. :func:`prepared` gives such a
method a view of the model where none of that happens, and puts everything back:

- in-place activations run out of place (``inplace`` flags, restored);
- a leaf module that runs ``k`` times per pass is replaced by :class:`CallSites`:
  ``k`` copies sharing its parameters, buffers and hooks, one per call site;
- a functional activation in a forward (``F.relu``, ``torch.sigmoid``) runs through a
  :class:`~esegeta_core.sites.FunctionSite` module of its own;
- at ``level="relevance"`` (LRP), the sum of two branches runs through a
  :class:`~esegeta_core.sites.MergeSite` (its terms visible to a proportional rule),
  element-wise scalings and functional normalisations through pass-through sites and
  functional sums through :class:`~esegeta_core.sites.Sum` sites; multiplicative
  interactions between activations (attention, gating) and operations with no rule
  are refused before running, naming what was found.

Functional calls are routed by a :class:`~torch.overrides.TorchFunctionMode` that
counts the calls of the tracked functions during each forward pass and checks each
name against the probe's record (:mod:`esegeta_core.tracing`); it is only active when
there is a call to route. Plugins read the result with :func:`rule_kind` and
:func:`activation_modules`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from esegeta_core.errors import InvalidModelError, NotApplicableError
from esegeta_core.layers import unwrap
from esegeta_core.sites import CallSites, FunctionSite, MergeSite, Probe, Sum, Tap, shallow_copy
from esegeta_core.tracing import (
    TRACKED,
    FunctionCall,
    LeafInfo,
    ModelTrace,
    function_name,
    is_inplace,
    trace_model,
)

RuleLevel = Literal["gates", "relevance"]
"""``"gates"``: the rules act on activations (guided backprop, deconvnet, DeepLift,
excitation backprop). ``"relevance"``: relevance must also be conserved through
every operation between rule layers (LRP)."""

RuleKind = Literal["activation", "pass", "sum"]

_SUBTRACT = frozenset({"sub", "__sub__", "__isub__", "sub_", "subtract"})
_REVERSED = frozenset({"__rsub__", "rsub"})


@dataclass
class Preparation:
    """What :func:`prepared` did, and how the prepared modules are to be treated."""

    trace: ModelTrace
    level: RuleLevel
    kinds: dict[int, RuleKind] = field(default_factory=dict)
    """``id(module)`` -> how rules treat it (see :func:`rule_kind`)."""
    split: dict[str, int] = field(default_factory=dict)
    """Paths of modules that run several times -> their call sites."""
    routed: Counter[str] = field(default_factory=Counter)
    """Functional calls given a module, by function name."""
    inplace: int = 0
    """In-place activation modules run out of place."""

    def summary(self) -> dict[str, Any]:
        """Plain data for records: what the preparation changed."""
        return {
            "split_modules": dict(self.split),
            "routed_calls": dict(self.routed),
            "inplace_modules": self.inplace,
            "activation_modules": sum(1 for k in self.kinds.values() if k == "activation"),
        }


_ACTIVE: dict[int, Preparation] = {}
_TAPS: dict[int, dict[int, Tap]] = {}
_LOCK = threading.Lock()


def rule_kind(module: nn.Module) -> RuleKind | None:
    """How rule-based methods treat ``module`` in the prepared model being explained:
    ``"activation"`` (an element-wise non-linearity), ``"pass"`` (relevance passes
    through unchanged: structure-only modules, element-wise scalings, normalisations
    other than batch norm), ``"sum"`` (a proportional split), or None (not decided by
    the core: convolutions, linear layers, pooling, batch norm and the like)."""
    if isinstance(module, Sum):
        return "sum"
    with _LOCK:
        for prep in _ACTIVE.values():
            kind = prep.kinds.get(id(module))
            if kind is not None:
                return kind
    return None


def current_leaf_kind(module: nn.Module) -> str | None:
    """What the probe found a leaf of the prepared model to compute (see
    :attr:`esegeta_core.tracing.LeafInfo.kind`; sites count as what they stand for)."""
    if isinstance(module, Probe):
        return "structural"
    with _LOCK:
        for prep in _ACTIVE.values():
            info = prep.trace.leaf(module)
            if info is not None:
                return info.kind
    return None


def activation_modules(model: nn.Module) -> list[nn.Module]:
    """The activation modules of the prepared ``model`` (a score wrapper or the user's
    model), call sites included, in module order. Empty outside a prepared call."""
    prep = current_preparation(model)
    if prep is None:
        return []
    return [m for m in unwrap(model).modules() if prep.kinds.get(id(m)) == "activation"]


def current_preparation(model: nn.Module) -> Preparation | None:
    """The preparation in force for ``model`` (None outside a prepared call)."""
    with _LOCK:
        return _ACTIVE.get(id(unwrap(model)))


def _inplace(module: nn.Module) -> object:
    """A module's ``inplace`` flag (None without one), read from its ``__dict__`` or
    class: ``getattr`` on the many modules without one raises and catches inside
    ``nn.Module.__getattr__`` (0.23 ms a call on a ResNet-50, against 0.11 ms)."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "inplace", None)  # its attributes live in C++
    found = module.__dict__.get("inplace")
    if found is None:
        found = getattr(type(module), "inplace", None)
        if isinstance(found, property):
            return getattr(module, "inplace", None)
    return found


@contextlib.contextmanager
def no_inplace(model: nn.Module) -> Iterator[int]:
    """Within the block every module's ``inplace=True`` flag is False (restored
    afterwards); yields how many were changed. Cheap: no forward pass."""
    changed = [m for m in model.modules() if _inplace(m) is True]
    for m in changed:
        m.inplace = False
    try:
        yield len(changed)
    finally:
        for m in changed:
            m.inplace = True


@contextlib.contextmanager
def prepared(
    model: nn.Module, inputs: torch.Tensor, level: RuleLevel, *, method: str
) -> Iterator[Preparation]:
    """Within the block ``model`` (the user's model, or a wrapper around it) is
    prepared for rule-based methods as the module docstring describes."""
    root = unwrap(model)
    if isinstance(root, torch.jit.ScriptModule):
        raise InvalidModelError(
            f"Method {method!r} attaches rules to the model's modules, which a TorchScript "
            "model does not expose. Explain the Python model (before torch.jit.script), "
            "or use a method without rules such as 'captum.saliency'."
        )
    with contextlib.ExitStack() as stack:
        changed = stack.enter_context(no_inplace(root))
        trace = trace_model(root, inputs)
        prep = Preparation(trace=trace, level=level, inplace=changed)
        if level == "relevance":
            _refuse_unsupported(trace, method)
        _classify_leaves(trace, prep)
        stack.enter_context(_dealiased(root, prep))
        stack.enter_context(_split_reused(root, trace, prep))
        routes = _routes(trace, level, prep)
        stack.enter_context(_routing(root, trace, routes))
        with _LOCK:
            _ACTIVE[id(root)] = prep
        stack.callback(_forget, root)
        yield prep


@contextlib.contextmanager
def tapped(
    model: nn.Module, layers: list[nn.Module], layouts: dict[int, Any] | None = None
) -> Iterator[dict[int, Tap]]:
    """Within the block each of ``layers`` sits inside a :class:`~esegeta_core.sites.Tap`
    in every parent that holds it (the rest of the model gets copies of its output);
    :func:`~esegeta_core.resolve_layer` returns the layer itself, or the channels-first
    view of its output when ``layouts`` (by ``id(layer)``) says it is laid out otherwise.
    Yields the taps by ``id(layer)``."""
    layouts = layouts or {}
    root = unwrap(model)
    wanted = {id(m): m for m in layers if m is not root}
    taps: dict[int, Tap] = {}
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(root.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in wanted and not isinstance(parent, Tap):
                tap = taps.setdefault(id(child), Tap(child, layouts.get(id(child))))
                replaced.append((parent, name, child))
                parent._modules[name] = tap
    with _LOCK:
        _TAPS[id(root)] = taps
    try:
        yield taps
    finally:
        with _LOCK:
            _TAPS.pop(id(root), None)
        for parent, name, child in reversed(replaced):
            parent._modules[name] = child


def layer_tap(model: nn.Module, layer: nn.Module) -> Tap | None:
    """The :class:`~esegeta_core.sites.Tap` around ``layer`` during the call (None if
    the layer is not tapped): its ``before`` / ``after`` leaves carry the layer's input
    and output, where a method may read relevance whatever the layer is."""
    with _LOCK:
        return _TAPS.get(id(unwrap(model)), {}).get(id(layer))


@contextlib.contextmanager
def ensure_prepared(
    model: nn.Module, inputs: torch.Tensor, level: RuleLevel, *, method: str
) -> Iterator[Preparation]:
    """The preparation in force for ``model`` (``explain()`` made it), or a new one for
    the block when a method's ``attribute`` is called directly, outside ``explain()``:
    a rule-based method never runs on an unprepared model."""
    current = current_preparation(model)
    if current is not None:
        yield current
        return
    with prepared(model, inputs, level, method=method) as prep:
        yield prep


def _forget(root: nn.Module) -> None:
    with _LOCK:
        _ACTIVE.pop(id(root), None)


def _classify_leaves(trace: ModelTrace, prep: Preparation) -> None:
    for info in trace.leaves.values():
        if not info.calls:
            continue
        kind = info.kind
        if kind == "activation":
            prep.kinds[id(info.module)] = "activation"
        elif prep.level != "relevance":
            continue
        elif kind in ("structural", "scale") or (kind == "norm" and not _batch_norm(info)):
            prep.kinds[id(info.module)] = "pass"


def _unsupported_names(info: LeafInfo) -> set[str]:
    """The functions inside a leaf that no relevance rule covers."""
    from esegeta_core.tracing import categorize

    return {n for n in info.names if categorize(n, 2) in ("product", "other")}


def _batch_norm(info: LeafInfo) -> bool:
    return isinstance(info.module, nn.modules.batchnorm._BatchNorm)


def _refuse_unsupported(trace: ModelTrace, method: str) -> None:
    """LRP's rules are undefined for products of activations and unknown operations."""
    bad = trace.outside_leaves("product", "other")
    bad_leaves = [
        info
        for info in trace.leaves.values()
        if info.calls and ("product" in info.ops or _is_other_without_type(info))
    ]
    if not bad and not bad_leaves:
        return
    found = Counter(f"{c.name} in {c.module_type}.forward" for c in bad)
    found.update(f"{'/'.join(sorted(_unsupported_names(i)))} inside "
                 f"{type(i.module).__name__}" for i in bad_leaves)  # fmt: skip
    listed = ", ".join(f"{what} (x{n})" if n > 1 else what for what, n in found.most_common(6))
    raise NotApplicableError(
        f"Method {method!r}: relevance rules cannot be applied soundly to this model: it "
        f"computes {listed}. LRP's rules define no split of relevance for products of two "
        "activations (attention, gating) or for these operations. Use a gradient or "
        "perturbation method (e.g. 'captum.integrated_gradients', 'captum.occlusion')."
    )


_KNOWN_LEAF_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.Bilinear,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Upsample,
    nn.Embedding,
    nn.Softmax,
    nn.MultiheadAttention,
)


def _is_other_without_type(info: LeafInfo) -> bool:
    """A leaf that does something unrecognised and is not a layer type rules know."""
    return (
        info.kind == "other"
        and "other" in info.ops
        and not isinstance(info.module, _KNOWN_LEAF_TYPES)
    )


@contextlib.contextmanager
def _dealiased(root: nn.Module, prep: Preparation) -> Iterator[None]:
    """Give every module held by more than one parent (MonAI's SegResNet holds its
    ``act_mod`` at the root and in ``conv_final``) one object per holder for the call:
    libraries that walk ``children()`` would otherwise hook it twice. The first holder in
    module order keeps the module; the others get structural copies sharing parameters,
    buffers and hooks (and the original's rule kind)."""
    seen: set[int] = set()
    replaced: list[tuple[nn.Module, str, nn.Module]] = []

    def visit(module: nn.Module) -> None:
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if id(child) in seen:
                module._modules[name] = _structural_copy(child, prep)
                replaced.append((module, name, child))
                continue
            seen.add(id(child))
            visit(child)

    visit(root)
    try:
        yield
    finally:
        for parent, name, child in reversed(replaced):
            parent._modules[name] = child


def _structural_copy(module: nn.Module, prep: Preparation) -> nn.Module:
    copy = shallow_copy(module)
    kind = prep.kinds.get(id(module))
    if kind is not None:
        prep.kinds[id(copy)] = kind
    for name, child in list(copy._modules.items()):
        if child is not None:
            copy._modules[name] = _structural_copy(child, prep)
    return copy


@contextlib.contextmanager
def _split_reused(root: nn.Module, trace: ModelTrace, prep: Preparation) -> Iterator[None]:
    """Replace every leaf that runs several times by :class:`CallSites` (restored after)."""
    reused = {id(i.module): i for i in trace.reused()}
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    dispatchers: dict[int, CallSites] = {}
    for parent in root.modules():
        for name, child in list(parent._modules.items()):
            if child is None or id(child) not in reused:
                continue
            info = reused[id(child)]
            if id(child) not in dispatchers:
                dispatchers[id(child)] = CallSites(child, info.calls)
                prep.split[info.path] = info.calls
                kind = prep.kinds.get(id(child))
                for site in dispatchers[id(child)].sites:
                    if kind is not None:
                        prep.kinds[id(site)] = kind
            replaced.append((parent, name, child))
            parent._modules[name] = dispatchers[id(child)]

    def reset(module: nn.Module, args: Any) -> None:
        for d in dispatchers.values():
            d.calls = 0

    handle = root.register_forward_pre_hook(reset, prepend=True) if dispatchers else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        for parent, name, child in reversed(replaced):
            parent._modules[name] = child


@dataclass(frozen=True)
class _Route:
    site: nn.Module
    operand: int
    """Position of the input-dependent operand in the call's positional arguments."""


def _routes(trace: ModelTrace, level: RuleLevel, prep: Preparation) -> dict[int, _Route]:
    """Tracked calls outside leaf modules that get a module of their own."""
    routes: dict[int, _Route] = {}
    wanted = ("activation",) if level == "gates" else ("activation", "merge", "scale", "norm")
    for call in trace.outside_leaves(*wanted, "sum"):
        if call.index < 0 or (call.category == "sum" and level == "gates"):
            continue
        site: nn.Module
        if call.category == "merge":
            site = MergeSite(subtract=call.name in _SUBTRACT)
            prep.kinds[id(site.sum)] = "sum"
            prep.kinds[id(site.pair)] = "sum"
        elif call.category == "sum":
            site = FunctionSite("pass", call.name)
            prep.kinds[id(site)] = "sum"
        else:
            kind: RuleKind = "activation" if call.category == "activation" else "pass"
            site = FunctionSite(kind, call.name)
            prep.kinds[id(site)] = kind
        routes[call.index] = _Route(site, _operand(call))
        prep.routed[call.name] += 1
    return routes


def _operand(call: FunctionCall) -> int:
    """Activations and sums act on their first operand; a scaling on whichever operand
    depends on the input (the probe recorded the first such one)."""
    return call.operand if call.category == "scale" else 0


class _Router(TorchFunctionMode):
    """Counts tracked calls during each forward pass of the root; routes some of them."""

    def __init__(self, trace: ModelTrace, routes: dict[int, _Route]) -> None:
        super().__init__()
        self.expected = trace.tracked
        self.routes = routes
        self.count = 0
        self.active = False

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if not self.active:
            return func(*args, **kwargs)
        name = function_name(func)
        if name not in TRACKED:
            return func(*args, **kwargs)
        index = self.count
        self.count += 1
        expected = self.expected[index] if index < len(self.expected) else None
        if name != expected:
            raise RuntimeError(
                f"the model's forward pass differs from the one esegeta traced (call "
                f"{index} is {name!r}, traced {expected!r}); its functional operations "
                "cannot be given rule modules"
            )
        route = self.routes.get(index)
        if route is None:
            return func(*args, **kwargs)
        return _apply(route, name, func, list(args), dict(kwargs))


def _apply(route: _Route, name: str, func: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    inplace = is_inplace(name, kwargs)
    written = args[0]
    if inplace:
        # the site works on a copy, so the tensor written in place below is not one its
        # rules hooked (a hook on a tensor changed in place would see the new value)
        args = [written.clone(), *args[1:]]
    if isinstance(route.site, MergeSite):
        a, b = args[0], args[1]
        if name in _REVERSED:
            a, b = b, a
        alpha = kwargs.pop("alpha", 1)
        if alpha != 1:
            b = b * alpha
        result = route.site(a, b)
    else:
        call = _out_of_place(name, func, args, kwargs, route.operand)
        site = cast(FunctionSite, route.site)
        result = site.bind(call)(args[route.operand])
    if inplace:
        return written.copy_(result)
    return result


_OUT_OF_PLACE = {"__iadd__": "add", "__isub__": "sub", "__imul__": "mul", "__itruediv__": "div"}


def _out_of_place(
    name: str, func: Any, args: list[Any], kwargs: dict[str, Any], operand: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``func`` with the operand at ``operand`` replaced, computed out of place."""
    target = func
    if name in _OUT_OF_PLACE:
        target = getattr(torch, _OUT_OF_PLACE[name])
    elif name.endswith("_") and not name.endswith("__"):
        target = getattr(torch, name[:-1], None) or getattr(F, name[:-1])
    if kwargs.get("inplace"):
        kwargs = {**kwargs, "inplace": False}

    def call(x: torch.Tensor) -> torch.Tensor:
        values = list(args)
        values[operand] = x
        return target(*values, **kwargs)

    return call


@contextlib.contextmanager
def _routing(root: nn.Module, trace: ModelTrace, routes: dict[int, _Route]) -> Iterator[None]:
    """Attach the sites to the root for the block and route calls to them."""
    if not routes:
        yield
        return
    container = nn.ModuleList(r.site for r in routes.values())
    name = "_esegeta_sites"
    root.add_module(name, container)
    router = _Router(trace, routes)

    def start(module: nn.Module, args: Any) -> None:
        router.count = 0
        router.active = True

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        router.active = False

    handles = [
        root.register_forward_pre_hook(start, prepend=True),
        root.register_forward_hook(stop, always_call=True),
    ]
    try:
        with router:
            yield
    finally:
        for handle in handles:
            handle.remove()
        del root._modules[name]


__all__ = [
    "Preparation",
    "RuleKind",
    "RuleLevel",
    "activation_modules",
    "current_leaf_kind",
    "current_preparation",
    "ensure_prepared",
    "no_inplace",
    "prepared",
    "layer_tap",
    "rule_kind",
    "tapped",
]

"""What a model computes, recorded from one probe forward pass.

Rule-based methods need to know more than a model's module tree: which modules run
several times per pass, which activations are functions rather than modules, where
skip connections add two branches, where attention multiplies two activations.
:func:`trace_model` runs the model once on one item with a
:class:`~torch.overrides.TorchFunctionMode` and module hooks and records:

- per leaf module: how many times it ran and the categories of the operations inside
  it, from which its :attr:`LeafInfo.kind` follows (an activation module is a leaf
  whose calls each apply exactly one element-wise non-linearity, whatever its class:
  ``nn.GELU``, Hugging Face's ``GELUActivation`` and a ``PReLU`` alike);
- every call of a *tracked* function (activations, additions, multiplications,
  normalisations, sums) in order, with the module it ran in and how many of its
  operands depend on the input. The preparation routes calls by their position in
  this sequence, and checks at each call that the name matches.

Operands "depend on the input" when autograd says so: the probe runs with the input
requiring gradients and every parameter temporarily not, so parameters, buffers and
constants do not count.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

Category = Literal[
    "activation",
    "structural",
    "shift",
    "merge",
    "scale",
    "product",
    "norm",
    "convex",
    "sum",
    "other",
]

ACTIVATIONS = frozenset(
    {
        "relu",
        "relu_",
        "relu6",
        "leaky_relu",
        "leaky_relu_",
        "elu",
        "elu_",
        "selu",
        "selu_",
        "celu",
        "celu_",
        "gelu",
        "silu",
        "mish",
        "hardswish",
        "hardsigmoid",
        "sigmoid",
        "sigmoid_",
        "tanh",
        "tanh_",
        "softplus",
        "hardtanh",
        "hardtanh_",
        "logsigmoid",
        "softsign",
        "prelu",
        "rrelu",
        "threshold",
        "threshold_",
    }
)
"""Element-wise non-linearities: the gates guided rules, DeepLift and LRP act on."""

ADDITIONS = frozenset(
    {"add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__"}
    | {"__isub__", "sub_", "rsub", "subtract"}
)
MULTIPLICATIONS = frozenset(
    {"mul", "__mul__", "__rmul__", "__imul__", "mul_", "multiply", "div", "div_"}
    | {"__truediv__", "__rtruediv__", "__itruediv__", "true_divide"}
)
PRODUCTS = frozenset(
    {"matmul", "__matmul__", "__rmatmul__", "bmm", "baddbmm", "einsum", "mm", "addmm"}
    | {"scaled_dot_product_attention", "softmax", "log_softmax", "_softmax"}
)
NORMS = frozenset(
    {"layer_norm", "group_norm", "instance_norm", "batch_norm", "rms_norm", "normalize"}
    | {"local_response_norm"}
)
CONVEX = frozenset(
    {"mean", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d"}
    | {"adaptive_avg_pool2d", "adaptive_avg_pool3d", "interpolate", "upsample"}
    | {"upsample_bilinear", "upsample_nearest", "max_pool1d", "max_pool2d", "max_pool3d"}
    | {"max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices"}
    | {"adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "amax", "max"}
    | {"adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices"}
    | {"adaptive_max_pool3d_with_indices"}
)
"""Linear maps whose weights sum to one per output (averages, interpolation) and max
selections: the gradient spreads relevance by their weights and keeps its total."""
SUMS = frozenset({"sum"})
STRUCTURAL = frozenset(
    {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "__getitem__"}
    | {"squeeze", "unsqueeze", "cat", "concat", "concatenate", "stack", "split", "chunk"}
    | {"unbind", "expand", "expand_as", "repeat", "clone", "to", "type", "float", "half"}
    | {"bfloat16", "double", "narrow", "select", "index_select", "movedim", "moveaxis"}
    | {"roll", "flip", "pixel_shuffle", "pixel_unshuffle", "t", "view_as", "reshape_as"}
    | {"squeeze_", "unsqueeze_", "split_with_sizes", "tensor_split", "broadcast_to"}
    | {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
    | {"pad", "unflatten", "swapaxes", "swapdims", "hsplit", "vsplit", "dsplit", "tile"}
    | {"repeat_interleave", "gather", "take_along_dim", "contiguous", "as_strided"}
    | {"__setitem__", "copy_", "detach", "cpu", "cuda"}
)
META = frozenset(
    {"__get__", "size", "dim", "numel", "__len__", "__format__", "__repr__", "__bool__"}
    | {"is_floating_point", "is_contiguous", "item", "tolist", "__index__", "data_ptr"}
    | {"element_size", "get_device", "__hash__", "__iter__", "stride", "storage_offset"}
    | {"__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "eq", "ne", "lt", "le"}
    | {"gt", "ge", "argmax", "argmin", "any", "all", "isfinite", "isnan", "nonzero"}
    | {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like"}
    | {"ones_like", "empty_like", "full_like", "rand_like", "randn_like", "arange"}
    | {"__contains__", "__array__", "requires_grad_", "retain_grad", "register_hook"}
    | {"__reduce_ex__", "__deepcopy__", "_is_view", "is_complex", "__invert__", "logical_not"}
    | {"__and__", "__or__", "__xor__", "logical_and", "logical_or", "sort", "argsort", "topk"}
)
TRACKED = ACTIVATIONS | ADDITIONS | MULTIPLICATIONS | NORMS | SUMS
"""Function names the preparation may route; their calls are counted during a run."""

INPLACE = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__"})
"""In-place operator methods (besides names ending in a single ``_``)."""

LeafKind = Literal["activation", "structural", "scale", "norm", "other"]


def function_name(func: Any) -> str:
    """The name a tracked function goes by (``torch.relu``, ``Tensor.relu`` and
    ``F.relu`` are all ``"relu"``)."""
    return getattr(func, "__name__", "") or type(func).__name__


def is_inplace(name: str, kwargs: dict[str, Any]) -> bool:
    """Whether a call modifies its first operand (``relu_``, ``x += y``, ``inplace=True``)."""
    return (
        name in INPLACE
        or (name.endswith("_") and not name.endswith("__"))
        or bool(kwargs.get("inplace", False))
    )


def categorize(name: str, inputs: int) -> Category:
    """The category of a call of ``name`` with ``inputs`` operands that depend on the input."""
    if name in ACTIVATIONS:
        return "activation"
    if name in ADDITIONS:
        return "merge" if inputs >= 2 else "shift"
    if name in MULTIPLICATIONS:
        return "product" if inputs >= 2 else "scale"
    if name in PRODUCTS:
        return "product"
    if name in NORMS:
        return "norm"
    if name in CONVEX:
        return "convex"
    if name in SUMS:
        return "sum"
    if name in STRUCTURAL or name in META:
        return "structural"
    return "other"


@dataclass(frozen=True)
class FunctionCall:
    """One call of a function during the probe pass."""

    index: int
    """Position among the calls of :data:`TRACKED` functions (-1 if not tracked)."""
    name: str
    category: Category
    module: str
    """Path of the innermost module running it ('' is the model itself)."""
    module_type: str
    in_leaf: bool
    """Whether it ran inside a leaf module's forward (the leaf's rule covers it)."""
    inputs: int
    """How many operands depend on the model's input."""
    operand: int = 0
    """Position of the first positional argument that depends on the input."""


@dataclass
class LeafInfo:
    """One leaf module: where it is, how often it ran, what it computed."""

    path: str
    module: nn.Module
    calls: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    """Categories of the operations on activations inside it, over all its calls."""
    names: Counter[str] = field(default_factory=Counter)
    """The functions behind them, by name."""

    @property
    def kind(self) -> LeafKind:
        """What the leaf does, judged from its operations on activations."""
        ops = {k: v for k, v in self.ops.items() if k != "structural"}
        per_call = max(self.calls, 1)
        if not ops:
            return "structural"
        if set(ops) == {"activation"} and ops["activation"] == per_call:
            return "activation"
        if set(ops) <= {"scale", "shift"}:
            return "scale"
        if "norm" in ops and set(ops) <= {"norm", "scale", "shift"}:
            return "norm"
        return "other"


@dataclass
class ModelTrace:
    """The probe's record of one forward pass (see the module docstring)."""

    leaves: dict[int, LeafInfo]
    calls: list[FunctionCall]
    tracked: list[str]
    """The names of the tracked calls, in order."""

    def leaf(self, module: nn.Module) -> LeafInfo | None:
        return self.leaves.get(id(module))

    def reused(self) -> list[LeafInfo]:
        """Leaf modules that ran more than once."""
        return [info for info in self.leaves.values() if info.calls > 1]

    def activation_leaves(self) -> list[LeafInfo]:
        """Leaf modules that apply one element-wise non-linearity per call."""
        return [info for info in self.leaves.values() if info.calls and info.kind == "activation"]

    def activation_functions(self) -> Counter[str]:
        """How often each activation function ran on the input's data, in leaf modules
        or in forward code (``relu``, ``gelu``, ``sigmoid``, ...)."""
        return Counter(
            c.name.rstrip("_") for c in self.calls if c.category == "activation" and c.inputs
        )

    def outside_leaves(self, *categories: Category) -> list[FunctionCall]:
        """Calls with an input-dependent operand made in a non-leaf module's forward."""
        return [c for c in self.calls if not c.in_leaf and c.inputs and c.category in categories]


def _count_inputs(args: Any, kwargs: dict[str, Any]) -> int:
    count = 0
    stack = [*args, *kwargs.values()]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            count += bool(value.requires_grad)
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return count


class _Recorder(TorchFunctionMode):
    def __init__(self, stack: list[tuple[str, nn.Module, bool]], leaves: dict[int, LeafInfo]):
        super().__init__()
        self.stack, self.leaves = stack, leaves
        self.calls: list[FunctionCall] = []
        self.tracked: list[str] = []
        self.active = False

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if not self.active:
            return func(*args, **kwargs)
        name = function_name(func)
        index = -1
        if name in TRACKED:
            index = len(self.tracked)
            self.tracked.append(name)
        if name not in META:
            inputs = _count_inputs(args, kwargs)
            path, module, leaf = self.stack[-1] if self.stack else ("", None, False)
            category = categorize(name, inputs)
            operand = next(
                (i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad),
                0,
            )
            self.calls.append(
                FunctionCall(
                    index, name, category, path, type(module).__name__, leaf, inputs, operand
                )
            )
            if leaf and inputs and module is not None:
                self.leaves[id(module)].ops[category] += 1
                self.leaves[id(module)].names[name] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def _parameters_frozen(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def trace_model(model: nn.Module, inputs: torch.Tensor) -> ModelTrace:
    """Run ``model`` once on ``inputs[:1]`` and record what it computes.

    ``model`` is the user's model (not a score wrapper); it is left as it was found
    (hooks removed, ``requires_grad`` flags restored). Use it in eval mode.
    """
    names = {id(m): n for n, m in model.named_modules()}
    leaves = {
        id(m): LeafInfo(names[id(m)], m)
        for m in model.modules()
        if next(m.children(), None) is None
    }
    stack: list[tuple[str, nn.Module, bool]] = []
    recorder = _Recorder(stack, leaves)

    def pre(module: nn.Module, args: Any) -> None:
        leaf = id(module) in leaves
        if leaf:
            leaves[id(module)].calls += 1
        stack.append((names.get(id(module), "?"), module, leaf))

    def post(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    def start(module: nn.Module, args: Any) -> None:
        recorder.active = True

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        recorder.active = False

    handles = [model.register_forward_pre_hook(start, prepend=True)]
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    handles.append(model.register_forward_hook(stop, always_call=True))
    x = inputs[:1].detach().clone().requires_grad_(True)
    try:
        with _parameters_frozen(model), torch.enable_grad(), recorder:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return ModelTrace(leaves=leaves, calls=recorder.calls, tracked=recorder.tracked)

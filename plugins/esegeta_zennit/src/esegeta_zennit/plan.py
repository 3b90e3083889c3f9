"""Which batch norm merges into which layer, and which layers see the input: read from
one probe pass over the prepared model, not from the order modules are declared in.

zennit's ``SequentialMergeBatchNorm`` merges a batch norm into the linear layer that
comes just before it in *declaration* order. That holds for VGG-style stacks but not in
general: torchvision's DenseNet declares ``conv2`` of one dense layer just before
``norm1`` of the next, whose input is the concatenation of every earlier feature map
(DenseNet is pre-activation: norm -> relu -> conv), so the pairing is wrong (on
densenet121 58 of its 117 pairs are; the first such merge fails on a shape mismatch
after the earlier merges were already applied to the model).

:func:`plan_rules` instead runs the model once on one item and follows the autograd
graph of that pass: a batch norm is merged into a convolution or linear layer only when
its input *is* that layer's output (possibly through the core's
:class:`~esegeta_core.sites.Probe` copies) and nothing else uses that output, both
modules run once per pass and share no parameters or buffers with another module, and
the channel counts agree. Every other batch norm is left as it is and gets the epsilon
rule. The same pass finds the *input layers*: the convolutions and linear layers with no
other convolution or linear layer between them and the input, where the composites put
their first-layer rule (flat, box).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from esegeta_core import unwrap
from esegeta_core.sites import Probe, Tap

LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
"""Layers zennit's composites give a linear-layer rule and batch norms merge into."""

BATCH_NORM = nn.modules.batchnorm._BatchNorm


@dataclass
class Record:
    """One leaf module's run in the probe pass."""

    module: nn.Module
    inputs: Any  # the autograd node of its first tensor input (None: no graph)
    output: Any  # the autograd node of its output
    is_probe_input: bool  # the first input is the probe input itself
    output_ndim: int


@dataclass
class RulePlan:
    """What the probe pass decided, by module identity (see the module docstring)."""

    merges: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)
    """``(linear layer, batch norm)`` pairs to merge."""
    unmerged: list[nn.Module] = field(default_factory=list)
    """Batch norms left as they are (epsilon rule)."""
    input_layers: list[nn.Module] = field(default_factory=list)
    """Convolutions and linear layers that see the input (first-layer rule)."""
    names: dict[int, str] = field(default_factory=dict)
    """``id(module)`` -> its path in the user's model (call sites included)."""

    @property
    def merged_ids(self) -> set[int]:
        return {id(bn) for _, bn in self.merges}

    @property
    def input_ids(self) -> set[int]:
        return {id(m) for m in self.input_layers}

    def summary(self) -> dict[str, Any]:
        """Plain data for the explanation's extras."""

        def name(m: nn.Module) -> str:
            return self.names.get(id(m), type(m).__name__)

        return {
            "merged_batch_norms": {name(bn): name(lin) for lin, bn in self.merges},
            "epsilon_batch_norms": [name(bn) for bn in self.unmerged],
            "input_layers": [name(m) for m in self.input_layers],
        }


def plan_rules(model: nn.Module, inputs: torch.Tensor, *, merge: bool = True) -> RulePlan:
    """Run ``model`` (the prepared score model) once on ``inputs[:1]`` and decide the
    batch-norm merges (none when ``merge`` is False) and the input layers. Leaves no
    hooks behind."""
    root = unwrap(model)
    plan = RulePlan(names=module_paths(root))
    records: dict[int, list[Record]] = {}
    x = inputs[:1].detach().clone().requires_grad_(True)

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        out = output[0] if isinstance(output, (tuple, list)) and output else output
        records.setdefault(id(module), []).append(
            Record(
                module=module,
                inputs=getattr(first, "grad_fn", None),
                output=getattr(out, "grad_fn", None),
                is_probe_input=first is x,
                output_ndim=out.ndim if isinstance(out, torch.Tensor) else 0,
            )
        )

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.enable_grad():
            scores = model(x)
    finally:
        for handle in handles:
            handle.remove()
    graph = _Graph(scores, x)
    by_output = {  # modules that hand their input on unchanged (Identity) produce nothing
        id(runs[0].output): runs[0]
        for runs in records.values()
        if len(runs) == 1 and runs[0].output is not None and runs[0].output is not runs[0].inputs
    }
    shared = _shared_tensors(model)
    for module in leaves:
        runs = records.get(id(module), [])
        if isinstance(module, BATCH_NORM) and runs:
            partner = _partner(module, runs, by_output, graph, shared) if merge else None
            if partner is None:
                plan.unmerged.append(module)
            else:
                plan.merges.append((partner, module))
    linear_outputs = {
        id(r.output)
        for runs in records.values()
        for r in runs
        if isinstance(r.module, LINEAR_TYPES) and r.output is not None
    }
    for module in leaves:
        runs = records.get(id(module), [])
        if (
            isinstance(module, LINEAR_TYPES)
            and runs
            and all(graph.sees_input(r, linear_outputs) for r in runs)
        ):
            plan.input_layers.append(module)
    del scores, graph
    return plan


def module_paths(root: nn.Module) -> dict[int, str]:
    """``id(module)`` -> path in the user's model, looking through the core's layer taps
    (a tapped layer keeps its own path; call sites are ``path.sites.k``)."""
    paths: dict[int, str] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module._modules.items():
            if child is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, Tap):
                for part in ("before", "after"):
                    paths.setdefault(id(getattr(child, part)), f"{path}[{part}]")
                child = child.inner
            if id(child) not in paths:
                paths[id(child)] = path
                walk(child, path)

    walk(root, "")
    return paths


def _partner(
    bn: nn.Module,
    runs: list[Record],
    by_output: dict[int, Record],
    graph: _Graph,
    shared: set[int],
) -> nn.Module | None:
    """The linear layer ``bn`` merges into, or None (see the module docstring)."""
    if len(runs) != 1 or not _mergeable_batch_norm(bn) or _shares(bn, shared):
        return None
    node = runs[0].inputs
    while node is not None and graph.consumers[node] == 1:
        producer = by_output.get(id(node))
        if producer is None:
            return None
        if isinstance(producer.module, Probe):
            node = producer.inputs
            continue
        layer = producer.module
        if not isinstance(layer, LINEAR_TYPES) or _shares(layer, shared):
            return None
        return layer if _channels_fit(layer, bn, producer.output_ndim) else None
    return None


def _mergeable_batch_norm(bn: nn.Module) -> bool:
    """Affine, with running statistics, in eval mode: an affine map zennit can merge."""
    return (
        not bn.training
        and getattr(bn, "weight", None) is not None
        and getattr(bn, "bias", None) is not None
        and getattr(bn, "running_mean", None) is not None
        and getattr(bn, "running_var", None) is not None
    )


def _channels_fit(layer: nn.Module, bn: nn.Module, output_ndim: int) -> bool:
    """The batch norm's channels are the layer's output channels (dimension 1)."""
    features = getattr(bn, "num_features", None)
    if isinstance(layer, nn.Linear):
        return output_ndim == 2 and layer.out_features == features
    return getattr(layer, "out_channels", None) == features


def _shared_tensors(model: nn.Module) -> set[int]:
    """Parameters and buffers held by more than one module object (call-site copies,
    tied weights): merging into them would change every holder."""
    counts: Counter[int] = Counter()
    for module in model.modules():
        held = {
            id(t)
            for t in [*module._parameters.values(), *module._buffers.values()]
            if t is not None
        }
        counts.update(held)
    return {key for key, n in counts.items() if n > 1}


def _shares(module: nn.Module, shared: set[int]) -> bool:
    own = [*module._parameters.values(), *module._buffers.values()]
    return any(t is not None and id(t) in shared for t in own)


class _Graph:
    """The autograd graph of the probe pass: how many operations use each node."""

    def __init__(self, scores: torch.Tensor, x: torch.Tensor) -> None:
        self.consumers: Counter[Any] = Counter()
        self.x = x
        self._keep = [scores]
        seen: set[Any] = set()
        stack = [scores.grad_fn] if scores.grad_fn is not None else []
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for child, _ in node.next_functions:
                if child is not None:
                    self.consumers[child] += 1
                    stack.append(child)

    def sees_input(self, record: Record, linear_outputs: set[int]) -> bool:
        """Whether a layer's input depends on the probe input through no other linear
        layer (graph nodes are searched upwards from the layer's input)."""
        if record.is_probe_input:
            return True
        if record.inputs is None:
            return False
        reached = False
        seen: set[Any] = set()
        stack = [record.inputs]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if id(node) in linear_outputs:
                return False
            if getattr(node, "variable", None) is self.x:
                reached = True
            stack.extend(child for child, _ in node.next_functions if child is not None)
        return reached

"""LRP with zennit on the core's prepared model (imports zennit: load it lazily).

:func:`relevance` builds the named zennit composite with the user's parameters and
wraps its module map so that the core's verdict on each module comes first:

- ``rule_kind(m)`` ``"activation"`` or ``"pass"`` -> zennit ``Pass`` (relevance passes
  through unchanged: activations, element-wise scalings, normalisations other than
  batch norm; a shape-only module that changes the shape, such as ``Flatten``, keeps its
  own gradient, which moves relevance unchanged: :class:`PassThrough`);
- ``"sum"`` -> zennit ``Norm`` (a split in proportion to the terms: skip connections,
  functional sums, the segmentation pixel sum);
- a batch norm merged by the plan (:mod:`esegeta_zennit.plan`) -> ``Pass`` (after the
  merge it is the identity, as with zennit's canonizers); any other batch norm -> the
  epsilon rule;
- an input layer of the plan -> the composite's first-layer rule (flat, box), when it
  has one for that layer type;
- otherwise the composite's own layer map (z-plus, gamma, alpha-beta, epsilon, the
  ``Norm`` rule for average pooling), or no rule (max pooling, up-sampling: the
  gradient, which keeps relevance's total).

The merges run as a zennit canonizer that only changes parameters: the model's forward
functions are never rewritten (the core checks that a pass calls the functions it
traced). zennit's hooks and merges are removed in ``finally`` on success and error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import MergeBatchNorm
from zennit.composites import COMPOSITES
from zennit.core import Composite, Hook
from zennit.rules import Epsilon, Norm, Pass

from esegeta_core import InvalidParamsError
from esegeta_core.preparation import rule_kind
from esegeta_core.toolkit import recording
from esegeta_zennit.params import BOX, LRPParams
from esegeta_zennit.plan import BATCH_NORM, RulePlan


class PlannedMergeBatchNorm(MergeBatchNorm):
    """Merges the given ``(linear layer, batch norm)`` pairs; all or none (a failure
    part-way reverts the merges already made)."""

    def __init__(self, pairs: list[tuple[nn.Module, nn.Module]] | None = None) -> None:
        super().__init__()
        self.pairs = list(pairs or [])

    def apply(self, root_module: nn.Module) -> list[MergeBatchNorm]:
        instances: list[MergeBatchNorm] = []
        try:
            for linear, batch_norm in self.pairs:
                instance = PlannedMergeBatchNorm()
                instance.register((linear,), batch_norm)
                instances.append(instance)
        except BaseException:
            for instance in reversed(instances):
                instance.remove()
            raise
        return instances

    def copy(self) -> PlannedMergeBatchNorm:
        return PlannedMergeBatchNorm(self.pairs)


class PassThrough(Pass):
    """zennit's ``Pass`` (relevance passes unchanged) for modules whose input and output
    have the same shape; a shape-only module (flatten, permute, the core's layout view)
    keeps its own gradient, which moves relevance unchanged to where it came from."""

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
        same = len(grad_input) == len(grad_output) and all(
            a is None or b is None or a.shape == b.shape for a, b in zip(grad_input, grad_output)
        )
        return grad_output if same else None


def _bound(
    value: float | torch.Tensor | None, inputs: torch.Tensor, which: str, method: str
) -> float | torch.Tensor:
    """The box rule's ``low`` / ``high``: a number as given, a tensor broadcast to the
    batch, or (None) each item's smallest / largest value."""
    if value is None:
        flat = inputs.detach().flatten(1)
        extreme = flat.amin(1) if which == "low" else flat.amax(1)
        return extreme.view(-1, *([1] * (inputs.ndim - 1))).expand_as(inputs)
    if isinstance(value, torch.Tensor):
        try:
            return value.detach().to(inputs).broadcast_to(inputs.shape)
        except RuntimeError:
            raise InvalidParamsError(
                f"Method {method!r}: {which} shaped {tuple(value.shape)} does not broadcast "
                f"to the input batch {tuple(inputs.shape)}; give a number or a tensor such "
                "as (1, C, 1, 1)."
            ) from None
    return float(value)


def build_composite(
    params: LRPParams, plan: RulePlan, inputs: torch.Tensor, method: str
) -> Composite:
    """zennit's named composite, wrapped as the module docstring describes."""
    kwargs: dict[str, Any] = {
        "epsilon": params.epsilon,
        "stabilizer": params.stabilizer,
        "zero_params": params.zero_params(),
    }
    if params.composite == BOX:
        kwargs.update(
            low=_bound(params.low, inputs, "low", method),
            high=_bound(params.high, inputs, "high", method),
            gamma=params.gamma,
        )
    named = COMPOSITES[params.composite](**kwargs)
    layer_map = list(named.layer_map)
    first_map = list(getattr(named, "first_map", []))
    pass_rule, norm_rule = PassThrough(), Norm(stabilizer=params.stabilizer)
    epsilon_rule = Epsilon(epsilon=params.epsilon, zero_params=params.zero_params())
    merged, first = plan.merged_ids, plan.input_ids

    def module_map(ctx: dict[str, Any], name: str, module: nn.Module) -> Hook | None:
        kind = rule_kind(module)
        if kind in ("activation", "pass"):
            return pass_rule
        if kind == "sum":
            return norm_rule
        if isinstance(module, BATCH_NORM):
            return pass_rule if id(module) in merged else epsilon_rule
        if id(module) in first:
            hook = next((h for types, h in first_map if isinstance(module, types)), None)
            if hook is not None:
                return hook
        return next((h for types, h in layer_map if isinstance(module, types)), None)

    return Composite(module_map=module_map, canonizers=[PlannedMergeBatchNorm(plan.merges)])


def _initial_relevance(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The relevance put on the output: the target class's score, zero elsewhere."""

    def attr_output(scores: torch.Tensor) -> torch.Tensor:
        hot = F.one_hot(target.to(scores.device), scores.shape[1]).to(scores.dtype)
        return hot * scores.detach()

    return attr_output


def relevance(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    params: LRPParams,
    plan: RulePlan,
    method: str,
) -> torch.Tensor:
    """Input relevance through zennit's ``Gradient`` attributor."""
    composite = build_composite(params, plan, inputs, method)
    attributor = Gradient(model, composite, attr_output=_initial_relevance(target))
    x = inputs.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            _, result = attributor(x)
    finally:
        composite.remove()
    return result.detach()


def layer_relevance(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    params: LRPParams,
    plan: RulePlan,
    read_at: nn.Module,
    use_input: bool,
    method: str,
) -> torch.Tensor:
    """Relevance at ``read_at``'s output (or first input): zennit passes relevance as the
    gradient, so it is the modified gradient with respect to that tensor."""
    composite = build_composite(params, plan, inputs, method)
    x = inputs.detach().clone().requires_grad_(True)
    # recorded before zennit's hooks on the module are registered, so before they run
    with recording([read_at], inputs=use_input) as (seen,):
        try:
            composite.register(model)
            with torch.enable_grad():
                scores = model(x)
                if not seen:
                    raise InvalidParamsError(
                        f"Method {method!r}: the layer is not used in the model's forward pass."
                    )
                (result,) = torch.autograd.grad(
                    scores,
                    cast(torch.Tensor, seen[-1]),
                    grad_outputs=_initial_relevance(target)(scores),
                )
        finally:
            composite.remove()
    return result.detach()

"""Modified activation backward rules (guided backprop, deconvnet), N-D and batched.

:func:`relu_rule` makes every activation of the prepared model (the core's
:mod:`esegeta_core.preparation`: ReLU, GELU, SiLU, PReLU, Hardswish modules and
functional activations alike, one module per call site) pass gradients back by another
rule for the duration of a ``with`` block, through forward hooks; the hooks are always
removed. The rules are written with differentiable torch ops, so ``create_graph=True``
works through them. They match captum.guided_backprop / captum.deconvolution.

- ``"guided"`` (Springenberg et al., https://arxiv.org/abs/1412.6806): the gradient that
  leaves an activation (its local derivative applied) keeps its positive part. At a
  ReLU that is the paper's rule: positive input and positive gradient.
- ``"deconv"`` (Zeiler & Fergus, https://arxiv.org/abs/1311.2901): the positive part of
  the incoming gradient, whatever the forward input.

:class:`ActivationRuleMethod` declares what every method using a rule needs from the
core (the model's activations as modules) and refuses a model without activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from esegeta_core import NotApplicableError
from esegeta_core.explainer import ModelRules
from esegeta_core.preparation import activation_modules, ensure_prepared

if TYPE_CHECKING:
    from esegeta_core.tracing import ModelTrace

Rule = Literal["guided", "deconv"]


class _Deconv(torch.autograd.Function):
    """Forwards the activation's output; sends the positive part of the incoming
    gradient to the activation's input (the activation's own derivative is skipped)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.clamp(min=0), None


def _positive(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


def _guided_pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or not x.requires_grad:
        return None
    gate_input = x.view_as(x)  # used by this activation only
    gate_input.register_hook(_positive)
    return (gate_input, *args[1:])


def _deconv_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
        return None
    if output.shape != x.shape or not x.requires_grad:
        return None
    return _Deconv.apply(x, output.detach())


@contextlib.contextmanager
def relu_rule(model: nn.Module, rule: Rule, inputs: torch.Tensor, method: str) -> Iterator[int]:
    """Within the block, every activation of the prepared ``model`` back-propagates by
    ``rule`` (a method called outside ``explain()`` prepares the model here, with
    ``inputs`` as the probe). Yields the number of activation modules changed (0: the
    model has none, which the methods refuse before running)."""
    with ensure_prepared(model, inputs, "gates", method=method):
        gates = activation_modules(model)
        if rule == "guided":
            handles = [m.register_forward_pre_hook(_guided_pre_hook) for m in gates]
        else:
            handles = [m.register_forward_hook(_deconv_hook) for m in gates]
        try:
            yield len(handles)
        finally:
            for h in handles:
                h.remove()


GATE_REQUIREMENT = (
    "at least one activation (module or function): the guided and deconvnet rules act on "
    "activations, without one the map is the plain gradient"
)


def refuse_without_activations(method: str, model: nn.Module, trace: object) -> None:
    """The guided and deconvnet rules need an activation to act on."""
    if trace is not None and not activation_modules(model):
        raise NotApplicableError(
            f"Method {method!r} (plugin 'cnnvis') applies its rule at the model's "
            "activations, and this model has none: the map would be the plain gradient. "
            "Use 'cnnvis.vanilla_backprop' for the gradient."
        )


class ActivationRuleMethod:
    """Mixin of the methods that back-propagate by a rule at the activations (guided
    backprop, deconvnet, guided Grad-CAM): the core gives every activation a module
    (``model_rules = "gates"``) and a model without activations is refused. List it
    before the :class:`~esegeta_core.Explainer` base."""

    name: ClassVar[str]
    model_rules: ClassVar[ModelRules] = "gates"
    requirements: ClassVar[tuple[str, ...]] = (GATE_REQUIREMENT,)

    def check_model(self, model: nn.Module, params: object, trace: ModelTrace | None) -> None:
        """Refuse a model without activations (the rule would have nothing to act on)."""
        refuse_without_activations(self.name, model, trace)

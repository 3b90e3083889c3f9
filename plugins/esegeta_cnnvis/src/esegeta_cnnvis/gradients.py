"""The gradient family: vanilla backprop, guided backprop, deconvnet, gradient x input
and integrated gradients, with SmoothGrad / VarGrad over any of them.

Every method is a batched *base* function (one backward pass per batch, or per chunk
of integration steps) run by :func:`~esegeta_cnnvis.smoothing.run_gradient_method`,
which adds the shared post-processing, smoothing and ``create_graph``. N-dimensional
throughout: nothing here knows whether the input is 2D or 3D.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections.abc import Mapping
from typing import ClassVar, TypeVar

import torch
from torch import nn

from esegeta_cnnvis.input_gradients import input_gradient
from esegeta_cnnvis.params import (
    GradientParams,
    IntegratedGradientsParams,
    SmoothGradParams,
    VarGradParams,
)
from esegeta_cnnvis.quadrature import quadrature
from esegeta_cnnvis.relu_rules import ActivationRuleMethod, Rule, relu_rule
from esegeta_cnnvis.smoothing import BaseFn, run_gradient_method, smoothed_workload
from esegeta_core import Explainer
from esegeta_core.explainer import Workload
from esegeta_core.toolkit import make_baseline

G = TypeVar("G", bound=GradientParams)
"""A gradient method's parameter model."""


def vanilla(model: nn.Module, x: torch.Tensor, target: torch.Tensor, cg: bool) -> torch.Tensor:
    """The input gradient of the target score (Simonyan et al.)."""
    return input_gradient(model, x, target, create_graph=cg)


def with_relu_rule(rule: Rule, method: str) -> BaseFn:
    """The input gradient with every activation back-propagating by ``rule``."""

    def base(model: nn.Module, x: torch.Tensor, target: torch.Tensor, cg: bool) -> torch.Tensor:
        with relu_rule(model, rule, x, method):
            return input_gradient(model, x, target, create_graph=cg)

    return base


def gradient_x_input(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, cg: bool
) -> torch.Tensor:
    """Input times its gradient (Shrikumar et al., https://arxiv.org/abs/1605.01713)."""
    return x * input_gradient(model, x, target, create_graph=cg)


class GradientMethod(Explainer[G]):
    """Base of the gradient methods: the class's batched base function run through
    :func:`~esegeta_cnnvis.smoothing.run_gradient_method` (post-processing, smoothing,
    ``create_graph``)."""

    family = "gradient"
    output = "input"
    ranks = (2, 3)
    cost = "low"

    count_params = ("n_steps",)

    def passes(self, params: G, shape: tuple[int, ...]) -> int | None:
        """Integration steps per item, times the noisy copies when smoothing."""
        return self.workload(params, shape, {}).passes

    def workload(
        self, params: G, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """One pass per item (a path of ``n_steps`` for integrated gradients), on every
        noisy copy when smoothing."""
        return smoothed_workload(params, shape, self.path_workload(params, shape))

    def path_workload(self, params: G, shape: tuple[int, ...]) -> Workload | None:
        """The workload without smoothing (None: one pass per item)."""
        return None

    @abstractmethod
    def base(self, params: G) -> BaseFn:
        """The batched attribution function for these parameters."""

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: G
    ) -> torch.Tensor:
        return run_gradient_method(self.base(params), model, inputs, target, params)


class RuleGradient(ActivationRuleMethod, GradientMethod[GradientParams]):
    """The input gradient with every activation back-propagating by :attr:`rule`."""

    rule: ClassVar[Rule]

    def base(self, params: GradientParams) -> BaseFn:
        return with_relu_rule(self.rule, self.name)


class VanillaBackprop(GradientMethod[GradientParams]):
    """Vanilla backprop: the gradient of the target score with respect to the input."""

    name = "cnnvis.vanilla_backprop"
    paper = "https://arxiv.org/abs/1312.6034"

    def base(self, params: GradientParams) -> BaseFn:
        return vanilla


class GuidedBackprop(RuleGradient):
    """Guided backprop: gradients passed back only through positive ReLU inputs and
    positive gradients.

    At every activation, ReLU or not (GELU, SiLU, PReLU, Hardswish: the gradient leaving
    the activation keeps its positive part, as captum.guided_backprop does); a model
    without activations is refused.
    """

    name = "cnnvis.guided_backprop"
    paper = "https://arxiv.org/abs/1412.6806"
    rule = "guided"


class Deconvnet(RuleGradient):
    """Deconvnet: ReLUs pass back the positive part of the gradient, whatever the input.

    At every activation, ReLU or not; a model without activations is refused.
    """

    name = "cnnvis.deconvnet"
    paper = "https://arxiv.org/abs/1311.2901"
    rule = "deconv"


class GradientXInput(GradientMethod[GradientParams]):
    """Gradient x input: the input times the gradient of the target score."""

    name = "cnnvis.gradient_x_input"
    paper = "https://arxiv.org/abs/1605.01713"

    def base(self, params: GradientParams) -> BaseFn:
        return gradient_x_input


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    cg: bool,
    *,
    params: IntegratedGradientsParams,
    method: str,
) -> torch.Tensor:
    """``(x - baseline) * integral of the gradient along the straight path``, so that
    the attributions sum to ``f(x) - f(baseline)`` up to the quadrature error."""
    baseline = make_baseline(params.baselines, x, sigma=params.baseline_sigma, method=method)
    alphas, weights = quadrature(params.n_steps, params.integration)
    alphas = alphas.to(device=x.device, dtype=x.dtype)
    weights = weights.to(device=x.device, dtype=x.dtype)
    diff = x - baseline
    batch, per_pass = x.shape[0], params.internal_batch_size or params.n_steps
    ones = (1,) * x.ndim
    total = torch.zeros_like(x)
    for start in range(0, params.n_steps, per_pass):
        a = alphas[start : start + per_pass].view(-1, *ones)
        w = weights[start : start + per_pass].view(-1, *ones)
        k = a.shape[0]
        path = (baseline.unsqueeze(0) + a * diff.unsqueeze(0)).flatten(0, 1)
        grads = input_gradient(model, path, target.repeat(k), create_graph=cg)
        total = total + (grads.unflatten(0, (k, batch)) * w).sum(0)
    return diff * total


class IntegratedGradients(GradientMethod[IntegratedGradientsParams]):
    """Integrated gradients: the input gradient integrated along the path from a
    baseline, batched over path points."""

    name = "cnnvis.integrated_gradients"
    paper = "https://arxiv.org/abs/1703.01365"
    cost = "medium"

    def base(self, params: IntegratedGradientsParams) -> BaseFn:
        return functools.partial(integrated_gradients, params=params, method=self.name)

    def path_workload(
        self, params: IntegratedGradientsParams, shape: tuple[int, ...]
    ) -> Workload | None:
        """``n_steps`` path points, ``internal_batch_size`` at a time (all at once by
        default); Gauss-Legendre's nodes come from an ``n_steps`` x ``n_steps``
        eigenproblem (about four float64 matrices of that size)."""
        n = params.n_steps
        table = params.integration == "gausslegendre"
        return Workload(
            passes=n,
            inputs=shape[0] * min(n, params.internal_batch_size or n),
            extra=32 * n * n if table and n > 1 else 0,
            counts=("n_steps", "integration") if table else ("n_steps",),
            fix="lower n_steps (Gauss-Legendre's nodes need n_steps x n_steps matrices; "
            "integration='riemann_trapezoid' does not)"
            if table
            else "",
            batch=("internal_batch_size",),
        )


# -- SmoothGrad / VarGrad aliases ------------------------------------------------------

_SMOOTHABLE: dict[str, type[GradientMethod[GradientParams]]] = {
    "vanilla_backprop": VanillaBackprop,
    "guided_backprop": GuidedBackprop,
    "deconvnet": Deconvnet,
    "gradient_x_input": GradientXInput,
}
"""The methods a :data:`~esegeta_cnnvis.params.SmoothableName` names."""

S = TypeVar("S", bound=SmoothGradParams | VarGradParams)


class SmoothedAlias(GradientMethod[S]):
    """A named gradient method (``params.base``) with smoothing always on."""

    cost = "medium"
    deterministic = False

    def base(self, params: S) -> BaseFn:
        return _SMOOTHABLE[params.base]().base(params)


class SmoothGrad(SmoothedAlias[SmoothGradParams]):
    """SmoothGrad: a gradient method averaged over noisy copies of the input."""

    name = "cnnvis.smoothgrad"
    paper = "https://arxiv.org/abs/1706.03825"


class VarGrad(SmoothedAlias[VarGradParams]):
    """VarGrad: the variance of a gradient method over noisy copies of the input."""

    name = "cnnvis.vargrad"
    paper = "https://arxiv.org/abs/1810.03307"


GRADIENT_METHODS: list[type[Explainer]] = [
    VanillaBackprop,
    GuidedBackprop,
    Deconvnet,
    GradientXInput,
    IntegratedGradients,
    SmoothGrad,
    VarGrad,
]

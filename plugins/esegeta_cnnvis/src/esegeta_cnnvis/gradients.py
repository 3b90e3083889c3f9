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
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from esegeta_cnnvis.integration import Integration, quadrature
from esegeta_cnnvis.relu_rules import (
    GATE_REQUIREMENT,
    Rule,
    refuse_without_activations,
    relu_rule,
)
from esegeta_cnnvis.smoothing import (
    BaseFn,
    GradientParams,
    run_gradient_method,
    smoothed_workload,
)
from esegeta_cnnvis.targets_score import input_gradient
from esegeta_core import Explainer
from esegeta_core.baselines import make_baseline
from esegeta_core.explainer import Workload

BaselineChoice = Literal["zeros", "mean", "blurred", "uniform", "gaussian"] | float | torch.Tensor
"""A named baseline (see :func:`esegeta_core.baselines.make_baseline`), a constant or a
tensor broadcastable to the inputs."""


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


class _GradientExplainer(Explainer):
    """Shared ``attribute``: the class's base function through the shared runner."""

    family = "gradient"
    output = "input"
    ranks = (2, 3)
    cost = "low"

    count_params = ("n_steps",)

    def passes(self, params: GradientParams, shape: tuple[int, ...]) -> int | None:
        """Integration steps per item, times the noisy copies when smoothing."""
        return self.workload(params, shape, {}).passes

    def workload(
        self, params: Any, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """One pass per item (a path of ``n_steps`` for integrated gradients), on every
        noisy copy when smoothing."""
        return smoothed_workload(params, shape, self.path_workload(params, shape))

    def path_workload(self, params: Any, shape: tuple[int, ...]) -> Workload | None:
        """The workload without smoothing (None: one pass per item)."""
        return None

    @abstractmethod
    def base(self, params: GradientParams) -> BaseFn:
        """The batched attribution function for these parameters."""

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: GradientParams
    ) -> torch.Tensor:
        return run_gradient_method(self.base(params), model, inputs, target, params)


class VanillaBackprop(_GradientExplainer):
    """Vanilla backprop: the gradient of the target score with respect to the input."""

    name = "cnnvis.vanilla_backprop"
    Params = GradientParams
    paper = "https://arxiv.org/abs/1312.6034"

    def base(self, params: GradientParams) -> BaseFn:
        return vanilla


class GuidedBackprop(_GradientExplainer):
    """Guided backprop: gradients passed back only through positive ReLU inputs and
    positive gradients.

    At every activation, ReLU or not (GELU, SiLU, PReLU, Hardswish: the gradient leaving
    the activation keeps its positive part, as captum.guided_backprop does); a model
    without activations is refused.
    """

    name = "cnnvis.guided_backprop"
    Params = GradientParams
    paper = "https://arxiv.org/abs/1412.6806"
    model_rules = "gates"
    requirements = (GATE_REQUIREMENT,)

    def check_model(self, model: nn.Module, params: object, trace: object) -> None:
        refuse_without_activations(self.name, model, trace)

    def base(self, params: GradientParams) -> BaseFn:
        return with_relu_rule("guided", self.name)


class Deconvnet(_GradientExplainer):
    """Deconvnet: ReLUs pass back the positive part of the gradient, whatever the input.

    At every activation, ReLU or not; a model without activations is refused.
    """

    name = "cnnvis.deconvnet"
    Params = GradientParams
    paper = "https://arxiv.org/abs/1311.2901"
    model_rules = "gates"
    requirements = (GATE_REQUIREMENT,)

    def check_model(self, model: nn.Module, params: object, trace: object) -> None:
        refuse_without_activations(self.name, model, trace)

    def base(self, params: GradientParams) -> BaseFn:
        return with_relu_rule("deconv", self.name)


class GradientXInput(_GradientExplainer):
    """Gradient x input: the input times the gradient of the target score."""

    name = "cnnvis.gradient_x_input"
    Params = GradientParams
    paper = "https://arxiv.org/abs/1605.01713"

    def base(self, params: GradientParams) -> BaseFn:
        return gradient_x_input


class IntegratedGradientsParams(GradientParams):
    """Integrated gradients: baseline, number of steps, quadrature, steps per pass."""

    baselines: BaselineChoice = Field(
        "zeros",
        description=(
            "Reference input: 'zeros', 'mean', 'blurred', 'uniform', 'gaussian', a "
            "constant or a tensor broadcastable to the inputs."
        ),
    )
    baseline_sigma: float = Field(
        0.0,
        ge=0.0,
        description=(
            "Blur width (baseline 'blurred') or noise scale (baseline 'gaussian'); 0 picks "
            "esegeta's default."
        ),
    )
    n_steps: int = Field(50, ge=1, description="Number of points on the path integral.")
    integration: Integration = Field(
        "gausslegendre",
        description=(
            "Quadrature: 'gausslegendre' or Riemann sums 'riemann_left', 'riemann_right', "
            "'riemann_middle', 'riemann_trapezoid'."
        ),
    )
    internal_batch_size: int | None = Field(
        None,
        ge=1,
        description=(
            "Path points evaluated per forward/backward pass (a pass holds batch x this "
            "many inputs); None: all n_steps at once."
        ),
    )

    @model_validator(mode="after")
    def _sigma_needs_blur_or_noise(self) -> IntegratedGradientsParams:
        named = isinstance(self.baselines, str) and self.baselines in ("blurred", "gaussian")
        if "baseline_sigma" in self.model_fields_set and not named:
            raise ValueError("baseline_sigma only applies with baselines 'blurred' or 'gaussian'")
        return self


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


class IntegratedGradients(_GradientExplainer):
    """Integrated gradients: the input gradient integrated along the path from a
    baseline, batched over path points."""

    name = "cnnvis.integrated_gradients"
    Params = IntegratedGradientsParams
    paper = "https://arxiv.org/abs/1703.01365"
    cost = "medium"

    def base(self, params: GradientParams) -> BaseFn:
        assert isinstance(params, IntegratedGradientsParams)
        return functools.partial(integrated_gradients, params=params, method=self.name)

    def path_workload(self, params: Any, shape: tuple[int, ...]) -> Workload | None:
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

SmoothableName = Literal["vanilla_backprop", "guided_backprop", "deconvnet", "gradient_x_input"]

_SMOOTHABLE: dict[str, type[_GradientExplainer]] = {
    "vanilla_backprop": VanillaBackprop,
    "guided_backprop": GuidedBackprop,
    "deconvnet": Deconvnet,
    "gradient_x_input": GradientXInput,
}


class SmoothGradParams(GradientParams):
    """SmoothGrad over a chosen gradient method."""

    base: SmoothableName = Field(
        "vanilla_backprop",
        description=(
            "The gradient method to smooth (integrated gradients: use "
            "cnnvis.integrated_gradients with smoothing=...)."
        ),
    )
    smoothing: Literal["smoothgrad", "smoothgrad_sq"] = Field(  # type: ignore[assignment]
        "smoothgrad", description="'smoothgrad' (mean) or 'smoothgrad_sq' (mean of squares)."
    )


class VarGradParams(GradientParams):
    """VarGrad over a chosen gradient method."""

    base: SmoothableName = Field("vanilla_backprop", description="The gradient method to smooth.")
    smoothing: Literal["vargrad"] = Field(  # type: ignore[assignment]
        "vargrad", description="Always 'vargrad': the variance over noisy copies."
    )


class _SmoothedAlias(_GradientExplainer):
    cost = "medium"
    deterministic = False

    def base(self, params: GradientParams) -> BaseFn:
        assert isinstance(params, (SmoothGradParams, VarGradParams))
        return _SMOOTHABLE[params.base]().base(params)


class SmoothGrad(_SmoothedAlias):
    """SmoothGrad: a gradient method averaged over noisy copies of the input."""

    name = "cnnvis.smoothgrad"
    Params = SmoothGradParams
    paper = "https://arxiv.org/abs/1706.03825"


class VarGrad(_SmoothedAlias):
    """VarGrad: the variance of a gradient method over noisy copies of the input."""

    name = "cnnvis.vargrad"
    Params = VarGradParams
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

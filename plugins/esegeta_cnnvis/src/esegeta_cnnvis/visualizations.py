"""Layer and feature visualizations, N-dimensional and batched.

- :class:`LayerActivationGuidedBackprop`: the input gradient of one filter's
  activation at a layer under guided ReLUs (shares the gradient methods' options).
- :class:`LayerVisualization`: activation maximisation of a filter from noise, with
  L2, total-variation and blur regularisation (Yosinski et al.).
- :class:`DeepDream`: the same objective starting from the input, with normalised
  gradient ascent steps (Mordvintsev et al.).
- :class:`InvertedRepresentation`: an input reconstructed from a layer's
  representation of it (Mahendran & Vedaldi), with alpha-norm and TV priors.

The images are optimised in units of each item's input range (``lo + span * z``), so
learning rates and regulariser weights do not depend on the data's scale. Only the
image is optimised (``torch.autograd.grad``): the model's parameters, their
``.grad`` and its mode are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from pydantic import Field
from torch import nn

from esegeta_cnnvis.layer_capture import check_filter, layer_output
from esegeta_cnnvis.relu_rules import GATE_REQUIREMENT, refuse_without_activations, relu_rule
from esegeta_cnnvis.smoothing import GradientParams, run_gradient_method, smoothed_workload
from esegeta_cnnvis.targets_score import grad_leaf
from esegeta_core import Explainer, LayerPath, MethodParams
from esegeta_core.baselines import gaussian_blur
from esegeta_core.explainer import Workload

# -- layer activation with guided backprop -----------------------------------------------


class LayerFilterGradientParams(GradientParams):
    """A layer and one of its filters, plus the gradient methods' options."""

    layer: LayerPath = Field(
        "auto", description="The layer whose filter is explained ('auto': the last spatial layer)."
    )
    filter: int = Field(0, ge=0, description="The channel (filter) index at that layer.")


class LayerActivationGuidedBackprop(Explainer):
    """Layer activation with guided backprop: the input gradient of a filter's activation
    under guided ReLUs."""

    name = "cnnvis.layer_activation_guided_backprop"
    Params = LayerFilterGradientParams
    family = "layer"
    output = "input"
    ranks = (2, 3)
    needs_layer = True
    cost = "low"
    paper = "https://arxiv.org/abs/1412.6806"
    model_rules = "gates"
    requirements = (GATE_REQUIREMENT,)

    def check_model(self, model: nn.Module, params: Any, trace: Any) -> None:
        refuse_without_activations(self.name, model, trace)

    def passes(self, params: Any, shape: tuple[int, ...]) -> int | None:
        """One pass per item, times the noisy copies when smoothing."""
        return smoothed_workload(params, shape).passes

    def workload(
        self, params: Any, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        return smoothed_workload(params, shape)

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: LayerFilterGradientParams,
    ) -> torch.Tensor:
        def base(model: nn.Module, x: torch.Tensor, _: torch.Tensor, cg: bool) -> torch.Tensor:
            xg = grad_leaf(x, cg)
            with torch.enable_grad(), relu_rule(model, "guided", x, self.name):
                act = layer_output(model, params.layer, xg, method=self.name)
                check_filter(act, params.filter, params.layer, self.name)
                (grad,) = torch.autograd.grad(act[:, params.filter].sum(), xg, create_graph=cg)
            return grad

        return run_gradient_method(base, model, inputs, target, params)


# -- image optimisation ----------------------------------------------------------------


def total_variation(z: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``(B,)``: mean ``|difference|**beta`` between neighbours, summed over spatial dims."""
    tv = z.new_zeros(z.shape[0])
    for dim in range(2, z.ndim):
        diff = z.diff(dim=dim).abs()
        tv = tv + (diff**beta if beta != 1.0 else diff).flatten(1).mean(1)
    return tv


def _range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = tuple(range(1, x.ndim))
    lo = x.amin(dims, keepdim=True)
    span = (x.amax(dims, keepdim=True) - lo).clamp(min=1e-8)
    return lo, span


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(z, image) -> (B,)`` per-item loss to minimise."""


def optimise_image(
    z0: torch.Tensor,
    lo: torch.Tensor,
    span: torch.Tensor,
    loss: Loss,
    *,
    steps: int,
    lr: float,
    blur_sigma: float = 0.0,
    blur_every: int = 1,
) -> torch.Tensor:
    """Adam on ``z`` (clamped to [0, 1]); the image is ``lo + span * z``."""
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for step in range(steps):
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss(z, lo + span * z).sum(), z)
        z.grad = grad
        opt.step()
        with torch.no_grad():
            if blur_sigma > 0 and (step + 1) % blur_every == 0:
                z.copy_(gaussian_blur(z, blur_sigma))
            z.clamp_(0.0, 1.0)
    return (lo + span * z).detach()


def _filter_mean(act: torch.Tensor, index: int | None) -> torch.Tensor:
    """``(B,)``: mean activation of a filter, or mean squared activation of the layer."""
    if index is None:
        return act.pow(2).flatten(1).mean(1)
    return act[:, index].flatten(1).mean(1)


class LayerVisualizationParams(MethodParams):
    """Activation maximisation of one filter from noise, with regularisation."""

    layer: LayerPath = Field(
        "auto",
        description="The layer whose filter is visualised ('auto': the last spatial layer).",
    )
    filter: int = Field(0, ge=0, description="The channel (filter) index at that layer.")
    steps: int = Field(30, ge=1, description="Optimisation steps (Adam).")
    lr: float = Field(0.05, gt=0.0, description="Adam learning rate, in units of the input range.")
    l2_weight: float = Field(
        1e-3, ge=0.0, description="Weight of the L2 penalty on the centred image (per pixel)."
    )
    tv_weight: float = Field(
        0.0, ge=0.0, description="Weight of the total-variation penalty (smoothness)."
    )
    blur_sigma: float = Field(
        0.0, ge=0.0, description="Gaussian blur applied every blur_every steps; 0 disables it."
    )
    blur_every: int = Field(4, ge=1, description="Blur period in steps (with blur_sigma > 0).")


class LayerVisualization(Explainer):
    """Layer visualization: an image that maximises one filter's activation, from noise."""

    name = "cnnvis.layer_visualization"
    count_params = ("steps",)
    Params = LayerVisualizationParams
    family = "visualization"
    output = "image"
    ranks = (2, 3)
    needs_layer = True
    cost = "medium"
    paper = "https://arxiv.org/abs/1506.06579"
    deterministic = False

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: LayerVisualizationParams,
    ) -> torch.Tensor:
        lo, span = _range(inputs)
        # grey noise in the middle of the input range, as in the original scripts
        z0 = 0.45 + 0.1 * torch.rand(inputs.shape, device=inputs.device, dtype=inputs.dtype)
        with torch.no_grad():
            act = layer_output(model, params.layer, lo + span * z0, method=self.name)
        check_filter(act, params.filter, params.layer, self.name)

        def loss(z: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
            act = layer_output(model, params.layer, image, method=self.name)
            value = -_filter_mean(act, params.filter)
            value = value + params.l2_weight * (z - 0.5).pow(2).flatten(1).sum(1)
            if params.tv_weight:
                value = value + params.tv_weight * total_variation(z)
            return value

        return optimise_image(
            z0,
            lo,
            span,
            loss,
            steps=params.steps,
            lr=params.lr,
            blur_sigma=params.blur_sigma,
            blur_every=params.blur_every,
        )


class DeepDreamParams(MethodParams):
    """DeepDream: amplify a filter (or a whole layer) starting from the input."""

    layer: LayerPath = Field(
        "auto", description="The layer to amplify ('auto': the last spatial layer)."
    )
    filter: int | None = Field(
        None, ge=0, description="Channel to amplify; None amplifies the whole layer (L2)."
    )
    steps: int = Field(20, ge=1, description="Gradient ascent steps.")
    lr: float = Field(
        0.01,
        gt=0.0,
        description="Step size, in units of the input range, of each normalised gradient step.",
    )


class DeepDream(Explainer):
    """DeepDream: the input changed by gradient ascent to amplify what a layer sees."""

    name = "cnnvis.deep_dream"
    count_params = ("steps",)
    Params = DeepDreamParams
    family = "visualization"
    output = "image"
    ranks = (2, 3)
    needs_layer = True
    cost = "medium"
    paper = "https://research.google/blog/inceptionism-going-deeper-into-neural-networks/"

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: DeepDreamParams
    ) -> torch.Tensor:
        lo, span = _range(inputs)
        image = inputs.detach().clone()
        with torch.no_grad():
            act = layer_output(model, params.layer, image, method=self.name)
        check_filter(act, params.filter, params.layer, self.name)
        dims = tuple(range(1, inputs.ndim))
        for _ in range(params.steps):
            x = image.requires_grad_(True)
            with torch.enable_grad():
                act = layer_output(model, params.layer, x, method=self.name)
                (grad,) = torch.autograd.grad(_filter_mean(act, params.filter).sum(), x)
            with torch.no_grad():
                scale = grad.abs().mean(dims, keepdim=True).clamp(min=1e-12)
                image = torch.minimum(
                    torch.maximum(image + params.lr * span * grad / scale, lo), lo + span
                )
        return image.detach()


class InvertedRepresentationParams(MethodParams):
    """Reconstruct an input from a layer's representation (Mahendran & Vedaldi)."""

    layer: LayerPath = Field(
        "auto",
        description="The layer whose representation is inverted ('auto': the last spatial layer).",
    )
    steps: int = Field(100, ge=1, description="Optimisation steps (Adam).")
    lr: float = Field(0.05, gt=0.0, description="Adam learning rate, in units of the input range.")
    alpha: float = Field(6.0, ge=1.0, description="Exponent of the alpha-norm prior.")
    alpha_weight: float = Field(
        1e-5, ge=0.0, description="Weight of the alpha-norm prior on the centred image."
    )
    tv_beta: float = Field(2.0, ge=1.0, description="Exponent of the total-variation prior.")
    tv_weight: float = Field(1e-3, ge=0.0, description="Weight of the total-variation prior.")


class InvertedRepresentation(Explainer):
    """Inverted representation: an input whose layer representation matches the input's."""

    name = "cnnvis.inverted_representation"
    count_params = ("steps",)
    Params = InvertedRepresentationParams
    family = "visualization"
    output = "image"
    ranks = (2, 3)
    needs_layer = True
    cost = "high"
    paper = "https://arxiv.org/abs/1412.0035"
    deterministic = False

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: InvertedRepresentationParams,
    ) -> torch.Tensor:
        lo, span = _range(inputs)
        with torch.no_grad():
            reference = layer_output(model, params.layer, inputs, method=self.name).detach()
        norm = reference.pow(2).flatten(1).sum(1).clamp(min=1e-12)
        z0 = 0.45 + 0.1 * torch.rand(inputs.shape, device=inputs.device, dtype=inputs.dtype)

        def loss(z: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
            act = layer_output(model, params.layer, image, method=self.name)
            value = (act - reference).pow(2).flatten(1).sum(1) / norm
            centred = (2 * z - 1).abs()
            value = value + params.alpha_weight * centred.pow(params.alpha).flatten(1).sum(1)
            return value + params.tv_weight * total_variation(z, params.tv_beta)

        return optimise_image(z0, lo, span, loss, steps=params.steps, lr=params.lr)


VISUALIZATION_METHODS: list[type[Explainer]] = [
    LayerActivationGuidedBackprop,
    LayerVisualization,
    DeepDream,
    InvertedRepresentation,
]

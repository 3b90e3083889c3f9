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

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from esegeta_cnnvis.filters import check_filter, filter_mean
from esegeta_cnnvis.gradients import GradientMethod
from esegeta_cnnvis.input_gradients import grad_leaf
from esegeta_cnnvis.params import (
    DeepDreamParams,
    InvertedRepresentationParams,
    LayerFilterGradientParams,
    LayerVisualizationParams,
)
from esegeta_cnnvis.relu_rules import ActivationRuleMethod, relu_rule
from esegeta_cnnvis.smoothing import BaseFn
from esegeta_core import Explainer, MethodParams, resolve_layer
from esegeta_core.baselines import gaussian_blur
from esegeta_core.toolkit import layer_output

# -- layer activation with guided backprop -----------------------------------------------


class LayerActivationGuidedBackprop(
    ActivationRuleMethod, GradientMethod[LayerFilterGradientParams]
):
    """Layer activation with guided backprop: the input gradient of a filter's activation
    under guided ReLUs."""

    name = "cnnvis.layer_activation_guided_backprop"
    family = "layer"
    needs_layer = True
    count_params = ()
    paper = "https://arxiv.org/abs/1412.6806"

    def base(self, params: LayerFilterGradientParams) -> BaseFn:
        def base(model: nn.Module, x: torch.Tensor, _: torch.Tensor, cg: bool) -> torch.Tensor:
            xg = grad_leaf(x, cg)
            with torch.enable_grad(), relu_rule(model, "guided", x, self.name):
                layer = resolve_layer(model, params.layer, method=self.name)
                act = layer_output(model, layer, xg, method=self.name, path=params.layer)
                check_filter(act, params.filter, params.layer, self.name)
                (grad,) = torch.autograd.grad(act[:, params.filter].sum(), xg, create_graph=cg)
            return grad

        return base


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


def _grey_noise(inputs: torch.Tensor) -> torch.Tensor:
    """Grey noise in the middle of the input range (in units of it), as in the original
    scripts: the starting point of the images optimised from noise."""
    return 0.45 + 0.1 * torch.rand(inputs.shape, device=inputs.device, dtype=inputs.dtype)


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(z, image) -> (B,)`` per-item loss to minimise."""

Activation = Callable[[torch.Tensor], torch.Tensor]
"""An input batch -> one layer's output for it (differentiable)."""


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


V = TypeVar("V", bound=MethodParams)
"""A layer visualization's parameter model."""


class LayerImageMethod(Explainer[V]):
    """Base of the visualizations that make an image for a layer (``steps`` passes)."""

    family = "visualization"
    output = "image"
    ranks = (2, 3)
    needs_layer = True
    count_params = ("steps",)

    def activation(self, model: nn.Module, path: str) -> Activation:
        """The output of layer ``path`` as a function of the input; the rest of the
        forward pass is skipped."""
        layer = resolve_layer(model, path, method=self.name)
        return lambda x: layer_output(model, layer, x, method=self.name, path=path)


class LayerVisualization(LayerImageMethod[LayerVisualizationParams]):
    """Layer visualization: an image that maximises one filter's activation, from noise."""

    name = "cnnvis.layer_visualization"
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
        z0 = _grey_noise(inputs)
        activation = self.activation(model, params.layer)
        with torch.no_grad():
            check_filter(activation(lo + span * z0), params.filter, params.layer, self.name)

        def loss(z: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
            value = -filter_mean(activation(image), params.filter)
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


class DeepDream(LayerImageMethod[DeepDreamParams]):
    """DeepDream: the input changed by gradient ascent to amplify what a layer sees."""

    name = "cnnvis.deep_dream"
    cost = "medium"
    paper = "https://research.google/blog/inceptionism-going-deeper-into-neural-networks/"

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: DeepDreamParams
    ) -> torch.Tensor:
        lo, span = _range(inputs)
        image = inputs.detach().clone()
        activation = self.activation(model, params.layer)
        with torch.no_grad():
            check_filter(activation(image), params.filter, params.layer, self.name)
        dims = tuple(range(1, inputs.ndim))
        for _ in range(params.steps):
            x = image.requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(filter_mean(activation(x), params.filter).sum(), x)
            with torch.no_grad():
                scale = grad.abs().mean(dims, keepdim=True).clamp(min=1e-12)
                image = torch.minimum(
                    torch.maximum(image + params.lr * span * grad / scale, lo), lo + span
                )
        return image.detach()


class InvertedRepresentation(LayerImageMethod[InvertedRepresentationParams]):
    """Inverted representation: an input whose layer representation matches the input's."""

    name = "cnnvis.inverted_representation"
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
        activation = self.activation(model, params.layer)
        with torch.no_grad():
            reference = activation(inputs).detach()
        norm = reference.pow(2).flatten(1).sum(1).clamp(min=1e-12)
        z0 = _grey_noise(inputs)

        def loss(z: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
            value = (activation(image) - reference).pow(2).flatten(1).sum(1) / norm
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

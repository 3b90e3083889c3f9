"""TorchRay's backpropagation methods: the gradient with modified backward rules (ReLU
rules for deconvnet and guided backprop, excitation rules for linear layers), read at
the input or at a layer and turned into a one-channel map by TorchRay's ``saliency()``.

Targets go to TorchRay as one class per item, which its ``get_backward_gradient``
supports, so a batch is one forward/backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from esegeta_core.preparation import tapped
from esegeta_core.toolkit import Call
from esegeta_torchray.base import ReluRuleMethod, TorchRayMethod
from esegeta_torchray.params import ContrastiveParams, LayerSaliencyParams, SaliencyParams


class Gradient(TorchRayMethod[SaliencyParams]):
    """Gradient saliency: the largest |d score / d input| over channels (TorchRay)."""

    name = "torchray.gradient"
    function = "gradient:gradient"
    paper = "https://arxiv.org/abs/1312.6034"


class Deconvnet(ReluRuleMethod[SaliencyParams]):
    """DeConvNet: backprop passing only positive gradients through ReLUs (TorchRay)."""

    name = "torchray.deconvnet"
    alternative = "captum.deconvolution"
    function = "deconvnet:deconvnet"
    paper = "https://arxiv.org/abs/1311.2901"


class GuidedBackprop(ReluRuleMethod[SaliencyParams]):
    """Guided backprop: ReLU backward masked by positive inputs and gradients (TorchRay)."""

    name = "torchray.guided_backprop"
    function = "guided_backprop:guided_backprop"
    paper = "https://arxiv.org/abs/1412.6806"


class GradCam(TorchRayMethod[LayerSaliencyParams]):
    """Grad-CAM: layer activations weighted by their spatially averaged gradient (TorchRay).

    2D only: TorchRay averages the gradient over dims (2, 3), which on a 3D layer would
    leave the last spatial axis unpooled and silently compute something else.
    """

    name = "torchray.grad_cam"
    function = "grad_cam:grad_cam"
    family = "cam"
    ranks = (2,)
    needs_layer = True
    paper = "https://arxiv.org/abs/1610.02391"


class LinearApprox(TorchRayMethod[SaliencyParams]):
    """Linear approximation: sum over channels of activation x gradient (TorchRay)."""

    name = "torchray.linear_approx"
    function = "linear_approx:linear_approx"
    paper = "https://arxiv.org/abs/1605.01713"


class ExcitationBackprop(ReluRuleMethod[SaliencyParams]):
    """Excitation backprop: top-down winning probabilities through positive weights
    (TorchRay)."""

    name = "torchray.excitation_backprop"
    alternative = "zennit.lrp"
    function = "excitation_backprop:excitation_backprop"
    paper = "https://arxiv.org/abs/1608.00507"


class ContrastiveExcitationBackprop(ReluRuleMethod[ContrastiveParams]):
    """Contrastive excitation backprop: the target's excitation minus that of the other
    classes, at a layer (TorchRay)."""

    name = "torchray.contrastive_excitation_backprop"
    alternative = "zennit.lrp"
    function = "excitation_backprop:contrastive_excitation_backprop"
    needs_layer = True
    paper = "https://arxiv.org/abs/1608.00507"

    def run(self, fn: Callable[..., Any], call: Call, params: ContrastiveParams) -> torch.Tensor:
        kwargs = params.torchray_kwargs(call)
        # TorchRay probes the contrast layer's output; the core taps the layers named in
        # the parameters, the default contrast layer is found here: tap it too, so an
        # in-place operation after it (DenseNet's F.relu) cannot reach TorchRay's probe
        with tapped(call.model, [kwargs["contrast_layer"]]):
            return fn(call.model, call.inputs, call.target, **kwargs)


BACKPROP: list[type[TorchRayMethod]] = [
    Gradient,
    Deconvnet,
    GuidedBackprop,
    GradCam,
    LinearApprox,
    ExcitationBackprop,
    ContrastiveExcitationBackprop,
]

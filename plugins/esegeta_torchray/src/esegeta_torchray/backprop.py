"""TorchRay's backpropagation methods: the gradient with modified backward rules (ReLU
rules for deconvnet and guided backprop, excitation rules for linear layers), read at
the input or at a layer and turned into a one-channel map by TorchRay's ``saliency()``.

Targets go to TorchRay as one class per item, which its ``get_backward_gradient``
supports, so a batch is one forward/backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from esegeta_core import InvalidParamsError, LayerPath
from esegeta_torchray.base import TorchRayMethod
from esegeta_torchray.common import (
    Call,
    LayerSaliencyParams,
    ResizeParams,
    SaliencyLayerParams,
    SaliencyParams,
)


class Gradient(TorchRayMethod):
    """Gradient saliency: the largest |d score / d input| over channels (TorchRay)."""

    name = "torchray.gradient"
    Params = SaliencyParams
    function = "gradient:gradient"
    paper = "https://arxiv.org/abs/1312.6034"


class Deconvnet(TorchRayMethod):
    """DeConvNet: backprop passing only positive gradients through ReLUs (TorchRay)."""

    name = "torchray.deconvnet"
    Params = SaliencyParams
    function = "deconvnet:deconvnet"
    paper = "https://arxiv.org/abs/1311.2901"


class GuidedBackprop(TorchRayMethod):
    """Guided backprop: ReLU backward masked by positive inputs and gradients (TorchRay)."""

    name = "torchray.guided_backprop"
    Params = SaliencyParams
    function = "guided_backprop:guided_backprop"
    paper = "https://arxiv.org/abs/1412.6806"


class GradCam(TorchRayMethod):
    """Grad-CAM: layer activations weighted by their spatially averaged gradient (TorchRay).

    2D only: TorchRay averages the gradient over dims (2, 3), which on a 3D layer would
    leave the last spatial axis unpooled and silently compute something else.
    """

    name = "torchray.grad_cam"
    Params = LayerSaliencyParams
    function = "grad_cam:grad_cam"
    family = "cam"
    ranks = (2,)
    needs_layer = True
    paper = "https://arxiv.org/abs/1610.02391"


class LinearApprox(TorchRayMethod):
    """Linear approximation: sum over channels of activation x gradient (TorchRay)."""

    name = "torchray.linear_approx"
    Params = SaliencyParams
    function = "linear_approx:linear_approx"
    paper = "https://arxiv.org/abs/1605.01713"


class ExcitationBackprop(TorchRayMethod):
    """Excitation backprop: top-down winning probabilities through positive weights
    (TorchRay)."""

    name = "torchray.excitation_backprop"
    Params = SaliencyParams
    function = "excitation_backprop:excitation_backprop"
    paper = "https://arxiv.org/abs/1608.00507"


class ContrastiveParams(SaliencyLayerParams, ResizeParams):
    """TorchRay's ``contrastive_excitation_backprop`` arguments."""

    contrast_layer: LayerPath = Field(
        description="Layer where the excitation of the negated classifier (all other "
        "classes) is subtracted; it must run after saliency_layer and before the classifier."
    )
    classifier_layer: LayerPath | None = Field(
        None,
        description="Final classifier layer whose weights are negated for the contrast "
        "pass; None = the last Conv/Linear layer of the model (TorchRay's choice).",
    )

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        kwargs["contrast_layer"] = call.layer(self.contrast_layer)
        if self.classifier_layer is not None:
            classifier = call.layer(self.classifier_layer)
            if not isinstance(getattr(classifier, "weight", None), torch.Tensor):
                raise InvalidParamsError(
                    f"Method {call.method!r}: classifier_layer {self.classifier_layer!r} "
                    f"({type(classifier).__name__}) has no weight to negate for the contrast "
                    "pass; name the final Linear/Conv layer."
                )
            kwargs["classifier_layer"] = classifier
        return kwargs


class ContrastiveExcitationBackprop(TorchRayMethod):
    """Contrastive excitation backprop: the target's excitation minus that of the other
    classes, at a layer (TorchRay)."""

    name = "torchray.contrastive_excitation_backprop"
    Params = ContrastiveParams
    function = "excitation_backprop:contrastive_excitation_backprop"
    needs_layer = True
    paper = "https://arxiv.org/abs/1608.00507"


BACKPROP: list[type[TorchRayMethod]] = [
    Gradient,
    Deconvnet,
    GuidedBackprop,
    GradCam,
    LinearApprox,
    ExcitationBackprop,
    ContrastiveExcitationBackprop,
]

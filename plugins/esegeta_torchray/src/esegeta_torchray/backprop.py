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

from esegeta_core import InvalidParamsError, ModulePath, unwrap
from esegeta_core.preparation import tapped
from esegeta_torchray.base import ReluRuleMethod, TorchRayMethod
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


class Deconvnet(ReluRuleMethod):
    """DeConvNet: backprop passing only positive gradients through ReLUs (TorchRay)."""

    name = "torchray.deconvnet"
    Params = SaliencyParams
    alternative = "captum.deconvolution"
    function = "deconvnet:deconvnet"
    paper = "https://arxiv.org/abs/1311.2901"


class GuidedBackprop(ReluRuleMethod):
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


class ExcitationBackprop(ReluRuleMethod):
    """Excitation backprop: top-down winning probabilities through positive weights
    (TorchRay)."""

    name = "torchray.excitation_backprop"
    Params = SaliencyParams
    alternative = "zennit.lrp"
    function = "excitation_backprop:excitation_backprop"
    paper = "https://arxiv.org/abs/1608.00507"


class ContrastiveParams(SaliencyLayerParams, ResizeParams):
    """TorchRay's ``contrastive_excitation_backprop`` arguments."""

    contrast_layer: ModulePath | None = Field(
        None,
        description="Layer where the excitation of the negated classifier (all other "
        "classes) is subtracted; it must run after layer and before the classifier. None: "
        "the module that runs just before the classifier layer (TorchRay's examples use "
        "the penultimate fully connected layer's output).",
    )
    classifier_layer: ModulePath | None = Field(
        None,
        description="Final classifier layer whose weights are negated for the contrast "
        "pass; None = the last Conv/Linear layer that runs on the path to the scores "
        "(TorchRay's own choice, the last one declared, can be an auxiliary head).",
    )

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        classifier = None
        if self.classifier_layer is not None:
            classifier = call.layer(self.classifier_layer)
            if not isinstance(getattr(classifier, "weight", None), torch.Tensor):
                raise InvalidParamsError(
                    f"Method {call.method!r}: classifier_layer {self.classifier_layer!r} "
                    f"({type(classifier).__name__}) has no weight to negate for the contrast "
                    "pass; name the final Linear/Conv layer."
                )
            kwargs["classifier_layer"] = classifier
        if self.contrast_layer is not None and classifier is not None:
            kwargs["contrast_layer"] = call.layer(self.contrast_layer)
            return kwargs
        found, contrast = _default_layers(call, classifier)
        kwargs["classifier_layer"] = found
        kwargs["contrast_layer"] = (
            call.layer(self.contrast_layer) if self.contrast_layer is not None else contrast
        )
        return kwargs


def _default_layers(
    call: Call, classifier: torch.nn.Module | None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The classifier layer (given, or the last Conv/Linear that runs on the path to the
    scores: TorchRay's own default, the last one declared, can be an auxiliary head) and
    the contrast layer (the module whose forward ends last before the classifier's
    starts), from one probe pass."""
    model = unwrap(call.model)
    weighted = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    finished: list[torch.nn.Module] = []
    started: dict[int, int] = {}
    outputs: list[tuple[torch.nn.Module, torch.Tensor]] = []

    def pre(module: torch.nn.Module, args: Any) -> None:
        started.setdefault(id(module), len(finished))

    def post(module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            finished.append(module)
            if isinstance(module, weighted) and output.requires_grad:
                outputs.append((module, output))

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.enable_grad():
            scores = call.model(call.inputs[:1].detach().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    if classifier is None:
        grads = torch.autograd.grad(
            scores.sum(), [o for _, o in outputs], allow_unused=True
        ) if outputs else []  # fmt: skip
        on_path = [m for (m, _), g in zip(outputs, grads) if g is not None]
        if not on_path:
            raise InvalidParamsError(
                f"Method {call.method!r}: no Conv/Linear layer on the path to the scores; "
                "pass classifier_layer=..."
            )
        classifier = on_path[-1]
    inside = {id(m) for m in model.modules() if any(c is classifier for c in m.modules())}
    before = [m for m in finished[: started.get(id(classifier), 0)] if id(m) not in inside]
    if not before:
        raise InvalidParamsError(
            f"Method {call.method!r}: no module runs before the classifier layer; pass "
            "contrast_layer=..."
        )
    return classifier, before[-1]


class ContrastiveExcitationBackprop(ReluRuleMethod):
    """Contrastive excitation backprop: the target's excitation minus that of the other
    classes, at a layer (TorchRay)."""

    def run(self, fn: Any, call: Call, params: Any) -> Any:
        kwargs = params.torchray_kwargs(call)
        # TorchRay probes the contrast layer's output; the core taps the layers named in
        # the parameters, the default contrast layer is found here: tap it too, so an
        # in-place operation after it (DenseNet's F.relu) cannot reach TorchRay's probe
        with tapped(call.model, [kwargs["contrast_layer"]]):
            return fn(call.model, call.inputs, call.target, **kwargs)

    name = "torchray.contrastive_excitation_backprop"
    Params = ContrastiveParams
    alternative = "zennit.lrp"
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

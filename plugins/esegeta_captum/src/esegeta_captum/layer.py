"""Captum's layer attribution methods: attributions at an internal layer's resolution.

``explain(...).saliency()`` up-samples them to the input; ``attributions`` keeps the
layer's shape (channels included, except for Grad-CAM with ``attr_dim_summation``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field

from esegeta_captum.base import CaptumMethod, single_tensor
from esegeta_captum.common import (
    BaselineParams,
    BatchParams,
    Call,
    CaptumParams,
    DistributionParams,
    GradientSamplingParams,
    LayerParams,
    MultiplyParams,
    NoiseTunnelParams,
    PathParams,
    ShapDistributionParams,
    Tensor,
    layer_shape,
)
from esegeta_captum.lrp_rules import nd_rules


class LayerMethod(CaptumMethod):
    """Base of the layer methods."""

    family = "layer"
    output = "layer"
    needs_layer = True


class LayerConductance(LayerMethod):
    """Layer conductance: Integrated Gradients flowing through each unit of a layer.

    Dhamdhere et al. 2018 (the original tool fixed n_steps to 1; here it is a parameter).
    """

    class Params(LayerParams, BaselineParams, PathParams, NoiseTunnelParams):
        pass

    name = "captum.layer_conductance"
    captum_class = "LayerConductance"
    cost = "medium"
    paper = "https://arxiv.org/abs/1805.12233"


class InternalInfluence(LayerMethod):
    """Internal influence: gradients at a layer integrated along the input path.

    Leino et al. 2018.
    """

    class Params(LayerParams, BaselineParams, PathParams, NoiseTunnelParams):
        pass

    name = "captum.internal_influence"
    captum_class = "InternalInfluence"
    cost = "medium"
    paper = "https://arxiv.org/abs/1802.03788"


class LayerGradientXActivation(LayerMethod):
    """Layer activation times the gradient of the class score at that layer.

    Shrikumar et al. 2016 applied to a layer.
    """

    class Params(LayerParams, MultiplyParams, NoiseTunnelParams):
        pass

    name = "captum.layer_gradient_x_activation"
    captum_class = "LayerGradientXActivation"
    paper = "https://arxiv.org/abs/1605.01713"


class LayerActivation(LayerMethod):
    """The layer's activations themselves; independent of the target class.

    Erhan et al. 2009 (activation inspection).
    """

    class Params(LayerParams, NoiseTunnelParams):
        pass

    name = "captum.layer_activation"
    captum_class = "LayerActivation"
    uses_target = False
    paper = "https://www.researchgate.net/publication/265022827"


class LayerGradCam(LayerMethod):
    """Grad-CAM: the layer's activations weighted by spatially averaged gradients.

    Selvaraju et al. 2017.
    """

    class Params(LayerParams, NoiseTunnelParams):
        relu_attributions: bool = Field(
            False, description="Keep only positive evidence (ReLU of the map, as in the paper)."
        )
        attr_dim_summation: bool = Field(
            True, description="Sum over channels (one map); False keeps per-channel maps."
        )

        def call_kwargs(self, call: Call) -> dict[str, Any]:
            return {
                **super().call_kwargs(call),
                "relu_attributions": self.relu_attributions,
                "attr_dim_summation": self.attr_dim_summation,
            }

    name = "captum.layer_grad_cam"
    captum_class = "LayerGradCam"
    paper = "https://arxiv.org/abs/1610.02391"


class LayerDeepLift(LayerMethod):
    """DeepLIFT contributions of a layer's units relative to a baseline input.

    Shrikumar et al. 2017.
    """

    class Params(LayerParams, BaselineParams, MultiplyParams, NoiseTunnelParams):
        pass

    name = "captum.layer_deep_lift"
    captum_class = "LayerDeepLift"
    paper = "https://arxiv.org/abs/1704.02685"


class LayerDeepLiftShap(LayerMethod):
    """DeepLIFT at a layer averaged over a baseline distribution (at least two references).

    Lundberg and Lee 2017.
    """

    class Params(LayerParams, ShapDistributionParams, MultiplyParams, NoiseTunnelParams):
        pass

    name = "captum.layer_deep_lift_shap"
    captum_class = "LayerDeepLiftShap"
    cost = "medium"
    paper = "https://arxiv.org/abs/1705.07874"


class LayerGradientShap(LayerMethod):
    """GradientSHAP at a layer: expected layer gradients at random path points.

    Lundberg and Lee 2017.
    """

    class Params(
        LayerParams, DistributionParams, GradientSamplingParams, MultiplyParams, NoiseTunnelParams
    ):
        pass

    name = "captum.layer_gradient_shap"
    captum_class = "LayerGradientShap"
    cost = "medium"
    deterministic = False
    paper = "https://arxiv.org/abs/1705.07874"


class LayerIntegratedGradients(LayerMethod):
    """Integrated Gradients with respect to a layer's activations.

    Sundararajan et al. 2017.
    """

    class Params(LayerParams, BaselineParams, PathParams, MultiplyParams, NoiseTunnelParams):
        pass

    name = "captum.layer_integrated_gradients"
    captum_class = "LayerIntegratedGradients"
    cost = "medium"
    paper = "https://arxiv.org/abs/1703.01365"


class LayerFeatureAblation(LayerMethod):
    """Score change when groups of a layer's units are set to a constant.

    Ablation at a layer; by default whole channels are ablated.
    """

    class Params(LayerParams, BatchParams):
        layer_mask: Literal["channel", "unit"] | Tensor = Field(
            "channel",
            description="'channel' ablates each channel whole, 'unit' every unit alone (one "
            "pass per unit), or a tensor of group ids broadcastable to the layer's output.",
        )
        layer_baseline: float = Field(0.0, description="Value the ablated units are set to.")

        def call_kwargs(self, call: Call) -> dict[str, Any]:
            kwargs = super().call_kwargs(call)
            kwargs["layer_baselines"] = self.layer_baseline
            if isinstance(self.layer_mask, torch.Tensor):
                kwargs["layer_mask"] = self.layer_mask.to(call.inputs.device).long()
            elif self.layer_mask == "channel":
                module = self.init_kwargs(call)["layer"]
                shape = layer_shape(call, module, self.attribute_to_layer_input)
                ids = torch.arange(shape[0], device=call.inputs.device)
                kwargs["layer_mask"] = ids.view(1, shape[0], *([1] * (len(shape) - 1)))
            else:
                kwargs["layer_mask"] = None
            return kwargs

    def run(self, algorithm: Any, inputs: torch.Tensor, kwargs: dict[str, Any]) -> Any:
        # Captum (0.9) does not expand per-item targets when perturbations_per_eval > 1
        # ("Tensor target dimension ... is not valid"): run item by item in that case.
        target = kwargs["target"]
        if inputs.shape[0] == 1 or kwargs["perturbations_per_eval"] == 1:
            return algorithm.attribute(inputs, **kwargs)
        parts = [
            single_tensor(
                algorithm.attribute(inputs[i : i + 1], **{**kwargs, "target": target[i : i + 1]}),
                self.name,
            )
            for i in range(inputs.shape[0])
        ]
        return torch.cat(parts)

    name = "captum.layer_feature_ablation"
    captum_class = "LayerFeatureAblation"
    cost = "medium"
    paper = "https://arxiv.org/abs/1311.2901"


class LayerLRP(LayerMethod):
    """Layer-wise Relevance Propagation relevance at a layer, with epsilon rules.

    Bach et al. 2015; 1D/3D layers and Upsample get the epsilon rule for the call.
    """

    class Params(LayerParams, NoiseTunnelParams):
        pass

    name = "captum.layer_lrp"
    captum_class = "LayerLRP"
    paper = "https://doi.org/10.1371/journal.pone.0130140"

    @contextlib.contextmanager
    def prepared(self, call: Call, params: CaptumParams) -> Iterator[None]:
        with nd_rules(call.model):
            yield


LAYER: list[type[CaptumMethod]] = [
    LayerConductance,
    InternalInfluence,
    LayerGradientXActivation,
    LayerActivation,
    LayerGradCam,
    LayerDeepLift,
    LayerDeepLiftShap,
    LayerGradientShap,
    LayerIntegratedGradients,
    LayerFeatureAblation,
    LayerLRP,
]

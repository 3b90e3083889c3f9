"""One parameter model per layer method (:mod:`esegeta_captum.layer`): the layer plus
the method's pieces, or the primary method's model for a layer version of it."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from esegeta_captum.params.pieces import (
    BaselineParams,
    BatchParams,
    LayerParams,
    MultiplyParams,
    NoiseTunnelParams,
    PathParams,
)
from esegeta_captum.params.primary import (
    DeepLiftShapParams,
    GradientShapParams,
    IntegratedGradientsParams,
)
from esegeta_captum.shapes import layer_shape
from esegeta_core.toolkit import Call, TensorParam


class LayerConductanceParams(LayerParams, BaselineParams, PathParams, NoiseTunnelParams):
    pass


class InternalInfluenceParams(LayerParams, BaselineParams, PathParams, NoiseTunnelParams):
    pass


class LayerGradientXActivationParams(LayerParams, MultiplyParams, NoiseTunnelParams):
    pass


class LayerActivationParams(LayerParams, NoiseTunnelParams):
    pass


class LayerGradCamParams(LayerParams, NoiseTunnelParams):
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


class LayerDeepLiftParams(LayerParams, BaselineParams, MultiplyParams, NoiseTunnelParams):
    pass


class LayerDeepLiftShapParams(LayerParams, DeepLiftShapParams):
    pass


class LayerGradientShapParams(LayerParams, GradientShapParams):
    pass


class LayerIntegratedGradientsParams(LayerParams, IntegratedGradientsParams):
    pass


class LayerFeatureAblationParams(LayerParams, BatchParams):
    field_aliases: ClassVar[dict[str, str]] = {"layer_baselines": "layer_baseline"}

    layer_mask: Literal["channel", "unit"] | TensorParam = Field(
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
        elif self.layer_mask == "channel" and not self.attribute_to_layer_input:
            # the layer-replay path groups the channels of the output it records: no
            # probe pass for the layer's shape (see LayerFeatureAblation.run)
            kwargs["layer_mask"] = "channel"
        elif self.layer_mask == "channel":
            shape = layer_shape(call, self.module(call), self.attribute_to_layer_input)
            ids = torch.arange(shape[0], device=call.inputs.device)
            kwargs["layer_mask"] = ids.view(1, shape[0], *([1] * (len(shape) - 1)))
        else:
            kwargs["layer_mask"] = None
        return kwargs


class LayerLRPParams(LayerParams, NoiseTunnelParams):
    pass

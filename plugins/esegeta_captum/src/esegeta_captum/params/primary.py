"""One parameter model per primary method (:mod:`esegeta_captum.primary`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from esegeta_captum.masks import count_features
from esegeta_captum.params.pieces import (
    BaselineParams,
    BatchParams,
    DistributionParams,
    FeatureMaskParams,
    GradientSamplingParams,
    LayerParams,
    MultiplyParams,
    NoiseTunnelParams,
    PathParams,
    ShapDistributionParams,
)
from esegeta_captum.shapes import Size, window_tuple
from esegeta_core import InvalidParamsError
from esegeta_core.toolkit import Call, interpolation_mode


class SaliencyParams(NoiseTunnelParams):
    abs: bool = Field(True, description="Return absolute gradients (the original map).")

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        return {**super().call_kwargs(call), "abs": self.abs}


class IntegratedGradientsParams(BaselineParams, PathParams, MultiplyParams, NoiseTunnelParams):
    pass


class DeepLiftParams(BaselineParams, MultiplyParams, NoiseTunnelParams):
    eps: float = Field(
        1e-10, gt=0.0, description="Below this input-baseline difference, use gradients."
    )

    def init_kwargs(self, call: Call) -> dict[str, Any]:
        return {**super().init_kwargs(call), "eps": self.eps}


class DeepLiftShapParams(ShapDistributionParams, MultiplyParams, NoiseTunnelParams):
    pass


class GradientShapParams(
    DistributionParams, GradientSamplingParams, MultiplyParams, NoiseTunnelParams
):
    pass


class InputXGradientParams(NoiseTunnelParams):
    pass


class GuidedBackpropParams(NoiseTunnelParams):
    pass


class DeconvolutionParams(NoiseTunnelParams):
    pass


class LRPParams(NoiseTunnelParams):
    pass


class GuidedGradCamParams(LayerParams, NoiseTunnelParams):
    interpolate_mode: Literal["nearest", "area", "linear"] = Field(
        "nearest",
        description="How the layer's CAM is up-sampled: nearest, area or linear "
        "(bilinear in 2D, trilinear in 3D).",
    )

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        mode = self.interpolate_mode
        if mode == "linear":
            mode = interpolation_mode(call.rank)
        return {**super().call_kwargs(call), "interpolate_mode": mode}


class FeatureAblationParams(BaselineParams, FeatureMaskParams, BatchParams):
    pass


class FeaturePermutationParams(FeatureMaskParams, BatchParams):
    pass


class OcclusionParams(BaselineParams, BatchParams):
    field_aliases: ClassVar[dict[str, str]] = {"sliding_window_shapes": "window"}

    window: Size = Field(
        16,
        description="Window size: an int or one int per spatial dim (Captum's form with "
        "the channel extent first, such as (1, 15, 15), is also accepted).",
    )
    strides: Size = Field(
        8,
        description="Window step: an int or one int per spatial dim (or Captum's form "
        "with a channel step first).",
    )

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        return {
            **super().call_kwargs(call),
            "sliding_window_shapes": window_tuple(self.window, call, "window"),
            "strides": window_tuple(self.strides, call, "strides"),
        }


class ShapleyValueSamplingParams(BaselineParams, FeatureMaskParams, BatchParams):
    n_samples: int = Field(25, ge=1, description="Random feature permutations.")

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        return {**super().call_kwargs(call), "n_samples": self.n_samples}


MAX_EXACT_FEATURES = 12
"""Exact Shapley values score every coalition of the features once: 12 features already
cost 4,096 passes per item (Captum's walk over every ordering would take 12 x 12!)."""


class ShapleyValuesParams(BaselineParams, FeatureMaskParams, BatchParams):
    grid_cell: Size | None = Field(
        None,
        description="Grid cell size (int or one per spatial dim); None: a 2 x 2 grid over "
        "the last two spatial dimensions (4 features).",
    )
    n_segments: int = Field(4, ge=1, description="Approximate number of SLIC superpixels.")

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        features = count_features(kwargs["feature_mask"])
        if features > MAX_EXACT_FEATURES:
            raise InvalidParamsError(
                f"Method {call.method!r}: the feature mask has {features} features; exact "
                f"Shapley values evaluate every coalition of them (2^{features} = "
                f"{2**features:,} passes per item), so at most {MAX_EXACT_FEATURES} "
                "features are allowed. Use a bigger grid_cell, fewer n_segments, or "
                "captum.shapley_value_sampling."
            )
        return kwargs

    def mask(self, call: Call) -> torch.Tensor:
        if self.feature_mask == "grid" and self.grid_cell is None:
            spatial = call.inputs.shape[2:]
            cell = (*spatial[:-2], *(-(-n // 2) for n in spatial[-2:]))
            return self.model_copy(update={"grid_cell": cell}).mask(call)
        return super().mask(call)


class LimeParams(BaselineParams, FeatureMaskParams, BatchParams):
    n_samples: int = Field(200, ge=1, description="Random feature subsets per item.")
    alpha: float = Field(
        0.01,
        ge=0.0,
        description="Lasso regularisation of the surrogate (Captum's default); 0 fits it by "
        "least squares (scikit-learn's LinearRegression).",
    )

    def init_kwargs(self, call: Call) -> dict[str, Any]:
        from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression

        surrogate = SkLearnLasso(alpha=self.alpha) if self.alpha > 0 else SkLearnLinearRegression()
        return {**super().init_kwargs(call), "interpretable_model": surrogate}

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        return {**super().call_kwargs(call), "n_samples": self.n_samples}


class KernelShapParams(BaselineParams, FeatureMaskParams, BatchParams):
    n_samples: int = Field(200, ge=1, description="Random feature coalitions per item.")

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = {**super().call_kwargs(call), "n_samples": self.n_samples}
        if count_features(kwargs["feature_mask"]) < 2:
            raise InvalidParamsError(
                f"Method {call.method!r}: the feature mask has a single feature; the "
                "Shapley kernel needs at least two (use a smaller grid_cell or more "
                "n_segments)."
            )
        return kwargs

"""Every cnnvis method's parameter model, in one place.

- gradient methods: :class:`GradientParams` (post-processing, SmoothGrad / VarGrad,
  ``create_graph``), shared by every gradient method, and its subclasses for
  integrated gradients, the SmoothGrad / VarGrad aliases and the layer filter gradient;
- CAMs: :class:`LayersParams` (one or several layers) and its subclasses, plus the
  original CAM's and guided Grad-CAM's own models;
- layer visualizations: activation maximisation, DeepDream, inverted representation;
- RISE.

Fields several models share with the same meaning are declared once, as annotated
types (``relu: Relu = True``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, field_validator, model_validator

from esegeta_cnnvis.quadrature import Integration
from esegeta_core import LayerPath, MethodParams, ModulePath
from esegeta_core.toolkit import BaselineChoice

__all__ = [
    "AblationCamParams",
    "CamParams",
    "DeepDreamParams",
    "GradientCamParams",
    "GradientParams",
    "GuidedGradCamParams",
    "IntegratedGradientsParams",
    "InvertedRepresentationParams",
    "LayerFilterGradientParams",
    "LayerVisualizationParams",
    "LayersParams",
    "PostProcess",
    "RiseParams",
    "ScoreCamParams",
    "SmoothGradParams",
    "SmoothableName",
    "Smoothing",
    "VarGradParams",
]

# --- gradient methods -------------------------------------------------------------------

PostProcess = Literal["none", "abs", "square", "channel_norm", "channel_max"]
Smoothing = Literal["none", "smoothgrad", "smoothgrad_sq", "vargrad"]
SmoothableName = Literal["vanilla_backprop", "guided_backprop", "deconvnet", "gradient_x_input"]
"""The gradient methods the SmoothGrad / VarGrad aliases can smooth."""

_NOISE_FIELDS = ("noise_samples", "noise_level", "noise_batch_size")


class GradientParams(MethodParams):
    """Parameters shared by every gradient method: post-processing, smoothing over
    noisy inputs and differentiable output."""

    postprocess: PostProcess = Field(
        "none",
        description=(
            "Applied to each attribution (before smoothing): 'none', 'abs', 'square', "
            "'channel_norm' (L2 norm over channels, one channel out) or 'channel_max' "
            "(largest magnitude over channels, one channel out; Simonyan et al.)."
        ),
    )
    smoothing: Smoothing = Field(
        "none",
        description=(
            "Average over noisy copies of the input: 'smoothgrad' (mean), 'smoothgrad_sq' "
            "(mean of squares) or 'vargrad' (variance); 'none' for a single pass."
        ),
    )
    noise_samples: int = Field(
        16, ge=1, description="Number of noisy copies per item (with smoothing)."
    )
    noise_level: float = Field(
        0.15,
        ge=0.0,
        description=(
            "Noise standard deviation as a fraction of each item's input range "
            "(max - min), as in SmoothGrad (with smoothing)."
        ),
    )
    noise_batch_size: int = Field(
        16,
        ge=1,
        description="Noisy copies evaluated per pass; a pass holds batch x this many inputs.",
    )
    create_graph: bool = Field(
        False,
        description=(
            "Keep the returned attributions attached to the autograd graph, so a loss on "
            "them back-propagates into the model's parameters (attribution regularisation)."
        ),
    )

    @model_validator(mode="after")
    def _noise_needs_smoothing(self) -> GradientParams:
        self.only_with(
            _NOISE_FIELDS,
            self.smoothing != "none",
            "smoothing='smoothgrad', 'smoothgrad_sq' or 'vargrad'",
        )
        return self


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
        self.only_with(["baseline_sigma"], named, "baselines 'blurred' or 'gaussian'")
        return self


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


FilterIndex = Annotated[int, Field(ge=0, description="The channel (filter) index at that layer.")]
"""One channel of a layer's output."""


class LayerFilterGradientParams(GradientParams):
    """A layer and one of its filters, plus the gradient methods' options."""

    layer: LayerPath = Field(
        "auto", description="The layer whose filter is explained ('auto': the last spatial layer)."
    )
    filter: FilterIndex = 0


# --- CAMs -------------------------------------------------------------------------------

Relu = Annotated[
    bool, Field(description="Apply a ReLU to each map (keep what speaks for the target).")
]
Upsample = Annotated[
    bool,
    Field(
        description="Up-sample each map to the input's size (bilinear/trilinear, "
        "differentiable); False keeps the layer's resolution."
    ),
]
CamCreateGraph = Annotated[
    bool,
    Field(
        description="Keep the returned map on the autograd graph (gradients computed with "
        "create_graph=True, up-sampling included), so a loss on it can be back-propagated "
        "into the model's parameters."
    ),
]


class LayersParams(MethodParams):
    """Parameters of the CAMs that accept one or several layers."""

    layer: LayerPath | list[LayerPath] = Field(
        "auto",
        description="The layer to explain (usually the last convolutional block; 'auto' "
        "picks it, or a transformer's last block), or a list of layers: one map per layer, "
        "stacked in the channel dimension.",
    )
    relu: Relu = True
    upsample: Upsample = True

    @field_validator("layer")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one layer")
        return value


class GradientCamParams(LayersParams):
    """Parameters of the gradient CAMs."""

    create_graph: CamCreateGraph = False


class ScoreCamParams(LayersParams):
    """Parameters of Score-CAM."""

    batch_size: int = Field(
        32,
        ge=1,
        description="Masked inputs (item x channel) per forward pass. Left unset, on the "
        "CPU a pass holds at most 2^21 input elements (16 volumes of 48^3).",
    )
    weighting: Literal["auto", "softmax", "increase"] = Field(
        "auto",
        description=(
            "How the target scores of the masked inputs become channel weights: their "
            "softmax over the channels (pytorch-grad-cam's), or 'increase': each score's "
            "increase over the all-zero input's, as weights (the paper's channel-wise "
            "increase of confidence). 'auto': softmax for a classifier, increase for a "
            "segmentation model (its class scores sum logits over every pixel: their "
            "softmax over channels is one-hot, and the map one channel's activation)."
        ),
    )


class AblationCamParams(LayersParams):
    """Parameters of Ablation-CAM."""

    batch_size: int | None = Field(
        None,
        ge=1,
        description="Ablated copies (item x channel) per forward pass; None: 512 when only "
        "the layers after the explained one run per copy (the layers before it run once "
        "per item), 32 when the model needs whole passes.",
    )
    ablation_value: float = Field(
        0.0,
        description="The value an ablated channel is set to (0 in the paper). "
        "pytorch-grad-cam uses 0 only where the layer's minimum is 0 (after a ReLU), else "
        "that minimum minus 1e7, so its maps differ from these on layers with negative "
        "activations (ConvNeXt, transformers).",
    )


class CamParams(MethodParams):
    """Parameters of the original CAM."""

    layer: LayerPath = Field(
        "auto",
        description="The layer whose channels the classifier pools (the last convolutional "
        "block before global average pooling; 'auto' picks the last layer with a spatial "
        "output).",
    )
    fc_layer: ModulePath | None = Field(
        None,
        description="The nn.Linear (or 1x1 convolution) whose weights weigh the layer's "
        "channels; None: the last such module whose input size is the layer's channel "
        "count and whose output size is the number of classes.",
    )
    relu: Relu = True
    upsample: Upsample = True
    create_graph: CamCreateGraph = False


class GuidedGradCamParams(MethodParams):
    """Parameters of guided Grad-CAM."""

    layer: LayerPath = Field(
        "auto", description="The layer Grad-CAM explains ('auto': the last spatial layer)."
    )
    relu: bool = Field(True, description="Apply a ReLU to the Grad-CAM map before the product.")
    create_graph: CamCreateGraph = False


# --- layer visualizations ---------------------------------------------------------------

AdamSteps = Annotated[int, Field(ge=1, description="Optimisation steps (Adam).")]
AdamLr = Annotated[
    float, Field(gt=0.0, description="Adam learning rate, in units of the input range.")
]


class LayerVisualizationParams(MethodParams):
    """Activation maximisation of one filter from noise, with regularisation."""

    layer: LayerPath = Field(
        "auto",
        description="The layer whose filter is visualised ('auto': the last spatial layer).",
    )
    filter: FilterIndex = 0
    steps: AdamSteps = 30
    lr: AdamLr = 0.05
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


class InvertedRepresentationParams(MethodParams):
    """Reconstruct an input from a layer's representation (Mahendran & Vedaldi)."""

    layer: LayerPath = Field(
        "auto",
        description="The layer whose representation is inverted ('auto': the last spatial layer).",
    )
    steps: AdamSteps = 100
    lr: AdamLr = 0.05
    alpha: float = Field(6.0, ge=1.0, description="Exponent of the alpha-norm prior.")
    alpha_weight: float = Field(
        1e-5, ge=0.0, description="Weight of the alpha-norm prior on the centred image."
    )
    tv_beta: float = Field(2.0, ge=1.0, description="Exponent of the total-variation prior.")
    tv_weight: float = Field(1e-3, ge=0.0, description="Weight of the total-variation prior.")


# --- RISE -------------------------------------------------------------------------------

_MASK_FIELDS = ("num_masks", "cells", "mask_seed")


class RiseParams(MethodParams):
    """RISE: number of masks, grid cells, keep probability, masks per pass."""

    num_masks: int = Field(4000, ge=1, description="Number of random masks.")
    cells: int | tuple[int, ...] = Field(
        7,
        description=(
            "Cells per side of the low-resolution random grid: one int for every spatial "
            "dimension or one per dimension."
        ),
    )
    p: float = Field(
        0.5, gt=0.0, le=1.0, description="Probability that a grid cell is kept (not masked)."
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Masked inputs per forward pass (the masks drawn, and so the map, do "
        "not depend on it). Left unset, on the CPU a pass holds at most 2^21 input "
        "elements (16 volumes of 48^3).",
    )
    scores: Literal["auto", "softmax", "sigmoid", "raw"] = Field(
        "auto",
        description=(
            "How a masked input is scored: the softmax probability of the target (paper), "
            "the sigmoid of its logit (multi-label models; TorchRay's choice) or the raw "
            "score. 'auto': softmax for a classifier, raw for a segmentation model (its "
            "class scores sum logits over every pixel: squashed, they are 0 or 1 whatever "
            "the mask, and the map comes out empty)."
        ),
    )
    mask_seed: int | None = Field(
        None,
        description=(
            "Seed of the mask generator; None draws from torch's default generator "
            "(seeded by explain(seed=...))."
        ),
    )
    centred: bool = Field(
        True,
        description=(
            "Weight the masks by each score minus the item's mean score, then add the "
            "mean back: the same expected map as the paper's sum (False), without the "
            "noise of how often each pixel was kept, which the mean score multiplies "
            "(with raw segmentation sums that noise is the whole map: correlation 0.997-0.999 "
            "with the masks' coverage on a 2D U-Net)."
        ),
    )
    masks: torch.Tensor | None = Field(
        None,
        description=(
            "Precomputed masks shaped (N, 1, *spatial) or (N, *spatial), for "
            "reproducibility or comparison; replaces num_masks, cells and mask_seed."
        ),
    )

    @model_validator(mode="after")
    def _masks_replace_generation(self) -> RiseParams:
        clash = sorted(f for f in _MASK_FIELDS if f in self.model_fields_set)
        if self.masks is not None and clash:
            raise ValueError(f"{', '.join(clash)} cannot be combined with precomputed masks")
        return self

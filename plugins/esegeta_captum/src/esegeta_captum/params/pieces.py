"""The pieces the Captum methods' parameter models are assembled from.

Each piece is a :class:`CaptumParams` mixin that contributes keyword arguments to the
Captum constructor (:meth:`CaptumParams.init_kwargs`) and to ``attribute``
(:meth:`CaptumParams.call_kwargs`) by cooperative ``super()`` calls, so a method's
model is just the list of pieces it needs. Parameters that only matter together
with another choice (``grid_cell`` with ``feature_mask="grid"``, the ``nt_*`` fields
with a noise tunnel) are rejected when set without it: nothing is accepted and ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from esegeta_captum.masks import build_feature_mask
from esegeta_captum.references import baseline_distribution
from esegeta_captum.shapes import Size, full_neuron_index, layer_shape
from esegeta_core import InvalidParamsError, LayerPath, MethodParams
from esegeta_core.feature_masks import as_size
from esegeta_core.toolkit import BaselineChoice, Call, TensorParam, make_baseline

IntegrationMethod = Literal[
    "gausslegendre", "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid"
]


class CaptumParams(MethodParams):
    """Base of the Captum parameter pieces (contributes nothing itself)."""

    def init_kwargs(self, call: Call) -> dict[str, Any]:
        """Keyword arguments for the Captum class's constructor."""
        return {}

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        """Keyword arguments for the Captum object's ``attribute``."""
        return {}


# -- baselines -----------------------------------------------------------------------

_SIGMA_DOC = (
    "Blur width (baseline 'blurred') or noise scale (baseline 'gaussian'); 0 picks "
    "esegeta's default (1/16 of the smallest spatial size, 0.1 x the input's std)."
)


def _uses_sigma(choices: Iterable[object]) -> bool:
    return any(isinstance(c, str) and c in ("blurred", "gaussian") for c in choices)


class BaselineParams(CaptumParams):
    """One reference input (``baselines``) built by esegeta's ``make_baseline``."""

    baselines: BaselineChoice = Field(
        "zeros",
        description="Reference input: 'zeros', 'mean' (per item and channel), 'blurred', "
        "'uniform' (noise in the input's range), 'gaussian' (input plus noise), a number or "
        "a tensor broadcastable to the inputs.",
    )
    baseline_sigma: float = Field(0.0, ge=0.0, description=_SIGMA_DOC)

    @model_validator(mode="after")
    def _check_sigma(self) -> BaselineParams:
        self.only_with(
            ["baseline_sigma"], _uses_sigma([self.baselines]), "baselines='blurred' or 'gaussian'"
        )
        return self

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        kwargs["baselines"] = make_baseline(
            self.baselines, call.inputs, sigma=self.baseline_sigma, method=call.method
        )
        return kwargs


class DistributionParams(CaptumParams):
    """A set of references (``baselines``) for the SHAP-style methods."""

    baselines: list[BaselineChoice] = Field(
        default_factory=lambda: ["zeros", "blurred"],
        min_length=1,
        description="Reference distribution, a list of baselines ('zeros', 'mean', "
        "'blurred', 'uniform', 'gaussian', numbers, tensors). Item-independent choices add "
        "one reference, item-dependent ones (mean, blurred, noise, batched tensors) one per "
        "batch item; attributions average over all of them.",
    )
    baseline_sigma: float = Field(0.0, ge=0.0, description=_SIGMA_DOC)

    @model_validator(mode="after")
    def _check_sigma(self) -> DistributionParams:
        self.only_with(
            ["baseline_sigma"], _uses_sigma(self.baselines), "a 'blurred' or 'gaussian' baseline"
        )
        return self

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        refs = baseline_distribution(self.baselines, call.inputs, self.baseline_sigma, call.method)
        kwargs["baselines"] = refs
        return kwargs


class ShapDistributionParams(DistributionParams):
    """A reference distribution with at least two references (DeepLiftShap needs that)."""

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        if kwargs["baselines"].shape[0] < 2:
            raise InvalidParamsError(
                f"Method {call.method!r}: the baseline distribution has one reference only; "
                "give at least two, for example baselines=['zeros', 'blurred'] (with a single "
                "reference use the DeepLift method instead)."
            )
        return kwargs


# -- integration paths, sampling, batching -------------------------------------------


class PathParams(CaptumParams):
    """Path integral settings of Integrated Gradients-style methods."""

    field_aliases: ClassVar[dict[str, str]] = {"method": "integration_method"}

    n_steps: int = Field(50, ge=1, description="Number of integration steps along the path.")
    integration_method: IntegrationMethod = Field(
        "gausslegendre", description="Integration rule: gausslegendre or riemann_*."
    )
    internal_batch_size: int | None = Field(
        None, ge=1, description="Path points per forward/backward pass (None: all at once)."
    )

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        kwargs.update(
            n_steps=self.n_steps,
            method=self.integration_method,
            internal_batch_size=self.internal_batch_size,
        )
        return kwargs


class GradientSamplingParams(CaptumParams):
    """GradientShap's random points between the input and references."""

    n_samples: int = Field(20, ge=1, description="Random samples per input item.")
    stdevs: float = Field(
        0.0, ge=0.0, description="Standard deviation of Gaussian noise added to each sample."
    )

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        kwargs.update(n_samples=self.n_samples, stdevs=self.stdevs)
        return kwargs


class BatchParams(CaptumParams):
    """How many perturbed inputs run in one forward pass."""

    perturbations_per_eval: int = Field(
        32,
        ge=1,
        description="Perturbed copies of each item evaluated per forward pass (memory vs "
        "speed). Left unset, on the CPU a pass holds at most 32 inputs, shared among the "
        "items, and 2^21 input elements (16 volumes of 48^3, 8 RGB images of 224 px).",
    )

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        kwargs["perturbations_per_eval"] = self.perturbations_per_eval
        return kwargs


class MultiplyParams(CaptumParams):
    """Global (times inputs) or local attributions."""

    multiply_by_inputs: bool = Field(
        True,
        description="Multiply by (inputs - baselines): global attributions; False gives "
        "local ones (the plain gradient-like term).",
    )

    def init_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().init_kwargs(call)
        kwargs["multiply_by_inputs"] = self.multiply_by_inputs
        return kwargs


# -- noise tunnel ----------------------------------------------------------------------

_NT_FIELDS = ("nt_samples", "nt_stdevs", "nt_samples_batch_size")


class NoiseTunnelParams(CaptumParams):
    """Captum's NoiseTunnel around the method: SmoothGrad, SmoothGrad-squared, VarGrad.

    Smilkov et al. 2017, https://arxiv.org/abs/1706.03825; Adebayo et al. 2018,
    https://arxiv.org/abs/1810.03307.
    """

    field_aliases: ClassVar[dict[str, str]] = {"nt_type": "noise_tunnel", "stdevs": "nt_stdevs"}

    noise_tunnel: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] | None = Field(
        None, description="Average the method over noisy copies of the input (None: off)."
    )
    nt_samples: int = Field(10, ge=1, description="Noisy copies per input item.")
    nt_stdevs: float = Field(
        0.15, ge=0.0, description="Noise standard deviation, in input units (0.15 suits [0, 1])."
    )
    nt_samples_batch_size: int | None = Field(
        None, ge=1, description="Noisy copies per pass (None: all at once)."
    )

    @model_validator(mode="after")
    def _check_nt(self) -> NoiseTunnelParams:
        self.only_with(_NT_FIELDS, self.noise_tunnel is not None, "noise_tunnel set")
        return self

    def noise_tunnel_kwargs(self) -> dict[str, Any]:
        """The NoiseTunnel.attribute arguments (empty when the tunnel is off)."""
        if self.noise_tunnel is None:
            return {}
        return {
            "nt_type": self.noise_tunnel,
            "nt_samples": self.nt_samples,
            "stdevs": self.nt_stdevs,
            "nt_samples_batch_size": self.nt_samples_batch_size,
        }


# -- feature masks -----------------------------------------------------------------------

_GRID_FIELDS = ("grid_cell",)
_SLIC_FIELDS = ("n_segments", "compactness")


class FeatureMaskParams(CaptumParams):
    """Which pixels/voxels are perturbed together: grid cells, superpixels or a tensor."""

    feature_mask: Literal["grid", "superpixel"] | TensorParam = Field(
        "grid",
        description="'grid' (cells of grid_cell), 'superpixel' (SLIC, 2D and 3D) or a tensor "
        "of integer feature ids shaped like the spatial dimensions (optionally with batch and "
        "channel dimensions of size 1). Every channel of a pixel moves together.",
    )
    grid_cell: Size = Field(16, description="Grid cell size (int or one per spatial dim).")
    n_segments: int = Field(64, ge=1, description="Approximate number of SLIC superpixels.")
    compactness: float = Field(
        1.0,
        gt=0.0,
        description="SLIC compactness on inputs scaled to [0, 1] per item: higher gives more "
        "regular superpixels, lower follows intensity edges more closely.",
    )

    @model_validator(mode="after")
    def _check_mask_fields(self) -> FeatureMaskParams:
        kind = self.feature_mask if isinstance(self.feature_mask, str) else "tensor"
        self.only_with(_GRID_FIELDS, kind == "grid", "feature_mask='grid'")
        self.only_with(_SLIC_FIELDS, kind == "superpixel", "feature_mask='superpixel'")
        return self

    def feature_count(self, shape: tuple[int, ...], method: str) -> tuple[int, str, str]:
        """About how many features the mask has for inputs of ``shape``, without building
        it (superpixels: ``n_segments``), with the parameter that sets it and how to
        ask for fewer."""
        if isinstance(self.feature_mask, torch.Tensor):
            count = int(torch.unique(self.feature_mask).numel())
            return count, "feature_mask", "give fewer feature ids in feature_mask"
        if self.feature_mask == "superpixel":
            return self.n_segments, "n_segments", "lower n_segments"
        spatial = shape[2:]
        cells = as_size(self.grid_cell, len(spatial), "grid_cell", method)
        count = math.prod(-(-n // c) for n, c in zip(spatial, cells, strict=True))
        return count, "grid_cell", "use a larger grid_cell (fewer features)"

    def mask(self, call: Call) -> torch.Tensor:
        """The ``(B, 1, *spatial)`` feature ids."""
        return build_feature_mask(
            self.feature_mask,
            call.inputs,
            cell=self.grid_cell,
            n_segments=self.n_segments,
            compactness=self.compactness,
            method=call.method,
        )

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        kwargs["feature_mask"] = self.mask(call)
        return kwargs


# -- layers and neurons --------------------------------------------------------------


class LayerChoiceParams(CaptumParams):
    """A layer of the model, handed to the Captum constructor (layer and neuron
    methods)."""

    layer: LayerPath = Field(
        "auto",
        description="Dotted path of the layer, such as 'layer4.1.conv2'; 'auto' picks the "
        "last layer with a spatial output (or a transformer's last block).",
    )

    def module(self, call: Call) -> nn.Module:
        """The layer's module in the call's model."""
        return call.layer(self.layer)

    def init_kwargs(self, call: Call) -> dict[str, Any]:
        return {**super().init_kwargs(call), "layer": self.module(call)}


class LayerParams(LayerChoiceParams):
    """The internal layer a layer method explains."""

    attribute_to_layer_input: bool = Field(
        False, description="Attribute to the layer's input instead of its output."
    )

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        kwargs["attribute_to_layer_input"] = self.attribute_to_layer_input
        return kwargs


class NeuronParams(LayerChoiceParams):
    """The neuron a neuron method explains: a layer and an index into its output."""

    layer: LayerPath = Field(
        "auto",
        description="Dotted path of the layer that holds the neuron ('auto': the last layer "
        "with a spatial output, or a transformer's last block).",
    )
    neuron_selector: tuple[int, ...] = Field(
        min_length=1,
        description="Index of the neuron in the layer's output without the batch dimension, "
        "e.g. (channel, h, w). Fewer entries leave the trailing dimensions at their centre: "
        "(c,) is channel c at the spatial centre, in 2D and 3D.",
    )
    attribute_to_neuron_input: bool = Field(
        False, description="Attribute to the neuron's value in the layer's input instead."
    )

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        shape = layer_shape(call, self.module(call), self.attribute_to_neuron_input)
        kwargs["neuron_selector"] = full_neuron_index(self.neuron_selector, shape, call.method)
        kwargs["attribute_to_neuron_input"] = self.attribute_to_neuron_input
        return kwargs

"""Parameter pieces shared by the Captum methods, and the helpers that turn them into
Captum arguments.

Each piece is a :class:`CaptumParams` mixin that contributes keyword arguments to the
Captum constructor (:meth:`CaptumParams.init_kwargs`) and to ``attribute``
(:meth:`CaptumParams.call_kwargs`) by cooperative ``super()`` calls, so a method's
``Params`` is just the list of pieces it needs. Parameters that only matter together
with another choice (``grid_cell`` with ``feature_mask="grid"``, the ``nt_*`` fields
with a noise tunnel) are rejected when set without it: nothing is accepted and ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, WithJsonSchema, model_validator

from esegeta_captum.masks import build_feature_mask
from esegeta_core import InvalidParamsError, LayerPath, MethodParams, resolve_layer
from esegeta_core.baselines import make_baseline
from esegeta_core.feature_masks import as_size

Tensor = Annotated[torch.Tensor, WithJsonSchema({"type": "object", "title": "torch.Tensor"})]
"""A tensor parameter; the JSON Schema shows it as an opaque object."""

BaselineChoice = Literal["zeros", "mean", "blurred", "uniform", "gaussian"] | float | Tensor
"""A named baseline (see :func:`esegeta_core.baselines.make_baseline`), a constant or a
tensor broadcastable to the inputs."""

Size = int | tuple[int, ...]
"""A spatial size: one int for every spatial dimension, or one int per dimension."""

IntegrationMethod = Literal[
    "gausslegendre", "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid"
]


@dataclass(frozen=True)
class Call:
    """What one ``attribute`` call works on: the scoring model, inputs and targets."""

    model: torch.nn.Module
    inputs: torch.Tensor
    target: torch.Tensor
    method: str

    @property
    def rank(self) -> int:
        return self.inputs.ndim - 2


class CaptumParams(MethodParams):
    """Base of the Captum parameter pieces (contributes nothing itself)."""

    def init_kwargs(self, call: Call) -> dict[str, Any]:
        """Keyword arguments for the Captum class's constructor."""
        return {}

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        """Keyword arguments for the Captum object's ``attribute``."""
        return {}

    def _only_with(self, fields: Iterable[str], enabled: bool, needs: str) -> None:
        unused = sorted(f for f in fields if f in self.model_fields_set)
        if unused and not enabled:
            raise ValueError(
                f"{', '.join(unused)} only apply{'' if len(unused) > 1 else 's'} "
                f"with {needs}; remove {'them' if len(unused) > 1 else 'it'}"
            )


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
        self._only_with(
            ["baseline_sigma"], _uses_sigma([self.baselines]), "baselines='blurred' or 'gaussian'"
        )
        return self

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        kwargs["baselines"] = make_baseline(
            self.baselines, call.inputs, sigma=self.baseline_sigma, method=call.method
        )
        return kwargs


def _item_independent(choice: BaselineChoice, ndim: int) -> bool:
    """Whether a baseline choice gives one reference for the whole batch."""
    return (
        (isinstance(choice, str) and choice == "zeros")
        or isinstance(choice, (int, float))
        or (isinstance(choice, torch.Tensor) and (choice.ndim < ndim or choice.shape[0] == 1))
    )


def baseline_distribution(
    choices: Iterable[BaselineChoice], inputs: torch.Tensor, sigma: float, method: str
) -> torch.Tensor:
    """The references of every choice stacked along the batch dimension.

    Item-independent choices (zeros, a number, a tensor without a batch dimension) add
    one reference; item-dependent ones (mean, blurred, uniform, gaussian, a tensor with
    a batch dimension) add one reference per batch item. Captum's SHAP methods average
    over the whole set for every item.
    """
    parts = []
    for choice in choices:
        full = make_baseline(choice, inputs, sigma=sigma, method=method)
        parts.append(full[:1] if _item_independent(choice, inputs.ndim) else full)
    return torch.cat(parts)


def reference_count(choices: Iterable[BaselineChoice], shape: tuple[int, ...]) -> int:
    """How many references :func:`baseline_distribution` stacks for inputs of
    ``shape``, without building them."""
    return sum(1 if _item_independent(c, len(shape)) else shape[0] for c in choices)


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
        self._only_with(
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
        32, ge=1, description="Perturbed copies evaluated per forward pass (memory vs speed)."
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
        self._only_with(_NT_FIELDS, self.noise_tunnel is not None, "noise_tunnel set")
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

    feature_mask: Literal["grid", "superpixel"] | Tensor = Field(
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
        self._only_with(_GRID_FIELDS, kind == "grid", "feature_mask='grid'")
        self._only_with(_SLIC_FIELDS, kind == "superpixel", "feature_mask='superpixel'")
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


class LayerParams(CaptumParams):
    """The internal layer a layer method explains."""

    layer: LayerPath = Field(
        "auto",
        description="Dotted path of the layer, such as 'layer4.1.conv2'; 'auto' picks the "
        "last layer with a spatial output (or a transformer's last block).",
    )
    attribute_to_layer_input: bool = Field(
        False, description="Attribute to the layer's input instead of its output."
    )

    def init_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().init_kwargs(call)
        kwargs["layer"] = resolve_layer(call.model, self.layer, method=call.method)
        return kwargs

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        kwargs["attribute_to_layer_input"] = self.attribute_to_layer_input
        return kwargs


def layer_shape(call: Call, module: torch.nn.Module, use_input: bool) -> tuple[int, ...]:
    """The shape (without batch) of ``module``'s output (or first input) on ``call``."""
    seen: list[torch.Size] = []

    def hook(_m: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        value = args[0] if use_input else out
        if isinstance(value, (tuple, list)):
            value = value[0]
        seen.append(value.shape)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            call.model(call.inputs[:1])
    finally:
        handle.remove()
    if not seen:
        raise InvalidParamsError(
            f"Method {call.method!r}: the layer is not used in the model's forward pass."
        )
    return tuple(seen[0][1:])


def full_neuron_index(
    selector: tuple[int, ...], shape: tuple[int, ...], method: str
) -> tuple[int, ...]:
    """Complete ``selector`` to an index into ``shape`` (no batch): missing trailing
    dimensions take their centre, so ``(c,)`` is channel ``c`` at the spatial centre in
    2D and 3D alike. Negative entries count from the end."""
    if len(selector) > len(shape):
        raise InvalidParamsError(
            f"Method {method!r}: neuron_selector {selector} has {len(selector)} entries but the "
            f"layer's output (without batch) is shaped {shape}."
        )
    for i, (index, size) in enumerate(zip(selector, shape, strict=False)):
        if not -size <= index < size:
            raise InvalidParamsError(
                f"Method {method!r}: neuron_selector {selector}: index {index} is out of range "
                f"for dimension {i} of size {size} (layer output shaped {shape})."
            )
    full = tuple(i % s for i, s in zip(selector, shape, strict=False))
    return full + tuple(s // 2 for s in shape[len(selector) :])


class NeuronParams(CaptumParams):
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

    def init_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().init_kwargs(call)
        kwargs["layer"] = resolve_layer(call.model, self.layer, method=call.method)
        return kwargs

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        module = resolve_layer(call.model, self.layer, method=call.method)
        shape = layer_shape(call, module, self.attribute_to_neuron_input)
        kwargs["neuron_selector"] = full_neuron_index(self.neuron_selector, shape, call.method)
        kwargs["attribute_to_neuron_input"] = self.attribute_to_neuron_input
        return kwargs


def window_tuple(value: Size, call: Call, what: str) -> tuple[int, ...]:
    """A spatial size as Captum's ``(C, *spatial)`` tuple: the channel axis is covered
    whole, and each size is clipped to the input's extent. A tuple with a channel entry
    first (Captum's own form, such as ``(1, 15, 15)``) keeps that entry."""
    return window_sizes(value, tuple(call.inputs.shape), what, call.method)


def window_sizes(value: Size, shape: tuple[int, ...], what: str, method: str) -> tuple[int, ...]:
    """:func:`window_tuple` for inputs of ``shape`` (cost estimates use it before a call)."""
    channels, rank = shape[1], len(shape) - 2
    if isinstance(value, tuple) and len(value) == rank + 1:
        if not 1 <= value[0] <= channels:
            raise InvalidParamsError(
                f"Method {method!r}: {what}={value} has {len(value)} entries for a "
                f"{rank}D input: read as Captum's (channels, *spatial) form, its channel "
                f"extent {value[0]} must be between 1 and the input's {channels} channels. "
                f"Give {rank} spatial sizes, or a channel extent that fits."
            )
        channels, value = value[0], value[1:]
    sizes = as_size(value, rank, what, method)
    spatial = shape[2:]
    return (channels, *(min(s, n) for s, n in zip(sizes, spatial, strict=True)))

"""The parameter models of the TorchRay methods and what turns them into TorchRay
keyword arguments.

Each model is built from :class:`TorchRayParams` pieces contributing keyword arguments
through cooperative :meth:`TorchRayParams.torchray_kwargs` calls, so a method's
parameters are the list of pieces it takes. Layer paths are resolved with esegeta's
:func:`~esegeta_core.resolve_layer` and handed to TorchRay as modules (TorchRay's
``get_module`` accepts modules), so they name layers of the user's model even when the
core wrapped it for segmentation.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, StrictBool, model_validator

from esegeta_core import InvalidParamsError, LayerPath, MethodParams, ModulePath
from esegeta_core.toolkit import Call, TensorParam, interpolation_mode
from esegeta_torchray.contrast import default_layers

ResizeMode = Literal["bilinear", "bicubic", "trilinear"]
"""``torch.nn.functional.interpolate`` modes TorchRay's ``resize_saliency`` can use (it
always passes ``align_corners=False``, which torch rejects for 'nearest' and 'area')."""

_RANK_MODES = {"bilinear": 2, "bicubic": 2, "trilinear": 3}
"""The spatial rank each resize mode is for."""

Resize = StrictBool | tuple[Annotated[int, Field(ge=1)], ...]

Area = Annotated[float, Field(gt=0.0, le=1.0)]


def torchray_function(path: str) -> Callable[..., Any]:
    """``torchray.attribution.<module>.<function>`` from ``"module:function"``, imported
    on first use (TorchRay pulls in torchvision and matplotlib)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(f"torchray.attribution.{module}"), name)


class TorchRayParams(MethodParams):
    """Base of the TorchRay parameter pieces (contributes nothing itself)."""

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        """Keyword arguments for the TorchRay function."""
        return {}


class ResizeParams(TorchRayParams):
    """TorchRay's ``resize`` / ``resize_mode`` of the returned map."""

    resize: Resize = Field(
        False,
        description="Resize the saliency map: False keeps the layer's resolution, True "
        "brings it to the input's spatial size, a tuple gives a size in TorchRay's order "
        "(reversed spatial order: (width, height) in 2D, (width, height, depth) in 3D).",
    )
    resize_mode: ResizeMode | None = Field(
        None,
        description="Interpolation of the resize: 'bilinear' or 'bicubic' (2D), 'trilinear' "
        "(3D); None picks 'bilinear' in 2D and 'trilinear' in 3D. Only with resize.",
    )

    @model_validator(mode="after")
    def _check_resize(self) -> ResizeParams:
        self.only_with(["resize_mode"], self.resize is not False, "resize")
        if isinstance(self.resize, tuple) and not self.resize:
            raise ValueError("resize must be a bool or a non-empty tuple of sizes")
        return self

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        if isinstance(self.resize, tuple) and len(self.resize) != call.rank:
            raise InvalidParamsError(
                f"Method {call.method!r}: resize={self.resize} has {len(self.resize)} sizes "
                f"for a {call.rank}D input; give {call.rank} (reversed spatial order) or True."
            )
        mode = self.resize_mode or interpolation_mode(call.rank)
        if _RANK_MODES[mode] != call.rank:
            raise InvalidParamsError(
                f"Method {call.method!r}: resize_mode={mode!r} is for "
                f"{_RANK_MODES[mode]}D maps, the input is {call.rank}D; use "
                f"{interpolation_mode(call.rank)!r}."
            )
        kwargs["resize"] = self.resize
        kwargs["resize_mode"] = mode
        return kwargs


class SmoothParams(TorchRayParams):
    """TorchRay's Gaussian ``smooth`` of the returned map (2D: ``imsmooth`` is 2D)."""

    smooth: float = Field(
        0.0,
        ge=0.0,
        description="Gaussian smoothing of the saliency map, sigma as a fraction of its "
        "largest spatial side (of the smallest for extremal perturbation); 0 = none. "
        "2D only: TorchRay's imsmooth is a 2D filter.",
    )

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        if self.smooth > 0 and call.rank != 2:
            raise InvalidParamsError(
                f"Method {call.method!r}: smooth={self.smooth} needs a 2D input (TorchRay's "
                f"imsmooth is a 2D Gaussian filter), got a {call.rank}D one; use smooth=0."
            )
        kwargs["smooth"] = self.smooth
        return kwargs


class OptionalSaliencyLayerParams(TorchRayParams):
    """Where the pseudo-gradient is read: the input by default, or a layer's output."""

    field_aliases: ClassVar[dict[str, str]] = {"saliency_layer": "layer"}

    layer: LayerPath | None = Field(
        None,
        description="Layer whose output gets the saliency (map at that layer's "
        "resolution); None = the input. TorchRay's saliency_layer.",
    )

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        # TorchRay reads the model's input when saliency_layer is ''
        layer = self.layer
        kwargs["saliency_layer"] = "" if layer is None else call.layer(layer)
        return kwargs


class SaliencyLayerParams(TorchRayParams):
    """A required saliency layer (Grad-CAM, contrastive excitation backprop)."""

    field_aliases: ClassVar[dict[str, str]] = {"saliency_layer": "layer"}

    layer: LayerPath = Field(
        "auto",
        description="Layer whose output gets the saliency, usually the last convolution "
        "('auto' chooses it); the map has that layer's resolution unless resized. "
        "TorchRay's saliency_layer.",
    )

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        kwargs["saliency_layer"] = call.layer(self.layer)
        return kwargs


class SaliencyParams(OptionalSaliencyLayerParams, ResizeParams, SmoothParams):
    """The arguments of TorchRay's ``saliency()`` (gradient, deconvnet, guided backprop,
    linear approximation, excitation backprop)."""


class LayerSaliencyParams(SaliencyLayerParams, ResizeParams, SmoothParams):
    """``saliency()`` arguments with a required layer (Grad-CAM)."""


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
        found, contrast = default_layers(call, classifier)
        kwargs["classifier_layer"] = found
        kwargs["contrast_layer"] = (
            call.layer(self.contrast_layer) if self.contrast_layer is not None else contrast
        )
        return kwargs


class RiseParams(ResizeParams):
    """TorchRay's ``rise`` arguments."""

    num_masks: int = Field(8000, ge=1, description="Number of random masks.")
    num_cells: int = Field(
        7,
        ge=2,
        description="Cells per spatial side of the low-resolution random grid (at most the "
        "input's smallest side).",
    )
    p: float = Field(
        0.5, ge=0.0, le=1.0, description="Probability that a grid cell keeps the input (1)."
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="Masks TorchRay draws at a time: its random masks depend on it (keep "
        "it to get TorchRay's map for a seed). TorchRay also scores them in passes of "
        "that many; here pass_size does.",
    )
    pass_size: int = Field(
        32,
        ge=1,
        description="Masked inputs per forward pass (TorchRay runs batch_size); the masks, "
        "and so the map, do not depend on it. Left unset, on the CPU a pass holds at most "
        "2^21 input elements (8 RGB images of 224 px); explain(auto_batch=True) lets the "
        "pass planner size it.",
    )
    mask_seed: int = Field(
        0,
        ge=0,
        description="TorchRay's own seed for the masks (it reseeds torch for the call and "
        "restores the generator afterwards), so results repeat without explain(seed=...).",
    )
    filter_masks: TensorParam | None = Field(
        None,
        description="Precomputed masks (num_masks, 1, H, W) to use instead of random ones; "
        "num_masks defaults to their number.",
    )

    @model_validator(mode="after")
    def _check_masks(self) -> RiseParams:
        self.only_with(
            ["num_cells", "p", "mask_seed"],
            self.filter_masks is None,
            "random masks (no filter_masks)",
        )
        return self

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        spatial = tuple(call.inputs.shape[2:])
        kwargs.update(num_masks=self.num_masks, batch_size=self.batch_size)
        if self.filter_masks is None:
            if self.num_cells > min(spatial):
                raise InvalidParamsError(
                    f"Method {call.method!r}: num_cells={self.num_cells} exceeds the input's "
                    f"smallest side {min(spatial)}; use at most {min(spatial)}."
                )
            kwargs.update(num_cells=self.num_cells, p=self.p, seed=self.mask_seed)
            return kwargs
        masks = self.filter_masks
        count = masks.shape[0] if masks.ndim else 0
        if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[2:]) != spatial:
            raise InvalidParamsError(
                f"Method {call.method!r}: filter_masks must be shaped (num_masks, 1, "
                f"{', '.join(map(str, spatial))}), got {tuple(masks.shape)}."
            )
        if "num_masks" in self.model_fields_set and self.num_masks != count:
            raise InvalidParamsError(
                f"Method {call.method!r}: num_masks={self.num_masks} but filter_masks holds "
                f"{count} masks; leave num_masks out or make them agree."
            )
        kwargs.update(
            num_masks=count,
            filter_masks=masks.to(device=call.inputs.device, dtype=call.inputs.dtype),
        )
        return kwargs


class ExtremalPerturbationParams(ResizeParams, SmoothParams):
    """TorchRay's ``extremal_perturbation`` arguments."""

    areas: list[Area] = Field(
        [0.1],
        min_length=1,
        description="Target areas of the masks, fractions in (0, 1]; one mask per area, "
        "stacked in the channel dimension of the attributions.",
    )
    perturbation: Literal["blur", "fade"] = Field(
        "blur", description="How masked-out regions are perturbed: Gaussian blur or fade to 0."
    )
    max_iter: int = Field(800, ge=1, description="Optimisation iterations of the masks.")
    num_levels: int = Field(
        8, ge=2, description="Levels of the perturbation pyramid (interpolated)."
    )
    step: int = Field(7, ge=1, description="Mask parameterisation step in pixels.")
    sigma: float = Field(21.0, gt=0.0, description="Smoothness of the mask (kernel size).")
    jitter: bool = Field(
        True, description="Flip the perturbed input horizontally every other iteration."
    )
    variant: Literal["preserve", "delete", "dual"] = Field(
        "preserve",
        description="Game: keep the score with the area preserved, drop it with the area "
        "deleted, or both.",
    )
    reward: Literal["simple", "contrastive"] = Field(
        "simple",
        description="Reward: the target score, or the target score minus the best other class.",
    )

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        self._check_mask_size(call)
        module = "extremal_perturbation"
        kwargs.update(
            areas=list(self.areas),
            perturbation=self.perturbation,
            max_iter=self.max_iter,
            num_levels=self.num_levels,
            step=self.step,
            sigma=self.sigma,
            jitter=self.jitter,
            variant=self.variant,
            reward_func=torchray_function(f"{module}:{self.reward}_reward"),
        )
        return kwargs

    def _check_mask_size(self, call: Call) -> None:
        """TorchRay's ``MaskGenerator`` crops ``round(sigma)`` pixels of margin from a
        grid of ``step``-pixel cells; for some step/sigma/size combinations the grid is
        too small and TorchRay fails with a shape mismatch. Say so up front."""
        padding = 1 + math.ceil(2 * self.sigma / self.step)
        radius = 1 + math.ceil(self.sigma / self.step)
        for side in call.inputs.shape[2:]:
            cells = math.ceil(side / self.step) + 2 * padding - 2 * radius
            if self.step * cells - self.step + 1 < round(self.sigma) + side:
                raise InvalidParamsError(
                    f"Method {call.method!r}: TorchRay's mask generator cannot build a "
                    f"{side}-pixel mask with step={self.step} and sigma={self.sigma} (its "
                    "grid is too small for the margin it crops); sigma = 3 * step works, "
                    "as in TorchRay's defaults step=7, sigma=21."
                )

"""Parameter pieces shared by the TorchRay methods and the helpers that turn them into
TorchRay keyword arguments.

Each piece is a :class:`TorchRayParams` mixin contributing keyword arguments through
cooperative :meth:`TorchRayParams.torchray_kwargs` calls, so a method's ``Params`` is
the list of pieces it takes. Layer paths are resolved with esegeta's
:func:`~esegeta_core.resolve_layer` and handed to TorchRay as modules (TorchRay's
``get_module`` accepts modules), so they name layers of the user's model even when the
core wrapped it for segmentation.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, StrictBool, model_validator

from esegeta_core import InvalidParamsError, LayerPath, MethodParams, resolve_layer

ResizeMode = Literal["bilinear", "bicubic", "trilinear"]
"""``torch.nn.functional.interpolate`` modes TorchRay's ``resize_saliency`` can use (it
always passes ``align_corners=False``, which torch rejects for 'nearest' and 'area')."""

_RANK_MODES = {"bilinear": 2, "bicubic": 2, "trilinear": 3}
_DEFAULT_MODE = {2: "bilinear", 3: "trilinear"}

Resize = StrictBool | tuple[Annotated[int, Field(ge=1)], ...]


def torchray_function(path: str) -> Any:
    """``torchray.attribution.<module>.<function>`` from ``"module:function"``, imported
    on first use (TorchRay pulls in torchvision and matplotlib)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(f"torchray.attribution.{module}"), name)


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

    def layer(self, path: str) -> torch.nn.Module:
        """The module at ``path`` in the user's model (inside esegeta's wrappers)."""
        return resolve_layer(self.model, path, method=self.method)


class TorchRayParams(MethodParams):
    """Base of the TorchRay parameter pieces (contributes nothing itself)."""

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        """Keyword arguments for the TorchRay function."""
        return {}

    def _only_with(self, fields: Iterable[str], enabled: bool, needs: str) -> None:
        unused = sorted(f for f in fields if f in self.model_fields_set)
        if unused and not enabled:
            raise ValueError(f"{', '.join(unused)} only applies with {needs}; remove it")


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
        self._only_with(["resize_mode"], self.resize is not False, "resize")
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
        mode = self.resize_mode or _DEFAULT_MODE[call.rank]
        if _RANK_MODES[mode] != call.rank:
            raise InvalidParamsError(
                f"Method {call.method!r}: resize_mode={mode!r} is for "
                f"{_RANK_MODES[mode]}D maps, the input is {call.rank}D; use "
                f"{_DEFAULT_MODE[call.rank]!r}."
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

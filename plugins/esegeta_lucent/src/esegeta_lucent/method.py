"""``lucent.feature_visualization``: the :class:`Explainer`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch

from esegeta_core import Explainer, InvalidParamsError, MethodResult
from esegeta_core.explainer import Workload
from esegeta_core.feature_masks import as_size
from esegeta_lucent.objectives import Objective, parse_objective, resolve_layers
from esegeta_lucent.params import FeatureVisParams
from esegeta_lucent.render import Job, Rendered, default_decorrelate, render_2d, render_nd


class FeatureVisualization(Explainer[FeatureVisParams]):
    """Feature visualization: synthesise images that maximise a class, channel, neuron or layer.

    Visualizations explain the model, not an input: ``inputs`` only give the batch size
    (one image per item, each from its own random start), the channel count and the
    default image size; ``target`` is the class of the ``logit`` objective. 2D runs
    through Lucent's ``render_vis``; 3D through esegeta's volume parameterization
    (pixel or Fourier) and transforms with the same objectives. Returns the images in
    [0, 1]; extras ``objective_start``/``objective`` (``(B,)``, before and after,
    without transforms) and ``objective_history`` (``(steps, B)``).
    """

    name = "lucent.feature_visualization"
    count_params = ("steps",)
    family = "visualization"
    output = "image"
    ranks = (2, 3)
    needs_layer = False
    cost = "high"
    paper = "https://distill.pub/2017/feature-visualization/"
    deterministic = False

    renderers: ClassVar[dict[int, Callable[[Job], Rendered]]] = {2: render_2d, 3: render_nd}
    """The optimisation loop per spatial rank."""

    def image_size(self, params: FeatureVisParams, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """The synthesised images' spatial size: ``image_size``, or the inputs' ``spatial``
        size."""
        if params.image_size is None:
            return spatial
        return as_size(params.image_size, len(spatial), "image_size", self.name)

    def workload(
        self,
        params: FeatureVisParams,
        shape: tuple[int, ...],
        layers: Mapping[str, tuple[int, ...]],
    ) -> Workload:
        """``steps`` passes per image, one image per item; an ``image_size`` larger than
        the inputs counts as that many inputs' worth of activations."""
        size = self.image_size(params, tuple(shape[2:]))
        scale = math.ceil(math.prod(size) / max(1, math.prod(shape[2:])))
        return Workload(
            passes=params.steps,
            inputs=shape[0] * scale,
            counts=("steps", "image_size") if params.image_size is not None else ("steps",),
            fix="lower steps or image_size" if params.image_size is not None else "",
        )

    def attribute(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: FeatureVisParams,
    ) -> MethodResult:
        rank = inputs.ndim - 2
        channels = inputs.shape[1]
        terms = parse_objective(params.objective)
        layers = resolve_layers(model, terms, self.name)
        size = self.image_size(params, tuple(inputs.shape[2:]))
        decorrelate = (
            default_decorrelate(channels) if params.decorrelate is None else params.decorrelate
        )
        if decorrelate and channels != 3:
            raise InvalidParamsError(
                f"Method {self.name!r}: decorrelate=True needs 3-channel (RGB) inputs; these "
                f"have {channels} channel(s). Leave decorrelate unset or pass False."
            )
        if params.normalize == "imagenet" and channels != 3:
            raise InvalidParamsError(
                f"Method {self.name!r}: normalize='imagenet' needs 3-channel inputs; these "
                f"have {channels} channel(s). Use normalize='none'."
            )
        job = Job(
            model=model,
            objective=Objective(terms, target, self.name),
            layers=layers,
            shape=(inputs.shape[0], channels, *size),
            fft=params.parameterization == "fft",
            decorrelate=decorrelate,
            init_std=params.init_std,
            lr=params.lr,
            steps=params.steps,
            pad=params.pad,
            jitter=params.jitter,
            scale=params.scale,
            rotate=params.rotate,
            imagenet=params.normalize == "imagenet",
            device=inputs.device,
        )
        out = self.renderers[rank](job)
        return MethodResult(
            out.images,
            objective=out.final,
            objective_start=out.start,
            objective_history=out.history,
        )

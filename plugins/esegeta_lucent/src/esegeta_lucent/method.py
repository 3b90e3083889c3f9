"""``lucent.feature_visualization``: its parameters and the :class:`Explainer`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from esegeta_core import Explainer, InvalidParamsError, MethodParams, MethodResult
from esegeta_core.explainer import Workload
from esegeta_core.feature_masks import as_size
from esegeta_lucent.objectives import Objective, parse_objective, resolve_layers
from esegeta_lucent.render import Job, default_decorrelate, render_2d, render_nd


class FeatureVisParams(MethodParams):
    """Parameters of :class:`FeatureVisualization`."""

    objective: str = Field(
        "logit",
        description=(
            "What to maximise: 'logit' (the target class's score: class visualization), "
            "'logit:CLASS', 'LAYER' (whole layer, mean squared activation: DeepDream), "
            "'LAYER:CHANNEL' (mean activation of a channel), 'LAYER:CHANNEL@Y,X' "
            "('@Z,Y,X' in 3D, or '@center') for one neuron, or weighted sums such as "
            "'features.conv2:3 + 0.5*features.conv2:5 - features.conv1'."
        ),
    )
    steps: int = Field(512, ge=1, description="Optimisation steps (Adam).")
    image_size: int | tuple[int, ...] | None = Field(
        None,
        description=(
            "Spatial size of the synthesised images: one int or one per dimension; "
            "default: the input's spatial size."
        ),
    )
    parameterization: Literal["fft", "pixel"] = Field(
        "fft",
        description=(
            "'fft': optimise a 1/f-scaled Fourier spectrum (smoother, Lucid's default); "
            "'pixel': optimise pixels/voxels directly."
        ),
    )
    decorrelate: bool | None = Field(
        None,
        description=(
            "Optimise in Lucid's decorrelated colour space (3-channel inputs only); "
            "default: on for 3 channels, off otherwise."
        ),
    )
    lr: float = Field(0.05, gt=0, description="Adam learning rate.")
    init_std: float = Field(
        0.01, gt=0, description="Standard deviation of the random initial parameters."
    )
    pad: int = Field(
        12, ge=0, description="Transform: constant (grey) padding before jitter; 0 disables."
    )
    jitter: int = Field(
        8,
        ge=0,
        description=(
            "Transform: random shift of up to jitter-1 pixels/voxels per axis, then one of "
            "up to jitter//2-1 after scaling and rotation (Lucid: 8); below 2 disables."
        ),
    )
    scale: float = Field(
        0.1,
        ge=0,
        lt=1,
        description=(
            "Transform: random rescaling by a factor in [1 - scale, 1 + scale]; 0 disables."
        ),
    )
    rotate: int = Field(
        10,
        ge=0,
        le=180,
        description=(
            "Transform: random rotation by up to this many degrees (3D: in a random plane); "
            "0 disables."
        ),
    )
    normalize: Literal["none", "imagenet"] = Field(
        "none",
        description=(
            "Map the [0, 1] images before the model: 'imagenet' mean/std normalisation "
            "(torchvision models, 3 channels) or 'none'."
        ),
    )

    @field_validator("objective")
    @classmethod
    def _parse(cls, value: str) -> str:
        parse_objective(value)  # ValueError with the grammar if malformed
        return value


class FeatureVisualization(Explainer):
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
    Params = FeatureVisParams
    family = "visualization"
    output = "image"
    ranks = (2, 3)
    needs_layer = False
    cost = "high"
    paper = "https://distill.pub/2017/feature-visualization/"
    deterministic = False

    renderers: ClassVar = {2: render_2d, 3: render_nd}

    def workload(
        self, params: Any, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """``steps`` passes per image, one image per item; an ``image_size`` larger than
        the inputs counts as that many inputs' worth of activations."""
        rank = len(shape) - 2
        size = (
            shape[2:]
            if params.image_size is None
            else as_size(params.image_size, rank, "image_size", self.name)
        )
        scale = math.ceil(math.prod(size) / max(1, math.prod(shape[2:])))
        return Workload(
            passes=params.steps,
            inputs=shape[0] * scale,
            counts=("steps", "image_size") if params.image_size is not None else ("steps",),
            fix="lower steps or image_size" if params.image_size is not None else "",
        )

    def attribute(
        self, model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: Any
    ) -> MethodResult:
        p: FeatureVisParams = params
        rank = inputs.ndim - 2
        channels = inputs.shape[1]
        terms = parse_objective(p.objective)
        layers = resolve_layers(model, terms, self.name)
        size = (
            tuple(inputs.shape[2:])
            if p.image_size is None
            else as_size(p.image_size, rank, "image_size", self.name)
        )
        decorrelate = default_decorrelate(channels) if p.decorrelate is None else p.decorrelate
        if decorrelate and channels != 3:
            raise InvalidParamsError(
                f"Method {self.name!r}: decorrelate=True needs 3-channel (RGB) inputs; these "
                f"have {channels} channel(s). Leave decorrelate unset or pass False."
            )
        if p.normalize == "imagenet" and channels != 3:
            raise InvalidParamsError(
                f"Method {self.name!r}: normalize='imagenet' needs 3-channel inputs; these "
                f"have {channels} channel(s). Use normalize='none'."
            )
        job = Job(
            model=model,
            objective=Objective(terms, target, self.name),
            layers=layers,
            shape=(inputs.shape[0], channels, *size),
            fft=p.parameterization == "fft",
            decorrelate=decorrelate,
            init_std=p.init_std,
            lr=p.lr,
            steps=p.steps,
            pad=p.pad,
            jitter=p.jitter,
            scale=p.scale,
            rotate=p.rotate,
            imagenet=p.normalize == "imagenet",
            device=inputs.device,
        )
        out = self.renderers[rank](job)
        return MethodResult(
            out.images,
            objective=out.final,
            objective_start=out.start,
            objective_history=out.history,
        )

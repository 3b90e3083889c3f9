"""The parameters of ``lucent.feature_visualization``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from esegeta_core import MethodParams
from esegeta_lucent.objectives import parse_objective


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

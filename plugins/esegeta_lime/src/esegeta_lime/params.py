"""The parameters of ``lime.lime``: segmentation choice with the knobs of each
algorithm, LIME's sampling and surrogate-fit settings, and the mask settings.

A knob that belongs to another segmentation algorithm than the one chosen is an error
rather than silently ignored (``n_segments`` with ``segmentation="quickshift"``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from esegeta_core import MethodParams

Algorithm = Literal["quickshift", "slic", "felzenszwalb"]

KNOBS: dict[str, tuple[str, ...]] = {
    "slic": ("n_segments", "compactness", "sigma"),
    "quickshift": ("kernel_size", "max_dist", "ratio", "sigma"),
    "felzenszwalb": ("scale", "sigma", "min_size"),
}
"""Which segmentation parameters each algorithm uses."""


class LimeParams(MethodParams):
    """Parameters of :class:`esegeta_lime.method.Lime`."""

    segmentation: Algorithm | torch.Tensor = Field(
        "slic",
        description=(
            "How pixels/voxels are grouped into the features LIME switches on and off: "
            "'slic' (2D and 3D), 'quickshift' or 'felzenszwalb' (2D only, as in "
            "scikit-image), or a tensor of integer segment ids shaped like the spatial "
            "dimensions (optionally (1|B, 1, *spatial))."
        ),
    )
    n_segments: int = Field(
        50, ge=1, description="slic: approximate number of superpixels/supervoxels."
    )
    compactness: float | None = Field(
        None,
        gt=0,
        description=(
            "slic: balance of colour and space (higher = more square segments). None: "
            "10 when segmenting in Lab space (2D with 1 or 3 channels), 0.1 otherwise "
            "(intensities scaled to [0, 1])."
        ),
    )
    sigma: float | None = Field(
        None,
        ge=0,
        description=(
            "slic/quickshift/felzenszwalb: Gaussian pre-smoothing width; None uses "
            "scikit-image's default (0 for slic and quickshift, 0.8 for felzenszwalb)."
        ),
    )
    kernel_size: float = Field(
        4.0, gt=0, description="quickshift: width of the density kernel (LIME's default 4)."
    )
    max_dist: float = Field(
        200.0, gt=0, description="quickshift: cut-off distance for merging (LIME's default 200)."
    )
    ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="quickshift: balance of colour and space, 0..1 (LIME's default 0.2).",
    )
    scale: float = Field(1.0, gt=0, description="felzenszwalb: higher means larger segments.")
    min_size: int = Field(20, ge=1, description="felzenszwalb: minimum segment size in pixels.")
    num_samples: int = Field(
        1000,
        ge=2,
        description=(
            "Perturbed samples per item (LIME's neighbourhood size), at least 2: the "
            "first one is the unperturbed item."
        ),
    )
    num_features: int = Field(
        10,
        ge=1,
        description=(
            "Segments kept by the surrogate's feature selection, and the size of the "
            "positive and negative top-segment masks."
        ),
    )
    feature_selection: Literal[
        "auto", "forward_selection", "highest_weights", "lasso_path", "none"
    ] = Field(
        "auto",
        description=(
            "LIME's feature selection: 'auto' = forward selection up to 6 features, "
            "highest weights above; 'none' keeps every segment."
        ),
    )
    kernel_width: float = Field(
        0.25, gt=0, description="Width of LIME's exponential kernel on the sample distances."
    )
    distance_metric: Literal["cosine", "euclidean", "manhattan", "hamming"] = Field(
        "cosine",
        description="Distance of each on/off sample to the unperturbed one (LIME: cosine).",
    )
    hide_color: float | None = Field(
        None,
        description=(
            "Value of switched-off segments; None replaces each segment by its own "
            "per-channel mean (LIME's default)."
        ),
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Perturbed samples per model forward pass. Left unset, on the CPU a "
        "pass holds at most 2^21 input elements (16 volumes of 48^3).",
    )
    use_softmax: bool | None = Field(
        None,
        description=(
            "Fit the surrogate on softmax probabilities (as LIME expects) rather than raw "
            "scores. None: softmax for a classifier, raw for a segmentation model, whose "
            "class scores sum logits over every pixel (their softmax is 0 or 1 whatever "
            "the sample, so True is refused there)."
        ),
    )
    positive_only: bool = Field(
        False,
        description=(
            "Keep only segments with positive weight in the attribution map (both signs "
            "when False); the masks are returned either way."
        ),
    )
    min_weight: float = Field(
        0.0,
        ge=0,
        description="Segments whose |weight| is not above this stay out of the masks.",
    )
    random_seed: int | None = Field(
        None,
        ge=0,
        description=(
            "Seed of LIME's sampling (and of quickshift). None draws one from torch's "
            "generator, so explain(..., seed=...) makes the result reproducible."
        ),
    )

    @model_validator(mode="after")
    def _knobs_match_algorithm(self) -> LimeParams:
        chosen = self.segmentation if isinstance(self.segmentation, str) else None
        allowed = set(KNOBS.get(chosen, ())) if chosen else set()
        every = {k for knobs in KNOBS.values() for k in knobs}
        stray = sorted((self.model_fields_set & every) - allowed)
        if stray:
            what = f"segmentation={chosen!r}" if chosen else "a user segmentation mask"
            uses = ", ".join(KNOBS[chosen]) if chosen else "none of them"
            raise ValueError(f"{', '.join(stray)} do(es) not apply to {what} (it uses {uses}).")
        return self

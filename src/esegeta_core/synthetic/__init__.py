"""A ground-truth benchmark for explanations: synthetic data, tiny models, trained on demand.

- :func:`make_shapes`: 2D classification, one shape per image, with its mask and box.
- :func:`make_shapes_segmentation`: 2D segmentation, several shapes per image.
- :func:`make_vessels`: 3D segmentation of thin branching tubes (vessel trees).
- :class:`ShapesNet`, :class:`ShapesUNet`, :class:`VesselUNet`: small models for them.
- :func:`pretrained`: one of those models trained on the generators (seconds, on the
  CPU) the first time, cached afterwards.

Because the object behind every label is known pixel by pixel, the data show whether an
explanation points at what the model must look at.
"""

from __future__ import annotations

from esegeta_core.synthetic.models import ShapesNet, ShapesUNet, ShapesViT, VesselUNet
from esegeta_core.synthetic.pretrained import (
    PRETRAINED_NAMES,
    PretrainedNotFoundError,
    Recipe,
    TrainedModel,
    default_cache_dir,
    evaluate_model,
    pretrained,
)
from esegeta_core.synthetic.shapes import (
    SHAPE_CLASSES,
    ShapesData,
    ShapesSegmentationData,
    make_shapes,
    make_shapes_segmentation,
)
from esegeta_core.synthetic.vessels import VesselsData, make_vessels

__all__ = [
    "PRETRAINED_NAMES",
    "SHAPE_CLASSES",
    "PretrainedNotFoundError",
    "Recipe",
    "ShapesData",
    "ShapesNet",
    "ShapesSegmentationData",
    "ShapesUNet",
    "ShapesViT",
    "TrainedModel",
    "VesselUNet",
    "VesselsData",
    "default_cache_dir",
    "evaluate_model",
    "make_shapes",
    "make_shapes_segmentation",
    "make_vessels",
    "pretrained",
]

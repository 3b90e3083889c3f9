"""Shared fast parameters for the plugin's tests."""

from __future__ import annotations

from typing import Any

FAST_PARAMS: dict[str, dict[str, Any]] = {
    "torchray.rise": {"num_masks": 16, "num_cells": 4, "batch_size": 8},
    # TorchRay's blur pyramid (sigma up to 20 px) dominates the time on tiny inputs: fade
    "torchray.extremal_perturbation": {
        "areas": [0.2, 0.5],
        "max_iter": 4,
        "step": 4,
        "sigma": 8.0,
        "perturbation": "fade",
    },
}

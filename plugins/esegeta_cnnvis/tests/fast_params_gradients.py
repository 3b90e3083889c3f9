"""Small sample counts for the conformance suite: gradient, visualization and RISE methods."""

from __future__ import annotations

from typing import Any

FAST_GRADIENTS: dict[str, dict[str, Any]] = {
    "cnnvis.integrated_gradients": {"n_steps": 8, "internal_batch_size": 4},
    "cnnvis.smoothgrad": {"noise_samples": 4, "noise_batch_size": 2},
    "cnnvis.vargrad": {"noise_samples": 4, "noise_batch_size": 2},
    "cnnvis.layer_visualization": {"steps": 3},
    "cnnvis.deep_dream": {"steps": 3},
    "cnnvis.inverted_representation": {"steps": 3},
    "cnnvis.rise": {"num_masks": 16, "batch_size": 8, "cells": 4},
}

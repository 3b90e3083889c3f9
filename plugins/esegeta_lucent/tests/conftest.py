"""Shared fast parameters for the plugin's tests."""

from __future__ import annotations

from typing import Any

import torch

# tiny models: one thread is faster than two fighting over a shared 2-core machine
torch.set_num_threads(1)

# few steps, small transforms: the tiny models' inputs are 16 px (2D) and 8 voxels (3D)
FAST: dict[str, Any] = {"steps": 4, "pad": 2, "jitter": 3, "scale": 0.1, "rotate": 5}

FAST_PARAMS: dict[str, dict[str, Any]] = {"lucent.feature_visualization": FAST}

"""The plugin's fast parameters, and the conformance cases for every test taking
``case``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

from esegeta_core.testing import parametrize_conformance

# tiny models: one thread is faster than two fighting over a shared 2-core machine
torch.set_num_threads(1)

# few steps, small transforms: the tiny models' inputs are 16 px (2D) and 8 voxels (3D)
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "lucent.feature_visualization": {"steps": 4, "pad": 2, "jitter": 3, "scale": 0.1, "rotate": 5}
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_conformance(metafunc, plugin="lucent", params=FAST_PARAMS)


@pytest.fixture
def fast_params() -> Mapping[str, Mapping[str, Any]]:
    """Parameters that keep each method fast on the tiny models."""
    return FAST_PARAMS

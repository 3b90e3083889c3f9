"""The plugin's fast parameters, and the conformance cases for every test taking
``case``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from esegeta_core.testing import parametrize_conformance

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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_conformance(metafunc, plugin="torchray", params=FAST_PARAMS)


@pytest.fixture
def fast_params() -> Mapping[str, Mapping[str, Any]]:
    """Parameters that keep each slow method fast on the tiny models."""
    return FAST_PARAMS

"""The parameters that keep the cnnvis methods fast in tests, and the conformance cases.

Every test taking ``case`` runs once per cnnvis method, rank and task
(:func:`esegeta_core.testing.parametrize_conformance`); tests that need the fast
parameters take the ``fast_params`` fixture.
"""

from __future__ import annotations

from typing import Any

import pytest

from esegeta_core.testing import parametrize_conformance

FAST_PARAMS: dict[str, dict[str, Any]] = {
    "cnnvis.integrated_gradients": {"n_steps": 8, "internal_batch_size": 4},
    "cnnvis.smoothgrad": {"noise_samples": 4, "noise_batch_size": 2},
    "cnnvis.vargrad": {"noise_samples": 4, "noise_batch_size": 2},
    "cnnvis.layer_visualization": {"steps": 3},
    "cnnvis.deep_dream": {"steps": 3},
    "cnnvis.inverted_representation": {"steps": 3},
    "cnnvis.rise": {"num_masks": 16, "batch_size": 8, "cells": 4},
    "cnnvis.score_cam": {"batch_size": 8},
    "cnnvis.ablation_cam": {"batch_size": 8},
}
"""Fewer samples, steps and masks, smaller passes: per method name."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_conformance(metafunc, plugin="cnnvis", params=FAST_PARAMS)


@pytest.fixture
def fast_params() -> dict[str, dict[str, Any]]:
    """:data:`FAST_PARAMS`, per method name."""
    return FAST_PARAMS

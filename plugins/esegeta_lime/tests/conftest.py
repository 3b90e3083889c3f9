"""The parameters that keep ``lime.lime`` fast in tests, and the conformance cases."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from esegeta_core.testing import parametrize_conformance

# tiny noisy inputs need compact SLIC segments (else SLIC merges them into one)
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "lime.lime": {"num_samples": 16, "n_segments": 8, "compactness": 100.0}
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test taking ``case`` runs once per conformance case of the plugin."""
    parametrize_conformance(metafunc, plugin="lime", params=FAST_PARAMS)


@pytest.fixture
def fast_params() -> Mapping[str, Mapping[str, Any]]:
    """Method name -> the parameters that keep it fast."""
    return FAST_PARAMS

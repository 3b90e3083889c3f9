"""The core's conformance suite on every cnnvis method, rank and task."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from esegeta_core import get_registry
from esegeta_core.testing import Case, conformance_cases, run_conformance

FAST_CAMS: dict[str, dict[str, Any]] = {
    "cnnvis.score_cam": {"batch_size": 8},
    "cnnvis.ablation_cam": {"batch_size": 8},
}


def _fast_gradients() -> dict[str, dict[str, Any]]:
    """``FAST_GRADIENTS`` from ``fast_params_gradients.py`` beside this file, if present."""
    path = Path(__file__).with_name("fast_params_gradients.py")
    if not path.exists():
        return {}
    spec = importlib.util.spec_from_file_location("cnnvis_fast_params_gradients", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(getattr(module, "FAST_GRADIENTS", {}))


FAST: dict[str, dict[str, Any]] = {**_fast_gradients(), **FAST_CAMS}


@pytest.mark.parametrize("case", conformance_cases(plugin="cnnvis", params=FAST), ids=str)
def test_conformance(case: Case) -> None:
    run_conformance(case)


def test_every_cam_is_covered() -> None:
    methods = {case.method for case in conformance_cases(plugin="cnnvis")}
    assert set(FAST_CAMS) <= methods
    registry = get_registry()
    registered = {
        name
        for name, plugin in registry.plugin_of.items()
        if plugin == "cnnvis" and registry.methods[name].family == "cam"
    }
    assert registered and {m for m in methods if registry.get(m).family == "cam"} == registered

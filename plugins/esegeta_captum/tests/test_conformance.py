"""The core's conformance suite on every Captum method, rank and task."""

from __future__ import annotations

import pytest
from conftest import FAST_PARAMS

from esegeta_core import get_registry
from esegeta_core.testing import Case, conformance_cases, run_conformance


@pytest.mark.parametrize("case", conformance_cases(plugin="captum", params=FAST_PARAMS), ids=str)
def test_conformance(case: Case) -> None:
    run_conformance(case)


def test_every_method_is_covered() -> None:
    registry = get_registry()
    registered = {name for name, plugin in registry.plugin_of.items() if plugin == "captum"}
    methods = {case.method for case in conformance_cases(plugin="captum")}
    assert registered and methods == registered

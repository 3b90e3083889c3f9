"""The core's conformance suite on every Captum method, rank and task."""

from __future__ import annotations

import pytest
from conftest import FAST_PARAMS

from esegeta_core.testing import Case, conformance_cases, run_conformance


@pytest.mark.parametrize("case", conformance_cases(plugin="captum", params=FAST_PARAMS), ids=str)
def test_conformance(case: Case) -> None:
    run_conformance(case)


def test_every_method_is_covered() -> None:
    methods = {case.method for case in conformance_cases(plugin="captum")}
    assert len(methods) == 37

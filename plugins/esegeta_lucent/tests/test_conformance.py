"""The core's conformance suite on every Lucent method, rank and task."""

from __future__ import annotations

import pytest
from conftest import FAST_PARAMS

from esegeta_core.testing import Case, conformance_cases, run_conformance


@pytest.mark.parametrize("case", conformance_cases(plugin="lucent", params=FAST_PARAMS), ids=str)
def test_conformance(case: Case) -> None:
    run_conformance(case)


def test_every_method_and_rank_is_covered() -> None:
    cases = conformance_cases(plugin="lucent")
    assert {c.method for c in cases} == {"lucent.feature_visualization"}
    assert {c.rank for c in cases} == {2, 3}

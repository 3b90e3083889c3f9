"""The core's conformance suite on ``lime.lime``, 2D and 3D, both tasks."""

from __future__ import annotations

import pytest
from conftest import FAST_PARAMS

from esegeta_core.testing import Case, conformance_cases, run_conformance


@pytest.mark.parametrize("case", conformance_cases(plugin="lime", params=FAST_PARAMS), ids=str)
def test_conformance(case: Case) -> None:
    run_conformance(case)


def test_every_rank_and_task_is_covered() -> None:
    cases = {str(c) for c in conformance_cases(plugin="lime")}
    assert cases == {
        f"lime.lime-{r}d-{t}" for r in (2, 3) for t in ("classification", "segmentation")
    }

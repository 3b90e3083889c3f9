"""The core's conformance suite on the zennit methods, 2D and 3D, both tasks."""

from __future__ import annotations

import pytest

from esegeta_core.testing import Case, conformance_cases, run_conformance


@pytest.mark.parametrize("case", conformance_cases(plugin="zennit"), ids=str)
def test_conformance(case: Case) -> None:
    run_conformance(case)


def test_every_rank_and_task_is_covered() -> None:
    cases = {str(c) for c in conformance_cases(plugin="zennit")}
    assert cases == {
        f"zennit.{m}-{r}d-{t}"
        for m in ("lrp", "layer_lrp")
        for r in (2, 3)
        for t in ("classification", "segmentation")
    }

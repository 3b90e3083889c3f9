"""The core's conformance suite on ``lime.lime``, 2D and 3D, both tasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from esegeta_core.testing import Case, check_coverage, run_conformance


def test_conformance(case: Case) -> None:
    run_conformance(case)


def test_every_method_rank_and_task_is_covered(
    fast_params: Mapping[str, Mapping[str, Any]],
) -> None:
    check_coverage("lime", fast_params)

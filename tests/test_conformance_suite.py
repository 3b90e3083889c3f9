"""The conformance suite passes good methods and catches bad ones (so it can fail)."""

from __future__ import annotations

import pytest

from esegeta_core.testing import Case, check_coverage, conformance_cases, run_conformance

GOOD = ("demo.grad_x_input", "demo.layer_mean", "demo.flat2d", "demo.noisy")


def test_cases_cover_claimed_ranks_and_tasks(demo):
    cases = {str(c) for c in conformance_cases(plugin="demo")}
    assert "demo.flat2d-2d-classification" in cases
    assert "demo.flat2d-3d-classification" not in cases
    assert "demo.grad_x_input-3d-segmentation" in cases


def test_coverage_check_passes_and_names_what_is_wrong(demo):
    check_coverage("demo", {"demo.noisy": {}})
    with pytest.raises(AssertionError, match="does not register: \\['demo.nope'\\]"):
        check_coverage("demo", {"demo.nope": {}})
    with pytest.raises(AssertionError, match="'demo.noisy' name no field: \\['typo'\\]"):
        check_coverage("demo", {"demo.noisy": {"typo": 1}})
    with pytest.raises(AssertionError, match="registers no method"):
        check_coverage("nobody")


GOOD_CASES = [
    Case(method, rank, task)
    for method in GOOD
    for rank in ((2,) if method == "demo.flat2d" else (2, 3))
    for task in ("classification", "segmentation")
]


@pytest.mark.parametrize("case", GOOD_CASES, ids=str)
def test_good_methods_pass(demo, case):
    run_conformance(case)


def test_leaky_method_fails(demo):
    with pytest.raises(AssertionError, match="left hooks"):
        run_conformance(Case("demo.leaky", 2, "classification"))


def test_nondeterministic_method_fails(demo, monkeypatch):
    import esegeta_core.runtime.job as job

    real = job.seeded

    def ignore_seed(seed, device):
        return real(None, device)

    monkeypatch.setattr(job, "seeded", ignore_seed)
    with pytest.raises(AssertionError, match="not deterministic"):
        run_conformance(Case("demo.noisy", 2, "classification"))

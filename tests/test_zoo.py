"""The fast subset of the model zoo, every installed method on each model: no call may
fail (a backend exception, a bad map, a changed model), and at least 95% of the calls
that apply must succeed. ``nox -s zoo`` runs the full zoo."""

from __future__ import annotations

import warnings

import pytest

from esegeta_core.testing.zoo import ZOO, ZooResult, run_zoo, summarize

for _module in ("torchvision", "timm", "monai", "transformers"):
    pytest.importorskip(_module)

FAST = [m for m in ZOO if m.fast]
_RESULTS: dict[str, list[ZooResult]] = {}


@pytest.mark.parametrize("spec", FAST, ids=lambda m: m.name)
def test_every_method_on_a_real_architecture(spec) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_zoo([spec])
    _RESULTS[spec.name] = results
    failures = [f"{r.method}: {r.reason}" for r in results if r.status == "failed"]
    assert not failures, "\n".join(failures)
    refused = [f"{r.method}: {r.reason}" for r in results if r.status == "refused"]
    assert not refused, "\n".join(refused)


def test_the_subset_succeeds_on_95_percent_of_applicable_calls() -> None:
    if len(_RESULTS) < len(FAST):
        pytest.skip("runs after the per-model tests of this file")
    summary = summarize([r for rs in _RESULTS.values() for r in rs])
    assert summary.success_rate >= 0.95, summary
    assert summary.applicable >= 0.8 * summary.calls

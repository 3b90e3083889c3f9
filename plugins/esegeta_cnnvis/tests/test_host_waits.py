"""No wait for the device per pass in the cnnvis perturbation methods (issue 19):
counted without a GPU by ``esegeta_core.testing.syncs`` at 1 and 4 inputs per pass,
classification and segmentation (the wrapper's scores run on every pass)."""

from __future__ import annotations

import pytest

from esegeta_core import explain
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.testing.syncs import PASS_CASES, case_params, scores_as_on_a_gpu, waits_per_pass

CASES = sorted(name for name in PASS_CASES if name.startswith("cnnvis."))


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_no_wait_for_the_device_per_pass(name: str, task: str) -> None:
    model = tiny_model(task)
    x = tiny_input(task, batch=2, seed=1)
    params = case_params(name, task)

    def call(size: int) -> None:
        explain(model, x, name, target=[1, 0], task=task, batch_size=size, seed=0, **params)

    with scores_as_on_a_gpu():  # on the CPU the wrapper reads the classes: no wait there
        assert waits_per_pass(call) == {}

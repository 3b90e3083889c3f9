"""No wait for the device per pass in ``lime.lime`` (issue 19): counted without a GPU
by ``esegeta_core.testing.syncs`` at 1 and 4 samples per pass."""

from __future__ import annotations

import pytest

from esegeta_core import explain
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.testing.syncs import case_params, scores_as_on_a_gpu, waits_per_pass


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_no_wait_for_the_device_per_pass(task: str) -> None:
    model = tiny_model(task)
    x = tiny_input(task, batch=2, seed=1)

    def call(size: int) -> None:
        explain(
            model, x, "lime.lime", target=[1, 0], task=task, batch_size=size, random_seed=0,
            **case_params("lime.lime", task),
        )  # fmt: skip

    with scores_as_on_a_gpu():  # on the CPU the wrapper reads the classes: no wait there
        assert waits_per_pass(call) == {}

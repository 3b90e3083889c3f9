"""No wait for the device per pass (issue 19): the perturbation engines make on the host
only what a call needs once; what they decide per pass (slots, items, steps, channels)
reaches the device without a copy from pageable memory (``esegeta_core.runtime.
indices``). Counted without a GPU by ``esegeta_core.testing.syncs``: the operations
that wait on CUDA, at 1 and at 4 inputs per pass, must not differ in number."""

from __future__ import annotations

import pytest
import torch

from esegeta_core import explain
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.testing.syncs import PASS_CASES, case_params, host_waits, waits_per_pass

CASES = sorted(name for name in PASS_CASES if name.startswith("captum."))


@pytest.mark.parametrize("name", CASES)
def test_no_wait_for_the_device_per_pass(name: str) -> None:
    model = tiny_model()
    x = tiny_input(batch=2, seed=1)

    params = case_params(name, "classification")

    def call(size: int) -> None:
        explain(model, x, name, target=[1, 0], perturbations_per_eval=size, seed=0, **params)

    assert waits_per_pass(call) == {}


def test_the_count_sees_a_wait_per_pass() -> None:
    """The counter itself: an index list made with torch.tensor in every pass is seen
    as one wait per pass."""

    def call(size: int) -> None:
        for _ in range(0, 8, size):
            torch.arange(4)[torch.tensor([0, 1])]

    assert waits_per_pass(call) == {"aten.lift_fresh.default": 6}
    with host_waits() as seen:
        torch.arange(4).sum().item()
    assert seen == {"aten._local_scalar_dense.default": 1}

"""``auto_batch=True`` with patches runs the pass planner, as for a whole input: each
patch batch's perturbation passes are planned (one plan per patch shape, cached per
network), and the explanation's params record the plan. Sized for memory alone, a 3D
U-Net's occlusion ran every perturbation of a 48^3 patch in one pass, 12% slower than
without ``auto_batch`` (``benchmarks/bench_patch_planning.py``, issue 19)."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from pydantic import Field

import esegeta_core as ec
from esegeta_core import Explainer, MethodParams, hookimpl
from esegeta_core.runtime.batching import MAX_PASS_INPUTS
from esegeta_core.testing import PassRecorder, tiny_input, tiny_model
from esegeta_core.testing.environment import require_method
from esegeta_core.testing.plans import fresh_plans  # noqa: F401  (autouse)

PATCHES = {"size": 8, "overlap": 0, "mode": "average", "batch_size": 2}


@pytest.mark.parametrize("rank", [2, 3])
def test_auto_batch_with_patches_plans_the_passes_and_records_the_plan(rank: int) -> None:
    name = require_method("captum.occlusion")
    net = PassRecorder(tiny_model("segmentation", rank))
    x = tiny_input("segmentation", rank, batch=1, size=16)
    args = {"window": 2, "strides": 2, "task": "segmentation", "patches": PATCHES}
    default = ec.explain(net, x, name, 0, progress=False, **args)
    assert default.attributions.abs().amax() > 0
    net.sizes.clear()
    planned = ec.explain(net, x, name, 0, progress=False, auto_batch=True, **args)
    plan = planned.extras["pass_plan"]
    assert plan["inputs_per_pass"] >= 1
    # Captum's perturbations_per_eval counts copies of each of a call's 2 patches
    assert planned.params.perturbations_per_eval == max(1, plan["inputs_per_pass"] // 2)
    # passes as the planner ran them, never the count handed to it at once
    assert max(net.sizes) < MAX_PASS_INPUTS
    torch.testing.assert_close(planned.attributions, default.attributions, rtol=1e-4, atol=1e-6)


class SendsParams(MethodParams):
    batch_size: int = Field(4, ge=1, description="Inputs per call of the model.")


class SendsAll(Explainer[SendsParams]):
    """Scores 40 copies of its input, ``batch_size`` per call of the model, without
    building its passes itself: under ``auto_batch`` the core splits its calls."""

    name = "sends.all"
    batch_params = ("batch_size",)
    pass_params = ("batch_size",)
    pass_unit = "pass"
    calls: ClassVar[list[int]] = []

    def attribute(self, model, inputs, target, params):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            copies = inputs[:1].expand(40, *inputs.shape[1:])
            for start in range(0, 40, params.batch_size):
                SendsAll.calls.append(min(params.batch_size, 40 - start))
                model(copies[start : start + params.batch_size])
        return inputs * 1.0


class SendsPlugin:
    @hookimpl
    def esegeta_register_methods(self):  # type: ignore[no-untyped-def]
        return [SendsAll]


def test_a_method_that_sends_big_batches_is_split_patch_by_patch(monkeypatch) -> None:
    """A method that does not build its own passes gets every input that fits per call,
    and the planner's splitter runs each patch batch's calls as planned passes, its
    plan shared over the patches (the activations' memory capped at 8 inputs per pass,
    so that a search climbing on this tiny model cannot reach the 40 sent at once)."""
    from esegeta_core.runtime import batching

    monkeypatch.setattr(batching, "MAX_BATCH", 8)
    ec.register_plugin(SendsPlugin(), "sends")
    SendsAll.calls.clear()
    try:
        net = PassRecorder(tiny_model("segmentation", 3))
        x = tiny_input("segmentation", 3, batch=1, size=16)
        e = ec.explain(
            net, x, "sends.all", 1, task="segmentation", patches=PATCHES, auto_batch=True,
            progress=False,
        )  # fmt: skip
    finally:
        ec.unregister_plugin("sends")
    plan = e.extras["pass_plan"]
    assert SendsAll.calls and min(SendsAll.calls) == 40  # all at once, per patch batch
    # split by the planner: its search and plan within the cap, never the 40 at once
    assert max(net.sizes) <= 8 and plan["inputs_per_pass"] <= 8
    assert e.params.batch_size == plan["inputs_per_pass"]

"""Score-CAM and Ablation-CAM under ``explain(auto_batch=True)``: their own passes
(masked inputs, layer replay) planned by the core's pass planner, the maps equal to a
fixed batch size, the plan recorded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import esegeta_core as ec
from esegeta_core.model_state import count_hooks
from esegeta_core.runtime import passes
from esegeta_core.testing.plans import fresh_plans  # noqa: F401  (autouse)


def resnet18() -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=5).eval()


def cnn3d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 96, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(96, 3),
    ).eval()  # fmt: skip


CASES = [
    (resnet18, (2, 3, 32, 32), "layer2", [1, 4]),  # 128 channels per item
    (cnn3d, (2, 1, 8, 8, 8), "3", [0, 2]),  # 96 channels per item
]


@pytest.mark.parametrize(("build", "shape", "layer", "target"), CASES)
@pytest.mark.parametrize("method", ["cnnvis.score_cam", "cnnvis.ablation_cam"])
def test_planned_passes_give_the_maps_of_a_fixed_batch(build, shape, layer, target, method):
    model = build()
    torch.manual_seed(1)
    x = torch.rand(*shape)
    fixed = ec.explain(model, x, method, target, layer=layer, batch_size=5, progress=False)
    planned = ec.explain(model, x, method, target, layer=layer, auto_batch=True, progress=False)
    torch.testing.assert_close(planned.attributions, fixed.attributions, rtol=1e-4, atol=1e-6)
    plan = planned.extras["pass_plan"]
    assert plan["inputs_per_pass"] >= 1 and plan["channels_last"] in (True, False)
    assert "pass_plan" not in fixed.extras  # a fixed batch_size is not planned
    assert count_hooks(model) == 0 and not model.training


def test_score_cam_plans_are_cached_with_the_network():
    model = cnn3d()
    # 16 items x 96 channels: enough passes for the climb to end whatever it measures
    x = torch.rand(16, 1, 8, 8, 8)
    first = ec.explain(model, x, "cnnvis.score_cam", 1, layer="3", auto_batch=True)
    again = ec.explain(model, x, "cnnvis.score_cam", 1, layer="3", auto_batch=True)
    assert first.extras["pass_plan"]["measured_now"]
    assert not again.extras["pass_plan"]["measured_now"]
    assert again.extras["pass_plan"] == {**first.extras["pass_plan"], "measured_now": False}
    ((key, _plan),) = passes._plans[model].items()
    assert key[0] == "forward"  # whole passes: shared with the splitter
    torch.testing.assert_close(again.attributions, first.attributions)

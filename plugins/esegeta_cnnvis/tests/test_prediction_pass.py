"""A CAM without gradients (Score-CAM, Ablation-CAM) makes the core's prediction pass
(``target=None``) its own capture pass: the network runs once less per call, with the
same maps as with the target given."""

from __future__ import annotations

import pytest
import torch

import esegeta_core as ec
from esegeta_core.testing import tiny_input, tiny_model


@pytest.mark.parametrize(
    ("method", "params", "extra_passes"),
    [
        ("cnnvis.ablation_cam", {"layer": "features.conv2"}, 0),
        ("cnnvis.score_cam", {"layer": "features.conv2"}, 0),
        ("cnnvis.ablation_cam", {"layer": ["features.conv1", "features.conv2"]}, 0),
        # gradients: the prediction pass cannot serve (no graph): the core runs its own
        ("cnnvis.grad_cam", {"layer": "features.conv2"}, 1),
    ],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_the_prediction_pass_is_the_capture_pass(method, params, extra_passes, batch) -> None:
    """target=None costs no pass of the network beyond what the given target costs
    (before: one more, the core's prediction pass), and gives the same map."""
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=batch)
    stem: list[int] = []
    handle = model.features.conv1.register_forward_hook(lambda *_: stem.append(1))
    ec.explain(model, x, method, **params)  # a new model's probes, cached with it
    stem.clear()
    found = ec.explain(model, x, method, **params)
    passes_found = len(stem)
    stem.clear()
    given = ec.explain(model, x, method, target=found.target, **params)
    handle.remove()
    assert passes_found == len(stem) + extra_passes
    torch.testing.assert_close(found.attributions, given.attributions, rtol=0, atol=0)
    with torch.no_grad():
        assert torch.equal(found.target, model(x).argmax(1))

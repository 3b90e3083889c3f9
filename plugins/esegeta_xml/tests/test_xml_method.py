"""``xml.explainer`` through ``explain()``: the joint model's own map, 2D and 3D, the
model left as found; any other model is a clear error (so the core's generic
conformance cases on plain tiny models do not apply)."""

from __future__ import annotations

import pytest
import torch

from esegeta_core import explain, list_methods
from esegeta_core.errors import InvalidModelError, InvalidParamsError
from esegeta_core.testing import model_snapshot, tiny_input, tiny_model


@pytest.mark.parametrize("rank", [2, 3])
def test_explain_returns_the_explainers_map_and_leaves_the_model_as_found(rank, tiny_joint):
    model = tiny_joint(rank)
    model.train()  # an unusual state, as the conformance suite does
    next(model.parameters()).requires_grad_(False)
    before = model_snapshot(model)
    x = torch.randn((2, 3) + (12,) * rank)
    e = explain(model, x, "xml.explainer", progress=False)
    second = explain(model, x, "xml.explainer", target=1, progress=False)
    after = model_snapshot(model)
    for key in ("modes", "requires_grad", "grads", "hooks"):
        assert after[key] == before[key], key
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    model.eval()
    with torch.no_grad():
        logits, z = model.forward_with_explanation(x)
    assert e.attributions.shape == (2, 1) + (12,) * rank
    assert torch.allclose(e.attributions, z) and torch.allclose(e.extras["scores"], logits)
    assert torch.equal(e.target, logits.argmax(1))
    assert float(e.attributions.min()) >= 0 and float(e.attributions.max()) < 1
    assert torch.allclose(e.saliency(), z)  # one channel, input resolution
    assert torch.equal(second.attributions, e.attributions)  # one map whatever the target


def test_patches_and_unknown_parameters(tiny_joint):
    model = tiny_joint(2)
    x = torch.randn(1, 3, 32, 32)
    e = explain(model, x, "xml.explainer", patches={"size": 16, "overlap": 0}, progress=False)
    assert e.attributions.shape == (1, 1, 32, 32)
    with pytest.raises(InvalidParamsError, match="xml.explainer"):
        explain(model, x, "xml.explainer", n_steps=3)


def test_capabilities_are_listed():
    info = next(m for m in list_methods(plugin="xml"))
    assert info.name == "xml.explainer" and info.ranks == (2, 3) and not info.needs_layer
    assert info.paper == "https://doi.org/10.1016/j.patrec.2020.04.004"
    assert "ExplainerClassifier" in info.description or "trained jointly" in info.description


def test_generic_conformance_models_get_a_clear_error(case):
    """The conformance suite's tiny models are plain classifiers/segmenters: xml.explainer
    refuses them, naming what it needs and what to use instead."""
    model = tiny_model(case.task, case.rank)
    x = tiny_input(case.task, case.rank)
    before = model_snapshot(model)
    with pytest.raises(InvalidModelError) as info:
        explain(model, x, case.method, task=case.task, progress=False)
    message = str(info.value)
    assert "'xml.explainer'" in message and "plugin 'xml'" in message
    assert "ExplainerClassifier" in message and "esegeta xml train" in message
    assert "cnnvis.grad_cam" in message
    assert model_snapshot(model)["hooks"] == before["hooks"]

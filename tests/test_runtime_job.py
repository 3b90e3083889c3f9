"""The runtime's job, run directly: what ``explain()`` hands it once the call is checked
(the method, the model, the options) and what it gives back, with the model restored."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import esegeta_core as ec
from esegeta_core.devices import model_device
from esegeta_core.model_state import count_hooks
from esegeta_core.runtime.job import Job, JobResult, JobSpec
from esegeta_core.runtime.layer_setup import resolve_layers, token_hint
from esegeta_core.runtime.model_checks import blame_input, check_scores
from esegeta_core.runtime.patches import PatchSpec
from esegeta_core.testing import tiny_input, tiny_model


def _spec(name: str, model: nn.Module, **options: Any) -> JobSpec:
    cls = ec.get_registry().get(name)
    return JobSpec(cls, "demo", model, model_device(model), **options)


def _params(name: str, **params: object) -> ec.MethodParams:
    return ec.validate_params(ec.get_registry().get(name), params)


def test_a_job_gives_the_same_result_as_explain(demo):
    model, x = tiny_model(), tiny_input()
    done = Job(_spec("demo.grad_x_input", model)).run(x, None, _params("demo.grad_x_input"))
    assert isinstance(done, JobResult)
    e = ec.explain(model, x, "demo.grad_x_input")
    assert torch.equal(done.attributions, e.attributions) and torch.equal(done.target, e.target)
    assert done.params == e.params and done.extras == e.extras == {} and done.seconds >= 0


def test_a_job_runs_patch_by_patch(demo):
    model, x = tiny_model(), tiny_input(size=24)
    spec = _spec("demo.grad_x_input", model, patches=PatchSpec(size=16, overlap=8), progress=False)
    done = Job(spec).run(x, 1, _params("demo.grad_x_input"))
    assert done.attributions.shape == x.shape and done.target.tolist() == [1, 1]


def logits(output: torch.Tensor) -> torch.Tensor:
    return output


def test_a_job_records_the_auto_layer_and_the_output_selector(demo):
    model, x = tiny_model(), tiny_input()
    spec = _spec("demo.layer_mean", model, output=logits)
    done = Job(spec).run(x, None, _params("demo.layer_mean", layer="auto"))
    assert done.extras["layer_auto"] == {"layer": done.params.layer}
    assert done.extras["layer"] == done.params.layer  # the method's own extras
    assert list(done.extras) == ["layer_auto", "layer", "output"]
    assert done.extras["output"] == "logits"


def test_a_failing_method_is_the_plugins_fault_and_the_model_is_restored(demo):
    model, x = tiny_model(), tiny_input()
    model.train()
    hooks = count_hooks(model)
    with pytest.raises(ec.MethodFailedError, match="'demo.broken' \\(plugin 'demo'\\) failed"):
        Job(_spec("demo.broken", model)).run(x, None, _params("demo.broken"))
    assert model.training and count_hooks(model) == hooks


def test_a_model_failing_alone_is_the_inputs_fault(demo):
    with pytest.raises(ec.InvalidInputError, match="forward pass failed on an input"):
        Job(_spec("demo.broken", tiny_model())).run(
            torch.rand(2, 3, 1, 1), None, _params("demo.broken")
        )


def test_check_scores_refuses_what_is_not_batch_by_classes():
    x = torch.rand(2, 3, 8, 8)
    scores = torch.rand(2, 4)
    assert check_scores(scores, x, "classification", "m") is scores
    with pytest.raises(ec.InvalidModelError, match="pass task='segmentation'"):
        check_scores(torch.rand(2, 4, 8, 8), x, "classification", "m")
    with pytest.raises(ec.InvalidModelError, match="returned dict"):
        check_scores({"out": scores}, x, "classification", "m")
    check_scores(torch.rand(6, 4), x, "classification", "m", batch=False)  # steps per item


def test_blame_input_returns_when_the_model_runs_alone():
    model = tiny_model()
    x = tiny_input()
    blame_input(model, x[:1], x, "m", RuntimeError("the method's own bug"))  # no raise


def test_resolve_layers_replaces_auto_once_and_token_hints_name_the_layer(demo):
    model, x = tiny_model(), tiny_input()
    cls = ec.get_registry().get("demo.layer_mean")
    params, chosen = resolve_layers(cls, _params("demo.layer_mean", layer="auto"), model, model, x)
    assert chosen == {"layer": params.layer} and params.layer != "auto"
    assert token_hint({}) == ""
    assert "'blocks.11'" in token_hint({"blocks.11": {"extra_tokens": 1}})
    # a layer layer='auto' chose is already the advised one: no advice to go there
    assert token_hint({"blocks.11": {"extra_tokens": 1}}, auto={"blocks.11"}) == ""

"""Capabilities checked before the model runs: ``tasks`` (a method that explains one task
refuses the other, names the methods that explain it, and is tested on its claim only)
and ``min_batch`` (a method that compares the items of a batch refuses fewer)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import esegeta_core as ec
from esegeta_core import Explainer, hookimpl
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.testing.conformance import conformance_cases


class ClassifiersOnly(Explainer):
    name = "tasky.classifiers_only"
    family = "perturbation"
    tasks = ("classification",)
    forward_only = True

    def attribute(self, model: Any, inputs: Any, target: Any, params: Any) -> torch.Tensor:
        with torch.no_grad():
            score = model(inputs).gather(1, target.view(-1, 1)).view(-1, 1, 1, 1)
        return inputs * score


class Pairs(Explainer):
    name = "tasky.pairs"
    family = "perturbation"
    min_batch = 2

    def attribute(self, model: Any, inputs: Any, target: Any, params: Any) -> torch.Tensor:
        return inputs - inputs.flip(0)


class Detection(Explainer):
    name = "tasky.detection"
    tasks = ("detection",)

    def attribute(self, model: Any, inputs: Any, target: Any, params: Any) -> torch.Tensor:
        return inputs


class TaskyPlugin:
    def __init__(self, methods: list[type[Explainer]]) -> None:
        self.methods = methods

    @hookimpl
    def esegeta_register_methods(self) -> list[type[Explainer]]:
        return self.methods


@pytest.fixture
def tasky() -> Iterator[None]:
    ec.register_plugin(TaskyPlugin([ClassifiersOnly, Pairs]), "tasky")
    try:
        yield
    finally:
        ec.unregister_plugin("tasky")


def test_a_task_the_method_does_not_claim_is_refused_before_the_model_runs(tasky) -> None:
    model, x = tiny_model("segmentation", 2), tiny_input("segmentation", 2)
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ec.NotApplicableError) as info:
        ec.explain(model, x, "tasky.classifiers_only", target=0, task="segmentation")
    assert isinstance(info.value, ec.EsegetaError)
    message = str(info.value)
    assert "'tasky.classifiers_only' (plugin 'tasky')" in message
    assert "classification models only, not segmentation" in message
    assert (
        "Methods that do: " in message and "tasky.classifiers_only" not in message.split("do: ")[1]
    )
    assert calls == []
    # an unknown task is still refused as such, with the tasks named
    with pytest.raises(ec.InvalidParamsError, match="'classification' or 'segmentation'"):
        ec.explain(model, x, "tasky.classifiers_only", target=0, task="detection")
    classifier, image = tiny_model("classification", 2), tiny_input("classification", 2)
    e = ec.explain(classifier, image, "tasky.classifiers_only", target=1)
    assert e.attributions.abs().sum() > 0


def test_the_claim_is_in_the_catalogue_and_the_conformance_cases(tasky) -> None:
    assert ec.describe_method("tasky.classifiers_only").tasks == ("classification",)
    assert ec.describe_method("captum.saliency").tasks == ("classification", "segmentation")
    cases = [str(c) for c in conformance_cases("tasky") if "classifiers_only" in str(c)]
    assert cases == [
        "tasky.classifiers_only-2d-classification",
        "tasky.classifiers_only-3d-classification",
    ]


def test_a_batch_smaller_than_min_batch_is_refused_before_the_model_runs(tasky) -> None:
    model, x = tiny_model("classification", 2), tiny_input("classification", 2)
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ec.InvalidInputError) as info:
        ec.explain(model, x[:1], "tasky.pairs", target=0)
    message = str(info.value)
    assert "'tasky.pairs' (plugin 'tasky') needs a batch of at least 2 items, got 1" in message
    assert "explains 1 alone: " in message and "tasky.pairs" not in message.split("alone: ")[1]
    assert calls == []
    assert ec.explain(model, x, "tasky.pairs", target=0).attributions.abs().sum() > 0


class NoBatch(Pairs):
    name = "tasky.no_batch"
    min_batch = 0


@pytest.mark.parametrize(
    ("method", "words"),
    [(Detection, ["tasks must be a subset", "detection"]), (NoBatch, ["min_batch", ">= 1"])],
)
def test_a_plugin_claiming_an_impossible_capability_is_refused(method, words) -> None:
    ec.register_plugin(TaskyPlugin([method]), "tasky")
    try:
        failure = ec.get_registry().failures["tasky"]
        assert all(w in failure.error for w in words)
        assert method.name not in ec.get_registry().methods
    finally:
        ec.unregister_plugin("tasky")

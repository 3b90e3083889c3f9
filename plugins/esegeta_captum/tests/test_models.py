"""The parameter models (one per method, declared in esegeta_captum.params) and the
helpers the pieces use: layer shapes, neuron indices, reference counts."""

from __future__ import annotations

import sys

import pytest
import torch
from esegeta_captum.params.pieces import LayerParams, NeuronParams
from esegeta_captum.params.primary import SaliencyParams
from esegeta_captum.primary import Saliency
from esegeta_captum.references import baseline_distribution, reference_count
from esegeta_captum.shapes import full_neuron_index, layer_shape
from torch import nn

from esegeta_core import InvalidParamsError, get_registry
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.toolkit import Call

CAPTUM = sorted(n for n, p in get_registry().plugin_of.items() if p == "captum")


@pytest.mark.parametrize("method", CAPTUM)
def test_every_method_has_a_named_model_in_params(method: str) -> None:
    cls = get_registry().get(method)
    model = cls.Params
    assert model.__name__ == f"{cls.__name__}Params"
    family = "primary" if cls.family not in ("layer", "neuron") else cls.family
    assert model.__module__ == f"esegeta_captum.params.{family}"
    assert getattr(sys.modules[model.__module__], model.__name__) is model


def test_the_type_argument_sets_params() -> None:
    assert Saliency.Params is SaliencyParams


def call(rank: int = 2) -> Call:
    model = tiny_model("classification", rank)
    return Call(model, tiny_input("classification", rank), torch.tensor([0, 1]), "captum.x")


@pytest.mark.parametrize("rank", [2, 3])
def test_layer_shape_of_output_and_input(rank: int) -> None:
    c = call(rank)
    spatial = tuple(c.inputs.shape[2:])
    conv2 = c.layer("features.conv2")
    assert layer_shape(c, conv2, use_input=False) == (8, *(n // 2 for n in spatial))
    assert layer_shape(c, c.layer("features.pool1"), use_input=True) == (8, *spatial)


class Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x[:, :1]


def test_layer_shape_of_a_tuple_output_is_its_first_tensor() -> None:
    model = nn.Sequential(Pair())
    x = tiny_input()
    assert layer_shape(Call(model, x, torch.tensor([0, 1]), "m"), model[0], False) == (3, 16, 16)


def test_layer_shape_of_a_layer_outside_the_forward_pass() -> None:
    c = call()
    with pytest.raises(InvalidParamsError, match="the layer is not used in the model's forward"):
        layer_shape(c, nn.Conv2d(3, 3, 1), use_input=False)


def test_layer_and_neuron_resolve_their_layer() -> None:
    c = call()
    conv2 = c.layer("features.conv2")
    assert LayerParams(layer="features.conv2").init_kwargs(c) == {"layer": conv2}
    neuron = NeuronParams(layer="features.conv2", neuron_selector=(-1,))
    assert neuron.module(c) is conv2
    kwargs = neuron.call_kwargs(c)
    assert kwargs["neuron_selector"] == (7, 4, 4)
    assert kwargs["attribute_to_neuron_input"] is False


def test_full_neuron_index_centres_missing_entries() -> None:
    assert full_neuron_index((2,), (8, 5, 6), "m") == (2, 2, 3)
    assert full_neuron_index((-1, -1), (8, 5, 6), "m") == (7, 4, 3)
    with pytest.raises(InvalidParamsError, match="out of range"):
        full_neuron_index((8,), (8, 5, 6), "m")


@pytest.mark.parametrize(
    "choices", [["zeros"], ["zeros", "blurred"], [0.5, torch.zeros(1, 3, 16, 16), "mean"]]
)
def test_reference_count_matches_the_distribution(choices: list[object]) -> None:
    x = tiny_input(batch=3)
    refs = baseline_distribution(choices, x, 0.0, "m")  # type: ignore[arg-type]
    assert refs.shape[0] == reference_count(choices, tuple(x.shape))  # type: ignore[arg-type]

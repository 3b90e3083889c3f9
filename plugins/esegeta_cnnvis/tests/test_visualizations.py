"""Layer activation with guided backprop, layer visualization, DeepDream and inverted
representation: reference values, objectives improve, filter checks, batching, 3D."""

from __future__ import annotations

import pytest
import torch

from esegeta_core import InvalidParamsError, explain, resolve_layer
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.toolkit import layer_output


def _act(model: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer_output(model, resolve_layer(model, layer), x, method="test", path=layer)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_layer_activation_guided_backprop_equals_captum(task: str) -> None:
    attr = pytest.importorskip("captum.attr")
    model, x = tiny_model(task, 2), tiny_input(task, 2)
    layer = model.conv_layer
    ours = explain(
        model, x, "cnnvis.layer_activation_guided_backprop", task=task, layer=layer, filter=5
    ).attributions
    module = model.get_submodule(layer)
    theirs = attr.NeuronGuidedBackprop(model, module).attribute(
        x.clone(), neuron_selector=lambda out: out[:, 5].flatten(1).sum(1)
    )
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rank", [2, 3])
def test_layer_activation_batch_and_create_graph(rank: int) -> None:
    model, x = tiny_model("segmentation", rank), tiny_input("segmentation", rank)
    kw = {"task": "segmentation", "layer": "encoder.conv2", "filter": 2}
    name = "cnnvis.layer_activation_guided_backprop"
    batched = explain(model, x, name, **kw).attributions
    single = explain(model, x[1:], name, **kw).attributions
    torch.testing.assert_close(batched[1:], single)
    attached = explain(model, x, name, create_graph=True, **kw).attributions
    (g,) = torch.autograd.grad(attached.pow(2).sum(), model.encoder.conv1.weight)
    assert float(g.abs().sum()) > 0


@pytest.mark.parametrize(
    "method",
    [
        "cnnvis.layer_activation_guided_backprop",
        "cnnvis.layer_visualization",
        "cnnvis.deep_dream",
    ],
)
def test_filter_is_checked(method: str) -> None:
    model, x = tiny_model("classification", 2), tiny_input("classification", 2)
    with pytest.raises(InvalidParamsError, match="has 8 channels"):
        explain(model, x, method, layer="features.conv2", filter=8)


@pytest.mark.parametrize("rank", [2, 3])
def test_layer_visualization_raises_the_filter(rank: int) -> None:
    model, x = tiny_model("classification", rank), tiny_input("classification", rank)
    layer, f = "features.conv2", 3
    kw = {"layer": layer, "filter": f, "seed": 0, "tv_weight": 0.01, "blur_sigma": 0.5}
    short = explain(model, x, "cnnvis.layer_visualization", steps=1, **kw).attributions
    long = explain(model, x, "cnnvis.layer_visualization", steps=10, **kw).attributions
    assert tuple(long.shape) == tuple(x.shape)
    before = _act(model, layer, short)[:, f].flatten(1).mean(1)
    after = _act(model, layer, long)[:, f].flatten(1).mean(1)
    assert bool((after > before).all())
    assert float(long.min()) >= float(x.min()) - 1e-6
    assert float(long.max()) <= float(x.max()) + 1e-6


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_deep_dream(task: str, rank: int) -> None:
    model, x = tiny_model(task, rank), tiny_input(task, rank)
    layer = model.conv_layer
    kw = {"task": task, "layer": layer, "filter": 1, "steps": 5}
    dream = explain(model, x, "cnnvis.deep_dream", **kw).attributions
    assert tuple(dream.shape) == tuple(x.shape)
    assert float(_act(model, layer, dream)[:, 1].mean()) > float(_act(model, layer, x)[:, 1].mean())
    single = explain(model, x[:1], "cnnvis.deep_dream", **kw).attributions
    torch.testing.assert_close(dream[:1], single)
    whole = explain(model, x[:1], "cnnvis.deep_dream", task=task, layer=layer, steps=3)
    assert float(_act(model, layer, whole.attributions).pow(2).mean()) > float(
        _act(model, layer, x[:1]).pow(2).mean()
    )


@pytest.mark.parametrize("rank", [2, 3])
def test_inverted_representation_matches_the_layer(rank: int) -> None:
    model, x = tiny_model("classification", rank), tiny_input("classification", rank)
    layer = "features.relu1"
    kw = {"layer": layer, "seed": 0}
    start = explain(model, x, "cnnvis.inverted_representation", steps=1, **kw).attributions
    end = explain(model, x, "cnnvis.inverted_representation", steps=30, **kw).attributions
    reference = _act(model, layer, x)

    def error(img: torch.Tensor) -> float:
        return float((_act(model, layer, img) - reference).pow(2).sum() / reference.pow(2).sum())

    assert error(end) < 0.5 * error(start)


def test_visualizations_reject_missing_layers() -> None:
    model, x = tiny_model("classification", 2), tiny_input("classification", 2)
    with pytest.raises(LookupError, match="conv3"):
        explain(model, x, "cnnvis.deep_dream", layer="features.conv3")

"""captum.neuron_feature_ablation runs on the core's ablation engine with the neuron's
value as the model (esegeta_captum.neuron.NeuronValue): each perturbed input runs only
up to the layer. Its maps equal Captum's NeuronFeatureAblation called directly, in 2D
and 3D, batch 1 and 3, on tiny CNNs and a ResNet-18 (inside a residual block, at a stage
output, at a ReLU the block calls twice), at any pass size and under auto_batch; calls
the engine does not cover go to Captum unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from captum.attr import NeuronFeatureAblation
from esegeta_captum.neuron import NeuronFeatureAblation as Method
from esegeta_captum.neuron import NeuronValue
from esegeta_captum.shapes import full_neuron_index, module_shape
from torch import nn

from esegeta_core import explain, layer_calls
from esegeta_core.errors import InvalidParamsError
from esegeta_core.feature_masks import grid_mask
from esegeta_core.testing import tiny_input, tiny_model

NAME = "captum.neuron_feature_ablation"


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal within 1e-5 relative / 1e-6 absolute, same dtype, and not all zero."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert theirs.abs().max() > 0


def module(model: nn.Module, path: str) -> nn.Module:
    return dict(model.named_modules())[path]


def direct(
    model: nn.Module,
    x: torch.Tensor,
    path: str,
    selector: tuple[int, ...],
    cell: int,
    baselines: Any = 0.0,
    per_eval: int = 1,
) -> torch.Tensor:
    """Captum's map for the neuron esegeta's selector names (trailing entries at the
    centre)."""
    layer = module(model, path)
    full = full_neuron_index(selector, module_shape(model, layer, x, False, NAME), NAME)
    return NeuronFeatureAblation(model, layer).attribute(
        x,
        neuron_selector=full,
        feature_mask=grid_mask(x, cell),
        baselines=baselines,
        perturbations_per_eval=per_eval,
    )


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_explain_equals_captum_at_any_pass_size(
    rank: int, batch: int, engine_only: Callable[..., None]
) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=batch, size=16 if rank == 2 else 8)
    cell = 4 if rank == 2 else 2
    cases = [("features.conv2", (1,)), ("features.bn1", (-2, 3))]
    expected = [direct(model, x, path, sel, cell) for path, sel in cases]
    engine_only(NeuronFeatureAblation)
    runs = [{"auto_batch": True}] + [{"perturbations_per_eval": n} for n in (1, 5, 32)]
    runs += [{"target": 0}, {"target": 0, "auto_batch": True}]  # no prediction pass counts
    for (path, selector), theirs in zip(cases, expected, strict=True):
        for kwargs in runs:
            ours = explain(
                model, x, NAME, layer=path, neuron_selector=selector, grid_cell=cell, **kwargs
            )
            close(ours.attributions, theirs)


@pytest.mark.parametrize("batch", [1, 3])
def test_resnet18_equals_captum(batch: int, engine_only: Callable[..., None]) -> None:
    """Inside a residual block, at a stage output, and at the block's ReLU, which runs
    twice per block (Captum reads its last call, after the skip connection)."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(batch, 3, 48, 48)
    base = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    cases = [("layer1.0.conv2", (3, 5, 7)), ("layer2", (7,)), ("layer1.0.relu", (2, 4, 4))]
    expected = [direct(model, x, path, sel, 12, baselines=base) for path, sel in cases]
    engine_only(NeuronFeatureAblation)
    for (path, selector), theirs in zip(cases, expected, strict=True):
        # a given target: no prediction pass counts the layer's calls, the first pass
        # does (and the block's ReLU runs twice: that pass runs again, stopping there)
        for kwargs in (
            {"auto_batch": True},
            {"perturbations_per_eval": 4},
            {"perturbations_per_eval": 4, "target": 1},
        ):
            ours = explain(
                model, x, NAME, layer=path, neuron_selector=selector, grid_cell=12,
                baselines=base, **kwargs,
            )  # fmt: skip
            close(ours.attributions, theirs)


class Counted(nn.Module):
    """A tiny CNN noting the rows that reach its head, and the rows of each forward
    pass."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        self.calls: list[int] = []
        self.heads: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        h = self.act(self.body(x))
        self.heads.append(h.shape[0])
        return self.head(h)


def test_no_probe_pass_and_only_the_first_pass_goes_past_the_layer() -> None:
    model = Counted().eval()
    x = torch.rand(3, 3, 8, 8)
    mask = grid_mask(x, 4)  # 4 features: 3 + 12 inputs
    kwargs = {"neuron_selector": (1,), "feature_mask": mask, "baselines": 0.0}
    theirs = direct(model, x, "act", (1,), 4)
    model.calls.clear()
    model.heads.clear()
    algorithm = NeuronFeatureAblation(model, model.act)
    ours = Method().run(algorithm, x, {**kwargs, "perturbations_per_eval": 2}, None)
    close(ours, theirs)
    # the first pass goes on after the layer with one row, to see how often it runs
    assert model.heads == [1]
    assert model.calls == [6, 6, 3]  # passes of 6, the later ones stop at the layer


def test_the_prediction_pass_counts_the_layer_so_no_method_pass_runs_whole() -> None:
    """With target=None the job runs the whole model once to find the predicted class;
    that pass counts the layer's calls (esegeta_core.layer_calls), so every pass of the
    method stops at the layer, and reads the neuron on the plain inputs, so only the
    perturbed inputs run again. A given target has no such pass: the first pass runs
    whole, with the plain inputs, as before. The maps are the same either way, and
    equal Captum's."""
    model = Counted().eval()
    x = torch.rand(3, 3, 8, 8)
    theirs = direct(model, x, "act", (1,), 4)
    args = {"layer": "act", "neuron_selector": (1,), "grid_cell": 4, "perturbations_per_eval": 2}
    model.calls.clear()
    model.heads.clear()
    found = explain(model, x, NAME, **args)
    close(found.attributions, theirs)
    # one-item probes of a new model (cached per model), the prediction pass of 3, then
    # the method's passes of 6 perturbed inputs, every one stopped at the layer
    assert model.heads == [1, 1, 3] and model.calls == [1, 1, 3, 6, 6]
    model.calls.clear()
    model.heads.clear()
    given = explain(model, x, NAME, target=found.target, **args)
    assert torch.equal(given.attributions, found.attributions)
    # its first pass counts the calls, going on after the layer with one row
    assert model.heads[-1] == 1 and model.calls[-3:] == [6, 6, 3]
    assert layer_calls.calls(model.act) is None  # the count lived in its job only


def test_a_layer_that_runs_twice_is_read_at_its_last_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(torch.tanh(self.conv(x))).mean((2, 3)))

    torch.manual_seed(0)
    model = Twice().eval()
    x = torch.rand(2, 3, 8, 8)
    value = NeuronValue(model, model.conv, (1,), NAME)
    got = value(x)
    assert value.calls == 2 and value.index == (1, 4, 4)
    assert torch.allclose(got, model.conv(torch.tanh(model.conv(x)))[:, 1, 4, 4])
    assert torch.allclose(value(x), got)
    theirs = direct(model, x, "conv", (1,), 4)
    kwargs = {"neuron_selector": (1,), "feature_mask": grid_mask(x, 4), "baselines": 0.0}
    close(Method().run(NeuronFeatureAblation(model, model.conv), x, kwargs, None), theirs)
    # the prediction pass reads the plain inputs' neuron at the last call too
    found = explain(model, x, NAME, layer="conv", neuron_selector=(1,), grid_cell=4)
    close(found.attributions, theirs)


def test_a_model_that_refuses_one_row_after_the_layer_runs_the_pass_whole() -> None:
    """A skip connection that concatenates the layer's output with an earlier tensor
    refuses the one-row cut of the counting pass: that pass runs again whole, and the
    map is Captum's."""

    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.Tanh()
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.conv(x)
            return self.fc(torch.cat([a, self.act(a)], 1).mean((2, 3)))

    torch.manual_seed(0)
    model = Skip().eval()
    x = torch.rand(2, 3, 8, 8)
    rows: dict[str, list[int]] = {"conv": [], "fc": []}
    for name in rows:
        dict(model.named_modules())[name].register_forward_pre_hook(
            lambda _m, args, name=name: rows[name].append(args[0].shape[0])
        )
    theirs = direct(model, x, "act", (1,), 4)
    found = explain(model, x, NAME, 0, layer="act", neuron_selector=(1,), grid_cell=4)
    close(found.attributions, theirs)
    # the method's one pass (2 plain + 8 perturbed inputs): cut and refused, then whole
    assert rows["conv"][-2:] == [10, 10] and rows["fc"][-1] == 10


@pytest.mark.parametrize("arch", ["swin_t", "vit"])
def test_token_and_channels_last_layers_cut_after_the_view(arch: str) -> None:
    """A given target on a transformer: the layer is read through the core's
    channels-first view, which maps back onto the layer's own output (every row), so
    the counting pass cuts the tap's output instead; the head sees one row, and the map
    equals Captum's at the same neuron in the layer's own layout."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    if arch == "swin_t":
        tv = pytest.importorskip("torchvision")
        model = tv.models.swin_t(weights=None, num_classes=10).eval()
        path, head = "features.3", model.head
        raw = (1, 7, 1)  # (H, W, C) of the neuron (channel 1, row 1, column 7) in (C, H, W)
    else:
        timm = pytest.importorskip("timm")
        model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10).eval()
        path, head = "blocks.0", model.head
        raw = (1 + 3 * 4 + 2, 5)  # (token, C): channel 5, row 3, the centre column 2
    selector = (1, 1, 7) if arch == "swin_t" else (5, 3)
    events: list[tuple[str, int]] = []
    model.register_forward_pre_hook(lambda _m, args: events.append(("in", args[0].shape[0])))
    head.register_forward_pre_hook(lambda _m, args: events.append(("head", args[0].shape[0])))
    found = explain(model, x, NAME, 1, layer=path, neuron_selector=selector, grid_cell=16)
    theirs = NeuronFeatureAblation(model, model.get_submodule(path)).attribute(
        x, neuron_selector=raw, feature_mask=grid_mask(x, 16)
    )
    close(found.attributions, theirs)
    # the method's first pass (more rows than the batch's probes and plain pass): its
    # rows reach the head as one, and that pass runs once
    first = next(i for i, (kind, n) in enumerate(events) if kind == "in" and n > len(x))
    assert events[first + 1] == ("head", 1)
    assert events[first + 2 :] == [] or events[first + 2][0] == "in"


def test_calls_the_engine_does_not_cover_go_to_captum(monkeypatch: pytest.MonkeyPatch) -> None:
    """A callable selector, slices, the neuron's input, a mask in a tuple (its tuple of
    ints completed first): Captum's own result."""
    import esegeta_captum.neuron as neuron

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the engine ran")

    monkeypatch.setattr(neuron, "feature_ablation", refuse)
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=8)
    layer = model.features.conv2
    mask = grid_mask(x, 4)
    plain = {"feature_mask": mask, "baselines": 0.0, "perturbations_per_eval": 3}
    algorithm = NeuronFeatureAblation(model, layer)
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"neuron_selector": lambda out: out[:, 1].sum((1, 2))}, {}),
        ({"neuron_selector": (1, slice(0, 2), 2)}, {}),
        ({"neuron_selector": (1, 2, 2), "attribute_to_neuron_input": True}, {}),
        ({"neuron_selector": (1,), "feature_mask": (mask,)}, {"neuron_selector": (1, 2, 2)}),
    ]
    for call, captum_call in cases:
        kwargs = {**plain, **call}
        ours = Method().run(algorithm, x, kwargs, None)
        theirs = algorithm.attribute(x, **{**kwargs, **captum_call})
        assert torch.equal(ours, theirs)


def test_explain_on_the_neuron_input_is_captums() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=16)
    layer = model.features.bn1
    theirs = NeuronFeatureAblation(model, layer).attribute(
        x, neuron_selector=(1, 8, 8), feature_mask=grid_mask(x, 4), baselines=0.0,
        attribute_to_neuron_input=True, perturbations_per_eval=32,
    )  # fmt: skip
    ours = explain(
        model, x, NAME, layer="features.bn1", neuron_selector=(1,), grid_cell=4,
        attribute_to_neuron_input=True,
    )  # fmt: skip
    close(ours.attributions, theirs)


def test_refusals() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=16)
    with pytest.raises(InvalidParamsError, match="out of range"):
        explain(model, x, NAME, layer="features.conv2", neuron_selector=(9,), grid_cell=8)
    unused = NeuronValue(model, nn.ReLU(), (0,), NAME)
    with pytest.raises(InvalidParamsError, match="not used"):
        unused(x)

"""Model tracing and preparation for rule-based methods: one module per call site, no
in-place activations, functional activations and skip sums as modules, refusals, and
the model exactly as found afterwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esegeta_core import InvalidModelError, NotApplicableError, resolve_layer
from esegeta_core.model_state import ModelState
from esegeta_core.preparation import (
    activation_modules,
    current_preparation,
    prepared,
    rule_kind,
    tapped,
)
from esegeta_core.sites import CallSites, FunctionSite, MergeSite, Probe, Sum
from esegeta_core.testing.zoo import fingerprint_changes, model_fingerprint
from esegeta_core.tracing import categorize, trace_model


class CustomGELU(nn.Module):
    """An activation of its own class, like Hugging Face's GELUActivation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class Block(nn.Module):
    """Reuses one in-place ReLU twice, adds a skip connection in place, and applies a
    functional ReLU: what torchvision's Bottleneck and DenseNet do."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.act = CustomGELU()
        self.scale = nn.Parameter(torch.full((1, width, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        out = self.act(self.conv2(out)) * self.scale
        out += x
        out = self.relu(out)
        return F.relu(out + 0.1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Block()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


class Attention(nn.Module):
    """A product of two activations (attention): no LRP rule splits it."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.k = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)[..., :4]
        weights = torch.softmax(self.q(tokens) @ self.k(tokens).transpose(1, 2), dim=-1)
        return self.fc((weights @ tokens).mean(1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def test_categories() -> None:
    assert categorize("relu", 1) == "activation"
    assert categorize("__iadd__", 2) == "merge"
    assert categorize("add", 1) == "shift"
    assert categorize("mul", 1) == "scale"
    assert categorize("mul", 2) == "product"
    assert categorize("matmul", 2) == "product"
    assert categorize("adaptive_avg_pool2d", 1) == "convex"
    assert categorize("flatten", 1) == "structural"
    assert categorize("exp", 1) == "other"


def test_trace_records_reuse_activations_and_functional_calls() -> None:
    model = _net()
    trace = trace_model(model, torch.rand(2, 3, 8, 8))
    reused = {info.path for info in trace.reused()}
    assert reused == {"block.relu"}
    kinds = {info.path: info.kind for info in trace.leaves.values() if info.calls}
    assert kinds["block.relu"] == "activation"
    assert kinds["block.act"] == "activation"  # found by what it computes, not its class
    assert kinds["block.conv1"] == "other"
    outside = {
        (c.name, c.category, c.module) for c in trace.outside_leaves("activation", "merge", "scale")
    }
    assert ("relu", "activation", "block") in outside
    assert ("add_", "merge", "block") in outside  # `out += x`
    assert ("mul", "scale", "block") in outside
    assert trace.activation_functions() == {"relu": 3, "gelu": 1}
    # parameters are as found, no hook left
    assert all(p.requires_grad for p in model.parameters())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


@pytest.mark.parametrize("level", ["gates", "relevance"])
def test_prepared_model_computes_the_same(level: str) -> None:
    model = _net()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    before = model_fingerprint(model)
    with prepared(model, x, level, method="test.m") as prep:
        assert isinstance(model.block.relu, CallSites)
        assert len(model.block.relu.sites) == 2
        assert not model.block.relu.sites[0].inplace
        assert prep.split == {"block.relu": 2}
        with torch.no_grad():
            got = model(x)
            again = model(x)  # the call sites reset on every forward pass
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.allclose(again, want, atol=1e-6)
        acts = activation_modules(model)
        assert model.block.act in acts
        assert model.block.relu.sites[1] in acts
        functional = [m for m in acts if isinstance(m, FunctionSite)]
        assert [m.name for m in functional] == ["relu"]
        merges = [m for m in model.modules() if isinstance(m, MergeSite)]
        assert len(merges) == (1 if level == "relevance" else 0)
        if level == "relevance":
            assert rule_kind(merges[0].sum) == "sum"
            scales = [m for m in model.modules() if isinstance(m, FunctionSite) and m.name == "mul"]
            assert len(scales) == 1 and rule_kind(scales[0]) == "pass"
    assert current_preparation(model) is None
    assert fingerprint_changes(before, model_fingerprint(model)) == []
    assert isinstance(model.block.relu, nn.ReLU) and model.block.relu.inplace


def test_every_call_site_runs_its_own_module_once() -> None:
    model = _net()
    x = torch.rand(1, 3, 8, 8)
    with prepared(model, x, "gates", method="test.m"):
        calls: dict[int, int] = {}
        handles = [
            m.register_forward_hook(
                lambda m, a, o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1)
            )
            for m in activation_modules(model)
        ]
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()
        assert len(calls) == 4 and set(calls.values()) == {1}


def test_relevance_refuses_products_before_running() -> None:
    model = Attention().eval()
    with (
        pytest.raises(NotApplicableError) as info,
        prepared(model, torch.rand(1, 4, 4, 4), "relevance", method="test.lrp"),
    ):
        pass
    assert "matmul in Attention.forward" in str(info.value)
    assert "Method 'test.lrp'" in str(info.value)
    with prepared(model, torch.rand(1, 4, 4, 4), "gates", method="test.m"):
        pass  # gates accept products: the gradient flows through them


def test_a_data_dependent_forward_is_refused_not_misrouted() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.conv(x))
            if x.mean() > 0.5:
                y = F.relu(y - 0.1)
            return y.mean((2, 3))

    model = Branchy().eval()
    with prepared(model, torch.zeros(1, 1, 4, 4), "gates", method="test.m"):
        model(torch.zeros(1, 1, 4, 4))
        with pytest.raises(RuntimeError, match="differs from the one esegeta traced"):
            model(torch.ones(1, 1, 4, 4))


def test_torchscript_is_refused() -> None:
    model = torch.jit.script(_net())
    with (
        pytest.raises(InvalidModelError, match="TorchScript"),
        prepared(model, torch.rand(1, 3, 8, 8), "gates", method="test.m"),
    ):
        pass


def test_tapped_layer_keeps_what_a_method_records() -> None:
    class InPlaceAfter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.features(x), inplace=True).mean((2, 3))

    model = InPlaceAfter().eval()
    x = torch.randn(1, 1, 6, 6)
    seen = []
    conv = model.features
    with tapped(model, [conv]) as taps:
        layer = resolve_layer(model, "features")
        assert layer is conv  # the tap is transparent to layer paths
        assert taps[id(conv)].inner is conv and model.features is taps[id(conv)]
        handle = layer.register_forward_hook(lambda m, a, o: seen.append(o))
        model(x)
        handle.remove()
    assert bool((seen[0] < 0).any())  # the in-place ReLU downstream did not reach it
    assert isinstance(model.features, nn.Conv2d)
    assert rule_kind(Sum()) == "sum" and rule_kind(Probe()) is None


def test_model_state_removes_attributes_a_method_left() -> None:
    model = _net()
    size = len(__import__("pickle").dumps(model))
    state = ModelState.capture(model)
    model.block.relu.input = torch.rand(100, 100)
    model.block.conv1.rule = object()
    model.block._modules["extra"] = nn.Identity()
    model.fc.weight.requires_grad_(False)
    state.restore()
    assert not hasattr(model.block.relu, "input") and not hasattr(model.block.conv1, "rule")
    assert "extra" not in model.block._modules
    assert model.fc.weight.requires_grad
    assert len(__import__("pickle").dumps(model)) == size


def test_model_state_restores_tables_empty_or_not_in_few_objects() -> None:
    """A table that was empty is emptied again (a buffer registered on a leaf), a
    replaced entry is put back (by identity), and the snapshot takes a few objects per
    module for the garbage collector (it lives through the whole call: on a 3D
    DenseNet's 495 modules the old one took about 16 per module)."""
    import gc

    model = _net()
    weight, relu = model.fc.weight, model.block.relu
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        state = ModelState.capture(model)
        per_module = (len(gc.get_objects()) - before) / len(list(model.modules()))
    finally:
        gc.enable()
    assert per_module <= 5
    relu.register_buffer("extra", torch.zeros(2))
    model.fc._parameters["weight"] = nn.Parameter(weight.detach().clone())
    model.fc.register_forward_hook(lambda m, a, o: None)
    state.restore()
    assert "extra" not in relu._buffers and not relu._buffers
    assert model.fc.weight is weight and not model.fc._forward_hooks
    # two children swapped and put back in the other order: the values, in order, are
    # the very objects the snapshot holds, under other keys
    pair = nn.Sequential()
    pair.a, pair.b = nn.ReLU(), nn.Tanh()
    a, b = pair.a, pair.b
    state = ModelState.capture(pair)
    del pair._modules["a"], pair._modules["b"]
    pair._modules["b"], pair._modules["a"] = a, b
    state.restore()
    assert pair.a is a and pair.b is b


def test_a_module_held_by_two_parents_gets_one_object_per_holder() -> None:
    class Aliased(nn.Module):  # MONAI's SegResNet holds act_mod here and in conv_final
        def __init__(self) -> None:
            super().__init__()
            self.act_mod = nn.ReLU()
            self.final = nn.Sequential(nn.Conv2d(3, 2, 3), self.act_mod)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.final(x).mean((2, 3))

    model = Aliased().eval()
    x = torch.rand(1, 3, 6, 6)
    with prepared(model, x, "gates", method="test.m"):
        assert model.final[1] is not model.act_mod
        assert rule_kind(model.final[1]) == "activation"
        assert len({id(m) for m in model.modules()}) == len(
            list(model.named_modules(remove_duplicate=False))
        )
    assert model.final[1] is model.act_mod

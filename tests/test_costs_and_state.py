"""Costs are bounded before anything heavy runs (passes and memory, for every method with
a count), the user's model comes back exactly as it was (attributes, tensor objects,
pickled size), and layer methods on a layer without a spatial output are refused
before running, naming the layer, its shape and the fix."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import esegeta_core as ec
from esegeta_core import Explainer, InvalidParamsError, explain, hookimpl
from esegeta_core import checks as checks_module
from esegeta_core.model_state import ModelState
from esegeta_core.testing import Case, run_conformance, tiny_input, tiny_model
from esegeta_core.testing.environment import require_method

GiB = 2**30


def _installed(*plugins: str) -> None:
    for plugin in plugins:
        pytest.importorskip(f"esegeta_{plugin}")


@pytest.fixture
def free_memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Pretend the device has a fixed amount of free memory (1 GiB unless set)."""
    state = {"bytes": GiB}
    monkeypatch.setattr(checks_module, "device_free_bytes", lambda device: state["bytes"])
    yield state


@pytest.fixture
def never_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every method's ``attribute`` records its name instead of running: a refusal must
    come before any of it."""
    ran: list[str] = []

    def spy(self: Explainer, *args: Any, **kwargs: Any) -> torch.Tensor:
        ran.append(self.name)
        raise AssertionError(f"{self.name} ran although it should have been refused")

    for cls in ec.plugin.manager.get_registry().methods.values():
        if "attribute" in vars(cls):
            monkeypatch.setattr(cls, "attribute", spy)
        for base in cls.__mro__[1:]:
            if "attribute" in vars(base) and base is not Explainer:
                monkeypatch.setattr(base, "attribute", spy)
    yield ran


# -- 1. costs ---------------------------------------------------------------------------

REPORTED = [
    ("captum", "captum.integrated_gradients", {"n_steps": 10**9}, "n_steps=1000000000"),
    ("cnnvis", "cnnvis.rise", {"num_masks": 10**9}, "num_masks=1000000000"),
    ("lime", "lime.lime", {"num_samples": 10**9}, "num_samples=1000000000"),
]


@pytest.mark.parametrize(
    ("plugin", "method", "params", "named"), REPORTED, ids=[c[1] for c in REPORTED]
)
def test_the_reported_probes_are_refused_quickly(
    plugin: str, method: str, params: dict[str, Any], named: str, never_runs: list[str]
) -> None:
    _installed(plugin)
    start = time.perf_counter()
    with pytest.raises(InvalidParamsError) as info:
        explain(tiny_model(), tiny_input(), method, 0, **params)
    assert time.perf_counter() - start < 20
    text = str(info.value)
    assert named in text and "2,000,000,000 forward passes" in text
    assert "force=True" in text and "`force: true`" in text
    assert not never_runs


def test_a_count_that_does_not_apply_is_not_named() -> None:
    _installed("captum")
    with pytest.raises(InvalidParamsError) as info:
        explain(tiny_model(), tiny_input(), "captum.integrated_gradients", 0, n_steps=10**9)
    assert "nt_samples" not in str(info.value)  # no noise tunnel: its copies do not apply


MEMORY = [
    # Captum's Gauss-Legendre nodes: an n_steps x n_steps table (6 GB here)
    (
        "captum",
        "captum.integrated_gradients",
        {"n_steps": 20_000},
        ["n_steps=20000", "Gauss-Legendre", "riemann_trapezoid"],
    ),
    # every path point in one batch (internal_batch_size=None)
    (
        "captum",
        "captum.integrated_gradients",
        {"n_steps": 60_000, "integration_method": "riemann_trapezoid"},
        ["n_steps=60000", "120,000 inputs", "set internal_batch_size"],
    ),
    # the noise tunnel's copies, all at once
    (
        "captum",
        "captum.saliency",
        {"noise_tunnel": "smoothgrad", "nt_samples": 60_000},
        ["nt_samples=60000", "set nt_samples_batch_size"],
    ),
    # GradientSHAP's samples, all at once
    ("captum", "captum.gradient_shap", {"n_samples": 60_000}, ["n_samples=60000"]),
    # LIME's sample matrix (num_samples x segments)
    (
        "lime",
        "lime.lime",
        {"num_samples": 90_000, "n_segments": 400, "segmentation": "slic"},
        ["num_samples=90000", "own buffers", "Lower num_samples"],
    ),
    # RISE's masks of one pass
    (
        "cnnvis",
        "cnnvis.rise",
        {"num_masks": 50_000, "batch_size": 50_000},
        ["num_masks=50000", "lower batch_size (now 50000)"],
    ),
    # cnnvis integrated gradients: path points at once and the quadrature's matrices
    (
        "cnnvis",
        "cnnvis.integrated_gradients",
        {"n_steps": 20_000},
        ["n_steps=20000", "integration='gausslegendre'"],
    ),
    # TorchRay's perturbation pyramid
    (
        "torchray",
        "torchray.extremal_perturbation",
        {"num_levels": 2_000_000, "max_iter": 1},
        ["num_levels=2000000"],
    ),
]


@pytest.mark.parametrize(
    ("plugin", "method", "params", "named"), MEMORY, ids=[f"{c[1]}-{c[3][0]}" for c in MEMORY]
)
def test_calls_that_cannot_fit_in_memory_are_refused_before_running(
    plugin: str,
    method: str,
    params: dict[str, Any],
    named: list[str],
    free_memory: dict[str, int],
    never_runs: list[str],
) -> None:
    _installed(plugin)
    start = time.perf_counter()
    with pytest.raises(InvalidParamsError) as info:
        explain(tiny_model(), tiny_input(), method, 0, **params)
    assert time.perf_counter() - start < 20
    text = str(info.value)
    for part in named:
        assert part in text, text
    assert "at once" in text and "1.0 GB free" in text and "force=True" in text
    assert not never_runs


def test_sane_calls_are_not_refused(free_memory: dict[str, int]) -> None:
    _installed("captum", "cnnvis", "lime")
    model, x = tiny_model(), tiny_input()
    free_memory["bytes"] = 20 * 2**20  # 20 MB: enough for the defaults on a tiny model
    explain(model, x, "captum.integrated_gradients", 0)
    explain(model, x, "captum.saliency", 0, noise_tunnel="smoothgrad", nt_samples=4)
    explain(model, x, "cnnvis.rise", 0, num_masks=64)
    explain(model, x, "lime.lime", 0, num_samples=50)
    # a path too large at once fits in steps of internal_batch_size
    path = {"n_steps": 200, "integration_method": "riemann_trapezoid"}
    with pytest.raises(InvalidParamsError, match="set internal_batch_size"):
        explain(model, x, "captum.integrated_gradients", 0, **path)
    explain(model, x, "captum.integrated_gradients", 0, internal_batch_size=40, **path)
    # auto_batch sizes the unset internal_batch_size to fit: not refused
    explain(model, x, "captum.integrated_gradients", 0, auto_batch=True, **path)


def test_force_lets_a_large_but_feasible_call_through(
    monkeypatch: pytest.MonkeyPatch, free_memory: dict[str, int]
) -> None:
    _installed("captum")
    model, x = tiny_model(), tiny_input()
    monkeypatch.setattr(checks_module, "MAX_PASSES", 10)
    kwargs = {"noise_tunnel": "smoothgrad", "nt_samples": 8}
    with pytest.raises(InvalidParamsError, match="nt_samples=8"):
        explain(model, x, "captum.saliency", 0, **kwargs)
    assert explain(model, x, "captum.saliency", 0, force=True, **kwargs).attributions.shape == (
        x.shape
    )
    free_memory["bytes"] = 1024
    with pytest.raises(InvalidParamsError, match="1.0 KB free"):
        explain(model, x, "captum.integrated_gradients", 0, n_steps=4)
    assert explain(model, x, "captum.integrated_gradients", 0, n_steps=4, force=True)


COUNTED = [
    ("captum", "captum.occlusion", {"window": 1, "strides": 1}, "window=1, strides=1"),
    ("captum", "captum.feature_ablation", {"grid_cell": 1}, "grid_cell=1"),
    ("captum", "captum.feature_permutation", {"grid_cell": 1}, "grid_cell=1"),
    (
        "captum",
        "captum.shapley_value_sampling",
        {"grid_cell": 4, "n_samples": 2},
        "grid_cell=4, n_samples=2",
    ),
    ("captum", "captum.shapley_values", {}, "shapley_values"),
    ("captum", "captum.deep_lift_shap", {"baselines": ["blurred"] * 8}, "baselines"),
    ("captum", "captum.layer_feature_ablation", {"layer_mask": "unit"}, "layer_mask"),
    (
        "captum",
        "captum.neuron_feature_ablation",
        {"grid_cell": 1, "neuron_selector": (0,)},
        "grid_cell=1",
    ),
    ("captum", "captum.layer_conductance", {"n_steps": 64}, "n_steps=64"),
    ("cnnvis", "cnnvis.score_cam", {}, "layer="),
    ("cnnvis", "cnnvis.ablation_cam", {}, "layer="),
    (
        "cnnvis",
        "cnnvis.layer_activation_guided_backprop",
        {"smoothing": "smoothgrad", "noise_samples": 16},
        "noise_samples=16",
    ),
    ("cnnvis", "cnnvis.rise", {"masks": torch.rand(64, 1, 16, 16)}, "masks"),
]


@pytest.mark.parametrize(
    ("plugin", "method", "params", "named"), COUNTED, ids=[c[1] for c in COUNTED]
)
def test_every_count_is_declared(
    plugin: str,
    method: str,
    params: dict[str, Any],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    never_runs: list[str],
) -> None:
    """Windows, features, permutations, references, units, channels and noisy copies
    all count: with a limit of 10 passes each of these is refused, naming the setting."""
    _installed(plugin)
    monkeypatch.setattr(checks_module, "MAX_PASSES", 10)
    with pytest.raises(InvalidParamsError, match="forward passes") as info:
        explain(tiny_model(), tiny_input(), method, 0, **params)
    assert named in str(info.value)
    assert "num_masks" not in str(info.value)  # RISE with given masks: their count
    assert not never_runs


def test_patches_count_once_each(monkeypatch: pytest.MonkeyPatch, never_runs: list[str]) -> None:
    _installed("captum")
    monkeypatch.setattr(checks_module, "MAX_PASSES", 150)
    # 50 steps x 4 patches x 2 items = 400 passes, not 50 x 2
    with pytest.raises(InvalidParamsError, match="50 per patch"):
        explain(
            tiny_model(),
            tiny_input(),
            "captum.integrated_gradients",
            0,
            patches={"size": 8},
            progress=False,
        )
    assert not never_runs


def test_layer_shapes_are_measured_only_when_read() -> None:
    model, x = tiny_model(), tiny_input()
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))

    class P(ec.MethodParams):
        layer: ec.LayerPath = "features.conv2"

    shapes = checks_module.LayerShapes(model, x[:1], P(), "test")
    assert not calls
    assert shapes["features.conv2"] == (8, 8, 8)
    assert dict(shapes) == {"features.conv2": (8, 8, 8)}
    assert len(calls) == 1


def test_layer_shapes_are_measured_once_per_network_as_it_is() -> None:
    """A second call on the same network reuses the shapes (no probe pass); a module
    swapped in or a hook registered since (a reshaping tap) measures again."""
    model, x = tiny_model(), tiny_input()
    calls: list[int] = []
    counting = model.register_forward_pre_hook(lambda m, a: calls.append(1))

    class P(ec.MethodParams):
        layer: ec.LayerPath = "features.conv2"

    def measure() -> tuple[int, ...]:
        return checks_module.LayerShapes(model, x[:1], P(), "test")["features.conv2"]

    assert measure() == (8, 8, 8) and len(calls) == 1
    assert measure() == (8, 8, 8) and len(calls) == 1
    conv = model.features.conv2
    model.features.conv2 = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3)
    assert measure() == (8, 6, 6) and len(calls) == 2
    handle = model.features.conv2.register_forward_hook(lambda m, a, o: o[..., :4, :4])
    assert measure() == (8, 4, 4) and len(calls) == 3
    handle.remove()
    counting.remove()


def test_layer_shapes_survive_the_taps_each_call_puts_in() -> None:
    """explain() taps the layer a method reads with fresh site modules on every call:
    a second Ablation-CAM call on the same network probes no layer shape again."""
    method = require_method("cnnvis.ablation_cam")
    model, x = tiny_model(), tiny_input()
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    probes: list[int] = []
    original = checks_module.LayerShapes._measure

    def spy(self: checks_module.LayerShapes) -> dict[str, tuple[int, ...]]:
        probes.append(int(self._key()[1] not in checks_module._shapes.get(model, {})))
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checks_module.LayerShapes, "_measure", spy)
        for _ in range(2):
            ec.explain(model, x, method, 0, layer="features.conv2", progress=False)
    assert probes and probes[0] == 1 and set(probes[1:]) == {0}  # measured once


def test_device_free_bytes_reads_the_cpu() -> None:
    free = checks_module.device_free_bytes(torch.device("cpu"))
    assert 0 < free < 2**62


# -- 2. the model comes back as it was ------------------------------------------------------


def _saved_size(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return len(buffer.getvalue())


def _tensor_ids(model: torch.nn.Module) -> list[list[int]]:
    return [
        [id(t) for t in (*m._parameters.values(), *m._buffers.values())] for m in model.modules()
    ]


LEAKY = [
    ("captum.deep_lift", {}),
    ("captum.lrp", {}),
    ("captum.layer_deep_lift", {}),
    ("captum.layer_lrp", {}),
    ("captum.deep_lift_shap", {}),
    ("captum.neuron_deep_lift", {"neuron_selector": (0,)}),
]


@pytest.mark.parametrize(("method", "params"), LEAKY, ids=[m for m, _ in LEAKY])
def test_deeplift_and_lrp_leave_no_attributes(method: str, params: dict[str, Any]) -> None:
    _installed("captum")
    model, x = tiny_model(), tiny_input()
    size = _saved_size(model)
    keys = [sorted(vars(m)) for m in model.modules()]
    tensors = [
        [id(t) for t in (*m._parameters.values(), *m._buffers.values())] for m in model.modules()
    ]
    explain(model, x, method, 0, **params)
    assert _saved_size(model) == size
    assert [sorted(vars(m)) for m in model.modules()] == keys
    after = [
        [id(t) for t in (*m._parameters.values(), *m._buffers.values())] for m in model.modules()
    ]
    assert after == tensors


class SwapParams(ec.MethodParams):
    pass


class Swapper(Explainer):
    """Replaces a batch-norm buffer by an equal copy: same keys, values and size."""

    name = "swap.copy"
    Params = SwapParams

    def attribute(self, model, inputs, target, params):  # type: ignore[no-untyped-def]
        for module in ec.unwrap(model).modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module._buffers["running_mean"] = module.running_mean.clone()
        return inputs * 1.0


class SwapPlugin:
    @hookimpl
    def esegeta_register_methods(self):  # type: ignore[no-untyped-def]
        return [Swapper]


def test_conformance_catches_a_tensor_swapped_for_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the core's attribute restoration switched off, a swapped buffer must still
    fail the conformance suite (keys, values and pickled size would all match)."""
    real = ModelState.capture.__func__  # type: ignore[attr-defined]

    def without_attributes(cls: type[ModelState], model: torch.nn.Module) -> ModelState:
        state = real(cls, model)
        state.modules = [dataclasses.replace(m, own=None, tables=None) for m in state.modules]
        return state

    monkeypatch.setattr(ModelState, "capture", classmethod(without_attributes))
    ec.register_plugin(SwapPlugin(), "swap")
    try:
        with pytest.raises(AssertionError, match="other tensor objects.*running_mean"):
            run_conformance(Case("swap.copy", 2, "classification"))
    finally:
        ec.unregister_plugin("swap")


# -- 3 and 4. layer methods on a layer without a spatial output -----------------------------

FLAT_LAYER = [
    ("captum", "captum.layer_grad_cam"),
    ("captum", "captum.guided_grad_cam"),
    ("captum", "captum.layer_gradient_x_activation"),
    ("captum", "captum.layer_conductance"),
    ("cnnvis", "cnnvis.grad_cam"),
    ("cnnvis", "cnnvis.score_cam"),
    ("torchray", "torchray.grad_cam"),
    ("torchray", "torchray.linear_approx"),
]


@pytest.mark.parametrize(("plugin", "method"), FLAT_LAYER, ids=[m for _, m in FLAT_LAYER])
def test_a_layer_map_method_on_a_linear_layer_is_refused_before_running(
    plugin: str, method: str, never_runs: list[str]
) -> None:
    _installed(plugin)
    with pytest.raises(InvalidParamsError) as info:
        explain(tiny_model(), tiny_input(), method, 0, layer="fc")
    text = str(info.value)
    assert "'fc'" in text and "(1, 4)" in text and "no 2D spatial layout" in text
    assert "layer='auto'" in text and "convolutional layer" in text
    assert not never_runs


def test_the_memory_check_probes_a_network_once() -> None:
    """The memory check's probe pass of one item (activation bytes per input) is kept
    per network: a perturbation method called again on the same model without
    auto_batch runs no probe pass (before: one whole pass of one item per call)."""
    from esegeta_core.runtime import batching

    require_method("captum.occlusion")
    model, x = tiny_model(), tiny_input()
    probes: list[int] = []
    original = batching.bytes_per_sample

    def spy(model_: Any, x_: Any, network: Any = None) -> int:
        probes.append(int(network is None or not batching._measured.get(network)))
        return original(model_, x_, network)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batching, "bytes_per_sample", spy)
        mp.setattr(checks_module, "device_free_bytes", lambda device: 1, raising=False)
        for _ in range(2):
            with pytest.raises(ec.EsegetaError):  # 1 byte free: refused, after the probe
                explain(model, x, "captum.occlusion", target=0, window=4, strides=4)
    assert probes == [1, 0]

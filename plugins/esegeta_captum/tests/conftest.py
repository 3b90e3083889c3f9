"""The captum tests' fast parameters: every conformance case of the plugin runs with
them (``pytest_generate_tests``), and tests that need them take ``fast_params``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch

from esegeta_core.testing import parametrize_conformance

NEURON = {"neuron_selector": (1,)}
PATH = {"n_steps": 4}
MASK = {"grid_cell": 8}

FAST_PARAMS: dict[str, dict[str, Any]] = {
    "captum.integrated_gradients": PATH,
    "captum.gradient_shap": {"n_samples": 2},
    "captum.feature_ablation": MASK,
    "captum.feature_permutation": MASK,
    "captum.occlusion": {"window": 8, "strides": 8},
    "captum.shapley_values": MASK,
    "captum.shapley_value_sampling": {**MASK, "n_samples": 2},
    "captum.lime": {**MASK, "n_samples": 8},
    "captum.kernel_shap": {"grid_cell": 4, "n_samples": 8},
    "captum.layer_conductance": PATH,
    "captum.internal_influence": PATH,
    "captum.layer_integrated_gradients": PATH,
    "captum.layer_gradient_shap": {"n_samples": 2},
    "captum.neuron_gradient": NEURON,
    "captum.neuron_integrated_gradients": {**NEURON, **PATH},
    "captum.neuron_conductance": {**NEURON, **PATH},
    "captum.neuron_deep_lift": NEURON,
    "captum.neuron_deep_lift_shap": NEURON,
    "captum.neuron_gradient_shap": {**NEURON, "n_samples": 2},
    "captum.neuron_guided_backprop": NEURON,
    "captum.neuron_deconvolution": NEURON,
    "captum.neuron_feature_ablation": {**NEURON, **MASK},
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_conformance(metafunc, plugin="captum", params=FAST_PARAMS)


@pytest.fixture
def fast_params() -> Mapping[str, Mapping[str, Any]]:
    """Parameters that keep each slow Captum method fast on the tiny models."""
    return FAST_PARAMS


@pytest.fixture
def engine_only(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``engine_only(Occlusion, ...)``: a call that reaches those Captum classes'
    ``attribute`` fails, so a test proves esegeta's engine ran."""

    def refuse_classes(*classes: type) -> None:
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("Captum's attribute ran instead of the engine")

        for cls in classes:
            monkeypatch.setattr(cls, "attribute", refuse)

    return refuse_classes


@pytest.fixture
def irregular_passes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """The ablation engine's planner replaced by one asking for irregular pass sizes and
    both layouts (one pass computed both ways, the contiguous one kept); returns the
    ``(size, channels_last)`` of each pass as they run."""
    import esegeta_core.runtime.ablation as ablation

    calls: list[tuple[int, bool]] = []

    def irregular(work, chunk, batch_size, sample, *, kind="forward", layouts=True, fits=None):
        sizes, out, start, i = [5, 1, 7, 7, 3, 16, 2, 9], [], 0, 0
        while start < work:
            stop = min(work, start + sizes[i % len(sizes)])
            layout = i % 3 == 1
            if i == 4:  # computed both ways, the contiguous one kept
                chunk(start, stop, True)
            out.append(chunk(start, stop, layout))
            calls.append((stop - start, layout))
            start, i = stop, i + 1
        return torch.cat(out)

    monkeypatch.setattr(ablation, "method_passes", irregular)
    return calls

"""Captum's own parameter names are accepted, documented, and give Captum's result."""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    IntegratedGradients,
    LayerFeatureAblation,
    NoiseTunnel,
    Occlusion,
    Saliency,
)

from esegeta_core import InvalidParamsError, describe_method, explain
from esegeta_core.testing import tiny_input, tiny_model


def test_occlusion_takes_captums_window_names_with_a_channel_extent() -> None:
    model, x = tiny_model(), tiny_input()
    t = torch.tensor([0, 2])
    ours = explain(
        model, x, "captum.occlusion", t, sliding_window_shapes=(1, 8, 8), strides=(1, 4, 4)
    ).attributions
    direct = Occlusion(model).attribute(
        x, target=t, sliding_window_shapes=(1, 8, 8), strides=(1, 4, 4),
        perturbations_per_eval=32,
    )  # fmt: skip
    assert torch.allclose(ours, direct, atol=1e-6)
    # the channel-free spelling slides over every channel at once: a different result
    whole = explain(model, x, "captum.occlusion", t, window=8, strides=4).attributions
    assert not torch.allclose(whole, direct)


def test_integrated_gradients_takes_method_and_internal_batch_size() -> None:
    model, x = tiny_model(), tiny_input()
    t = torch.tensor([1, 3])
    ours = explain(
        model, x, "captum.integrated_gradients", t, method="riemann_trapezoid", n_steps=8,
        internal_batch_size=4,
    ).attributions  # fmt: skip
    direct = IntegratedGradients(model).attribute(
        x, target=t, baselines=torch.zeros_like(x), method="riemann_trapezoid", n_steps=8,
        internal_batch_size=4,
    )  # fmt: skip
    assert torch.allclose(ours, direct, atol=1e-6)


def test_noise_tunnel_takes_nt_type_and_stdevs() -> None:
    model, x = tiny_model(), tiny_input()
    t = torch.tensor([0, 1])
    ours = explain(
        model, x, "captum.saliency", t, seed=3, nt_type="smoothgrad", nt_samples=4, stdevs=0.2
    ).attributions
    with torch.random.fork_rng():
        torch.manual_seed(3)
        direct = NoiseTunnel(Saliency(model)).attribute(
            x, target=t, nt_type="smoothgrad", nt_samples=4, stdevs=0.2, abs=True
        )
    assert torch.allclose(ours, direct, atol=1e-6)


def test_layer_feature_ablation_takes_layer_baselines() -> None:
    model, x = tiny_model(), tiny_input(batch=1)
    t = torch.tensor([2])
    ours = explain(
        model, x, "captum.layer_feature_ablation", t, layer="features.conv2",
        layer_baselines=0.5, layer_mask="unit",
    ).attributions  # fmt: skip
    direct = LayerFeatureAblation(model, model.features.conv2).attribute(
        x, target=t, layer_baselines=0.5, perturbations_per_eval=32
    )
    assert torch.allclose(ours, direct, atol=1e-6)


def test_gradient_shap_keeps_its_own_stdevs() -> None:
    schema = describe_method("captum.gradient_shap").schema["properties"]
    assert "stdevs" in schema and "aliases" not in schema["stdevs"]
    assert schema["nt_stdevs"].get("aliases", []) == []
    assert schema["noise_tunnel"]["aliases"] == ["nt_type"]


def test_aliases_are_in_the_schema_and_a_field_given_twice_is_refused() -> None:
    props = describe_method("captum.occlusion").schema["properties"]
    assert props["window"]["aliases"] == ["sliding_window_shapes"]
    props = describe_method("captum.integrated_gradients").schema["properties"]
    assert props["integration_method"]["aliases"] == ["method"]
    with pytest.raises(InvalidParamsError, match="another name for 'window'"):
        explain(tiny_model(), tiny_input(), "captum.occlusion", 0, window=8,
                sliding_window_shapes=(3, 8, 8))  # fmt: skip

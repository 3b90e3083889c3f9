"""Every method equals a direct Captum call with the arguments written out by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from captum import attr as ca
from captum._utils.models.linear_model import SkLearnLasso
from captum.attr._utils.lrp_rules import EpsilonRule

from esegeta_core import MultiClassScores, ScoreModel, explain, get_registry
from esegeta_core.baselines import make_baseline
from esegeta_core.testing import tiny_input, tiny_model

Direct = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def grid(x: torch.Tensor, cell: int) -> torch.Tensor:
    """Row-major grid ids written out independently of esegeta's grid_mask."""
    h, w = x.shape[2:]
    cols = -(-w // cell)
    ids = (torch.arange(h)[:, None] // cell) * cols + torch.arange(w)[None, :] // cell
    return ids.expand(x.shape[0], 1, h, w).clone()


def zeros(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def blur_dist(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(x[:1]), make_baseline("blurred", x)])


def conv2(m: torch.nn.Module) -> torch.nn.Module:
    return m.features.conv2


NEURON = (1, 4, 4)  # what neuron_selector=(1,) means on conv2's (8, 8, 8) output

CASES: list[tuple[str, dict[str, Any], Direct]] = [
    ("captum.saliency", {}, lambda m, x, t: ca.Saliency(m).attribute(x, target=t)),
    (
        "captum.saliency",
        {"abs": False, "noise_tunnel": "smoothgrad_sq", "nt_samples": 3, "nt_stdevs": 0.2},
        lambda m, x, t: ca.NoiseTunnel(ca.Saliency(m)).attribute(
            x, nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.2, target=t, abs=False
        ),
    ),
    (
        "captum.integrated_gradients",
        {"n_steps": 8, "baselines": "blurred"},
        lambda m, x, t: ca.IntegratedGradients(m).attribute(
            x, baselines=make_baseline("blurred", x), target=t, n_steps=8
        ),
    ),
    (
        "captum.integrated_gradients",
        {
            "n_steps": 6,
            "integration_method": "riemann_trapezoid",
            "multiply_by_inputs": False,
            "internal_batch_size": 4,
        },
        lambda m, x, t: ca.IntegratedGradients(m, multiply_by_inputs=False).attribute(
            x,
            baselines=zeros(x),
            target=t,
            n_steps=6,
            method="riemann_trapezoid",
            internal_batch_size=4,
        ),
    ),
    (
        "captum.deep_lift",
        {"baselines": 0.5},
        lambda m, x, t: ca.DeepLift(m).attribute(x, baselines=torch.full_like(x, 0.5), target=t),
    ),
    (
        "captum.deep_lift_shap",
        {},
        lambda m, x, t: ca.DeepLiftShap(m).attribute(x, baselines=blur_dist(x), target=t),
    ),
    (
        "captum.gradient_shap",
        {"n_samples": 4, "stdevs": 0.1},
        lambda m, x, t: ca.GradientShap(m).attribute(
            x, baselines=blur_dist(x), n_samples=4, stdevs=0.1, target=t
        ),
    ),
    ("captum.input_x_gradient", {}, lambda m, x, t: ca.InputXGradient(m).attribute(x, target=t)),
    ("captum.guided_backprop", {}, lambda m, x, t: ca.GuidedBackprop(m).attribute(x, target=t)),
    ("captum.deconvolution", {}, lambda m, x, t: ca.Deconvolution(m).attribute(x, target=t)),
    (
        "captum.guided_grad_cam",
        {"layer": "features.conv2", "interpolate_mode": "linear"},
        lambda m, x, t: ca.GuidedGradCam(m, conv2(m)).attribute(
            x, target=t, interpolate_mode="bilinear"
        ),
    ),
    (
        "captum.feature_ablation",
        {"grid_cell": 4, "perturbations_per_eval": 5},
        lambda m, x, t: ca.FeatureAblation(m).attribute(
            x, baselines=zeros(x), target=t, feature_mask=grid(x, 4), perturbations_per_eval=5
        ),
    ),
    (
        "captum.feature_permutation",
        {"grid_cell": 4},
        lambda m, x, t: ca.FeaturePermutation(m).attribute(
            x, target=t, feature_mask=grid(x, 4), perturbations_per_eval=32
        ),
    ),
    (
        "captum.occlusion",
        {"window": (4, 6), "strides": (2, 4), "baselines": "mean"},
        lambda m, x, t: ca.Occlusion(m).attribute(
            x,
            sliding_window_shapes=(3, 4, 6),
            strides=(3, 2, 4),
            baselines=make_baseline("mean", x),
            target=t,
            perturbations_per_eval=32,
        ),
    ),
    (
        "captum.shapley_value_sampling",
        {"grid_cell": 8, "n_samples": 2},
        lambda m, x, t: ca.ShapleyValueSampling(m).attribute(
            x,
            baselines=zeros(x),
            target=t,
            feature_mask=grid(x, 8),
            n_samples=2,
            perturbations_per_eval=32,
        ),
    ),
    (
        "captum.shapley_values",
        {},
        lambda m, x, t: ca.ShapleyValues(m).attribute(
            x, baselines=zeros(x), target=t, feature_mask=grid(x, 8), perturbations_per_eval=32
        ),
    ),
    (
        "captum.lime",
        {"grid_cell": 8, "n_samples": 12, "alpha": 0.001},
        lambda m, x, t: ca.Lime(m, interpretable_model=SkLearnLasso(alpha=0.001)).attribute(
            x,
            target=t,
            feature_mask=grid(x, 8),
            n_samples=12,
            baselines=zeros(x),
            perturbations_per_eval=32,
        ),
    ),
    (
        "captum.kernel_shap",
        {"grid_cell": 8, "n_samples": 12},
        lambda m, x, t: ca.KernelShap(m).attribute(
            x,
            target=t,
            feature_mask=grid(x, 8),
            n_samples=12,
            baselines=zeros(x),
            perturbations_per_eval=32,
        ),
    ),
    ("captum.lrp", {}, lambda m, x, t: ca.LRP(m).attribute(x, target=t)),
    (
        "captum.layer_conductance",
        {"layer": "features.conv2", "n_steps": 8},
        lambda m, x, t: ca.LayerConductance(m, conv2(m)).attribute(
            x, baselines=zeros(x), target=t, n_steps=8
        ),
    ),
    (
        "captum.internal_influence",
        {"layer": "features.conv2", "n_steps": 8, "attribute_to_layer_input": True},
        lambda m, x, t: ca.InternalInfluence(m, conv2(m)).attribute(
            x, baselines=zeros(x), target=t, n_steps=8, attribute_to_layer_input=True
        ),
    ),
    (
        "captum.layer_gradient_x_activation",
        {"layer": "features.conv2"},
        lambda m, x, t: ca.LayerGradientXActivation(m, conv2(m)).attribute(x, target=t),
    ),
    (
        "captum.layer_activation",
        {"layer": "features.conv2"},
        lambda m, x, t: ca.LayerActivation(m, conv2(m)).attribute(x),
    ),
    (
        "captum.layer_grad_cam",
        {"layer": "features.conv2", "relu_attributions": True},
        lambda m, x, t: ca.LayerGradCam(m, conv2(m)).attribute(x, target=t, relu_attributions=True),
    ),
    (
        "captum.layer_deep_lift",
        {"layer": "features.conv2"},
        lambda m, x, t: ca.LayerDeepLift(m, conv2(m)).attribute(x, baselines=zeros(x), target=t),
    ),
    (
        "captum.layer_deep_lift_shap",
        {"layer": "features.conv2"},
        lambda m, x, t: ca.LayerDeepLiftShap(m, conv2(m)).attribute(
            x, baselines=blur_dist(x), target=t
        ),
    ),
    (
        "captum.layer_gradient_shap",
        {"layer": "features.conv2", "n_samples": 3},
        lambda m, x, t: ca.LayerGradientShap(m, conv2(m)).attribute(
            x, baselines=blur_dist(x), n_samples=3, target=t
        ),
    ),
    (
        "captum.layer_integrated_gradients",
        {"layer": "features.conv2", "n_steps": 8},
        lambda m, x, t: ca.LayerIntegratedGradients(m, conv2(m)).attribute(
            x, baselines=zeros(x), target=t, n_steps=8
        ),
    ),
    (
        "captum.layer_feature_ablation",
        {"layer": "features.conv2"},
        lambda m, x, t: ca.LayerFeatureAblation(m, conv2(m)).attribute(
            # Captum fails on per-item targets with perturbations_per_eval > 1; the plugin
            # runs item by item then, which must equal Captum's one-at-a-time result
            x,
            target=t,
            layer_baselines=0.0,
            layer_mask=torch.arange(8).view(1, 8, 1, 1),
            perturbations_per_eval=1,
        ),
    ),
    (
        "captum.layer_lrp",
        {"layer": "features.conv2"},
        lambda m, x, t: ca.LayerLRP(m, conv2(m)).attribute(x, target=t),
    ),
    (
        "captum.neuron_gradient",
        {"layer": "features.conv2", "neuron_selector": (1,)},
        lambda m, x, t: ca.NeuronGradient(m, conv2(m)).attribute(x, neuron_selector=NEURON),
    ),
    (
        "captum.neuron_integrated_gradients",
        {"layer": "features.conv2", "neuron_selector": (1, 4, 4), "n_steps": 8},
        lambda m, x, t: ca.NeuronIntegratedGradients(m, conv2(m)).attribute(
            x, neuron_selector=NEURON, baselines=zeros(x), n_steps=8
        ),
    ),
    (
        "captum.neuron_conductance",
        {"layer": "features.conv2", "neuron_selector": (1, -4), "n_steps": 8},
        lambda m, x, t: ca.NeuronConductance(m, conv2(m)).attribute(
            x,
            neuron_selector=NEURON,
            baselines=zeros(x),
            target=t,
            n_steps=8,
            method="gausslegendre",
        ),
    ),
    (
        "captum.neuron_deep_lift",
        {"layer": "features.conv2", "neuron_selector": (1,)},
        lambda m, x, t: ca.NeuronDeepLift(m, conv2(m)).attribute(
            x, neuron_selector=NEURON, baselines=zeros(x)
        ),
    ),
    (
        "captum.neuron_deep_lift_shap",
        {"layer": "features.conv2", "neuron_selector": (1,)},
        lambda m, x, t: ca.NeuronDeepLiftShap(m, conv2(m)).attribute(
            x, neuron_selector=NEURON, baselines=blur_dist(x)
        ),
    ),
    (
        "captum.neuron_gradient_shap",
        {"layer": "features.conv2", "neuron_selector": (1,), "n_samples": 3},
        lambda m, x, t: ca.NeuronGradientShap(m, conv2(m)).attribute(
            x, neuron_selector=NEURON, baselines=blur_dist(x), n_samples=3
        ),
    ),
    (
        "captum.neuron_guided_backprop",
        {"layer": "features.conv2", "neuron_selector": (1,)},
        lambda m, x, t: ca.NeuronGuidedBackprop(m, conv2(m)).attribute(x, neuron_selector=NEURON),
    ),
    (
        "captum.neuron_deconvolution",
        {"layer": "features.conv2", "neuron_selector": (1,)},
        lambda m, x, t: ca.NeuronDeconvolution(m, conv2(m)).attribute(x, neuron_selector=NEURON),
    ),
    (
        "captum.neuron_feature_ablation",
        {"layer": "features.conv2", "neuron_selector": (1,), "grid_cell": 4},
        lambda m, x, t: ca.NeuronFeatureAblation(m, conv2(m)).attribute(
            x,
            neuron_selector=NEURON,
            baselines=zeros(x),
            feature_mask=grid(x, 4),
            perturbations_per_eval=32,
        ),
    ),
]


def direct_seeded(method: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Seed like ``explain(seed=0)``; stochastic methods also seed NumPy from torch."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if not get_registry().get(method).deterministic:
            np.random.seed(int(torch.randint(0, 2**31 - 1, ())))
        return fn()


@pytest.mark.parametrize(
    ("method", "params", "direct"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_equals_direct_captum(method: str, params: dict[str, Any], direct: Direct) -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2)
    target = torch.tensor([1, 2])
    ours = explain(model, x, method, target=target, seed=0, **params).attributions
    theirs = direct_seeded(method, lambda: direct(model, x, target))
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert ours.abs().sum() > 0


def test_every_method_has_an_equivalence_case() -> None:
    captum = {n for n, p in get_registry().plugin_of.items() if p == "captum"}
    assert captum == {c[0] for c in CASES}


@pytest.mark.parametrize(
    ("method", "params", "direct"),
    [
        (
            "captum.integrated_gradients",
            {"n_steps": 8},
            lambda m, x, t: ca.IntegratedGradients(m).attribute(
                x, baselines=zeros(x), target=t, n_steps=8
            ),
        ),
        (
            "captum.layer_grad_cam",
            {"layer": "encoder.conv2"},
            lambda m, x, t: ca.LayerGradCam(m, m.model.encoder.conv2).attribute(x, target=t),
        ),
    ],
    ids=["integrated_gradients", "layer_grad_cam"],
)
@pytest.mark.parametrize("rank", [2, 3])
def test_segmentation_equals_captum_on_wrapped_model(
    method: str, params: dict[str, Any], direct: Direct, rank: int
) -> None:
    model = tiny_model("segmentation", rank)
    x = tiny_input("segmentation", rank)
    ours = explain(model, x, method, target=1, task="segmentation", **params).attributions
    wrapped = ScoreModel(model, MultiClassScores())
    theirs = direct(wrapped, x, torch.tensor([1, 1]))
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def test_lrp_3d_equals_captum_with_epsilon_rules_and_cleans_up() -> None:
    model = tiny_model("classification", 3)
    x = tiny_input("classification", 3)
    target = torch.tensor([0, 3])
    own_rule = EpsilonRule(epsilon=1e-3)
    model.features.conv1.rule = own_rule  # the user's choice must survive the call
    ours = explain(model, x, "captum.lrp", target=target).attributions
    assert model.features.conv1.rule is own_rule
    assert not any(hasattr(m, "rule") for m in model.modules() if m is not model.features.conv1)

    for m in (model.features.conv2, model.features.bn1, model.pool):
        m.rule = EpsilonRule()
    theirs = ca.LRP(model).attribute(x, target=target)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)

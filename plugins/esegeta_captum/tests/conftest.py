"""Shared fast parameters for the plugin's tests."""

from __future__ import annotations

from typing import Any

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

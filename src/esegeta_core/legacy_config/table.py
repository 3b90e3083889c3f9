"""The method table: TorchEsegeta's libraries and method names -> esegeta's methods.

Pure data. Each :class:`Target` is one esegeta method with the parameter names its
``Params`` accepts, the original keyword names that map onto them and the original
method names it answers to. The names are a static copy of the plugins' ``Params`` (so
converting needs no plugin installed); ``tests/test_legacy_table.py`` checks every
entry against the installed methods, so the copy cannot drift unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LIBRARY_RENAMES", "METHODS", "NOISE_TUNNEL", "NO_COUNTERPART", "Target"]


@dataclass(frozen=True)
class Target:
    """One esegeta method: the parameters it accepts, renames and fixed presets."""

    name: str
    params: frozenset[str]
    aliases: tuple[str, ...] = ()
    """Other original method names it answers to, as comparison keys (see ``norm``)."""
    renames: dict[str, str] = field(default_factory=dict)
    """Original keyword -> esegeta parameter, for this method only."""
    required: tuple[str, ...] = ()
    """Parameters the original may lack and esegeta needs: a placeholder is written."""
    preset: dict[str, Any] = field(default_factory=dict)
    """Parameters fixed by the original method name (``SmoothGrad`` = a noise tunnel)."""


def _p(*groups: frozenset[str] | set[str]) -> frozenset[str]:
    """The union of parameter groups."""
    out: set[str] = set()
    for group in groups:
        out |= group
    return frozenset(out)


# Parameter groups of the plugins' Params classes.
NOISE_TUNNEL = frozenset({"noise_tunnel", "nt_samples", "nt_stdevs", "nt_samples_batch_size"})
"""Captum's noise-tunnel parameters (every captum method has them)."""
_NT = NOISE_TUNNEL
_BASE = frozenset({"baselines", "baseline_sigma"})
_IG = frozenset({"n_steps", "method", "internal_batch_size"})
_MUL = frozenset({"multiply_by_inputs"})
_LAYER = frozenset({"layer", "attribute_to_layer_input"})
_PERT = frozenset({"perturbations_per_eval"})
_MASK = frozenset({"feature_mask", "grid_cell", "n_segments", "compactness"})
_GRADS = frozenset(
    {"postprocess", "smoothing", "noise_samples", "noise_level", "noise_batch_size", "create_graph"}
)
_CAM = frozenset({"layer", "relu", "upsample"})
_TR = frozenset({"resize", "resize_mode"})
_TR_BP = _TR | {"smooth", "saliency_layer"}
_SHAP = frozenset({"n_samples", "stdevs"})
# Captum's own noise tunnel: the original passed n_samples/stdevs for NoiseTunnel.
_NT_RENAMES = {"n_samples": "nt_samples", "stdevs": "nt_stdevs", "nt_type": "noise_tunnel"}
_SHAP_RENAMES = {"n_samples": "n_samples", "stdevs": "stdevs", "nt_type": "noise_tunnel"}
# cnnvis' iterative methods: the original's step counts.
_STEPS_RENAMES = {"update_count": "steps", "iterations": "steps"}


def _captum_layer(
    name: str,
    *groups: frozenset[str],
    aliases: tuple[str, ...] = (),
    renames: dict[str, str] = _NT_RENAMES,
) -> Target:
    """A captum layer method: noise tunnel and layer parameters, a layer required."""
    return Target(f"captum.{name}", _p(_NT, _LAYER, *groups), aliases, renames, required=("layer",))


_CAPTUM = [
    Target("captum.saliency", _p(_NT, {"abs"}), ("vanillagradient",), _NT_RENAMES),
    Target(
        "captum.saliency",
        _p(_NT, {"abs"}),
        ("smoothgrad", "noisetunnel"),
        _NT_RENAMES,
        preset={"noise_tunnel": "smoothgrad"},
    ),
    Target("captum.integrated_gradients", _p(_NT, _MUL, _IG, _BASE), ("ig",), _NT_RENAMES),
    Target("captum.feature_ablation", _p(_PERT, _MASK, _BASE)),
    Target(
        "captum.occlusion",
        _p(_PERT, _BASE, {"window", "strides"}),
        renames={"sliding_window_shapes": "window", "sliding_window_shape": "window"},
    ),
    Target("captum.guided_backprop", _NT, ("gbp", "guidedbackpropagation"), _NT_RENAMES),
    Target("captum.deep_lift", _p(_NT, _MUL, _BASE, {"eps"}), (), _NT_RENAMES),
    Target("captum.deconvolution", _NT, ("deconv", "deconvnet"), _NT_RENAMES),
    Target(
        "captum.guided_grad_cam",
        _p(_NT, _LAYER, {"interpolate_mode"}),
        (),
        _NT_RENAMES,
        required=("layer",),
    ),
    _captum_layer("layer_conductance", _IG, _BASE),
    _captum_layer("internal_influence", _IG, _BASE),
    _captum_layer("layer_gradient_shap", _MUL, _BASE, _SHAP, renames=_SHAP_RENAMES),
    _captum_layer("layer_deep_lift", _MUL, _BASE),
    _captum_layer("layer_activation"),
    _captum_layer("layer_gradient_x_activation", _MUL, aliases=("layergradxactivation",)),
    _captum_layer(
        "layer_grad_cam",
        frozenset({"relu_attributions", "attr_dim_summation"}),
        aliases=("layergradcam", "gradcam"),
    ),
    _captum_layer("layer_integrated_gradients", _MUL, _IG, _BASE),
    Target("captum.gradient_shap", _p(_NT, _MUL, _BASE, _SHAP), (), _SHAP_RENAMES),
    Target("captum.deep_lift_shap", _p(_NT, _MUL, _BASE), (), _NT_RENAMES),
    Target("captum.input_x_gradient", _NT, ("inputxgrad", "gradientxinput"), _NT_RENAMES),
    Target(
        "captum.shapley_value_sampling",
        _p(_PERT, _MASK, _BASE, {"n_samples"}),
        ("shapleyvalue", "shapleysampling"),
        {"n_samples": "n_samples"},
    ),
    Target("captum.feature_permutation", _p(_PERT, _MASK)),
    Target(
        "captum.lime",
        _p(_PERT, _MASK, _BASE, {"n_samples", "alpha"}),
        renames={"n_samples": "n_samples"},
    ),
    Target(
        "captum.kernel_shap",
        _p(_PERT, _MASK, _BASE, {"n_samples"}),
        renames={"n_samples": "n_samples"},
    ),
]

_CNNVIS = [
    Target("cnnvis.guided_backprop", _GRADS, ("gbp", "guidedbackpropagation")),
    Target("cnnvis.vanilla_backprop", _GRADS, ("vbp", "vanillabackpropagation", "backprop")),
    Target(
        "cnnvis.gradient_x_input",
        _GRADS,
        ("gradxinput", "gradximage", "gradientximage", "gradtimesimage", "inputxgradient"),
    ),
    Target(
        "cnnvis.integrated_gradients",
        _p(_GRADS, _BASE, {"n_steps", "integration", "internal_batch_size"}),
        ("ig",),
        {"steps": "n_steps"},
    ),
    Target("cnnvis.grad_cam", _p(_CAM, {"create_graph"}), required=("layer",)),
    Target(
        "cnnvis.grad_cam_pp",
        _p(_CAM, {"create_graph"}),
        ("gradcamplusplus",),
        required=("layer",),
    ),
    Target("cnnvis.score_cam", _p(_CAM, {"batch_size"}), required=("layer",)),
    Target(
        "cnnvis.guided_grad_cam",
        frozenset({"layer", "relu", "create_graph"}),
        required=("layer",),
    ),
    Target(
        "cnnvis.layer_activation_guided_backprop",
        _p(_GRADS, {"layer", "filter"}),
        ("layeractivationwithguidedbackprop", "layeractivation"),
        required=("layer", "filter"),
    ),
    Target(
        "cnnvis.layer_visualization",
        frozenset(
            {"layer", "filter", "steps", "lr", "l2_weight", "tv_weight", "blur_sigma", "blur_every"}
        ),
        ("cnnlayervisualization",),
        _STEPS_RENAMES,
        required=("layer", "filter"),
    ),
    Target(
        "cnnvis.deep_dream",
        frozenset({"layer", "filter", "steps", "lr"}),
        (),
        _STEPS_RENAMES,
        required=("layer",),
    ),
    Target(
        "cnnvis.inverted_representation",
        frozenset({"layer", "steps", "lr", "alpha", "alpha_weight", "tv_beta", "tv_weight"}),
        (),
        _STEPS_RENAMES,
        required=("layer",),
    ),
    Target("cnnvis.smoothgrad", _p(_GRADS, {"base"}), (), {"param_n": "noise_samples"}),
]

_TORCHRAY = [
    Target("torchray.excitation_backprop", _TR_BP, ("eb",)),
    Target(
        "torchray.contrastive_excitation_backprop",
        _p(_TR, {"saliency_layer", "contrast_layer", "classifier_layer"}),
        ("ceb", "contrastiveeb"),
        required=("saliency_layer", "contrast_layer"),
    ),
    Target("torchray.deconvnet", _TR_BP, ("deconv", "deconvolution")),
    Target("torchray.gradient", _TR_BP, ("vanillagradient", "saliency", "backprop")),
    Target("torchray.guided_backprop", _TR_BP, ("gbp",)),
    Target("torchray.grad_cam", _TR_BP, (), required=("saliency_layer",)),
    Target("torchray.linear_approx", _TR_BP, ("linearapproximation",)),
    Target(
        "torchray.rise",
        _p(_TR, {"num_masks", "num_cells", "p", "batch_size", "mask_seed"}),
    ),
    Target(
        "torchray.extremal_perturbation",
        _p(
            _TR,
            {"smooth", "areas", "perturbation", "max_iter", "num_levels", "step", "sigma"},
            {"jitter", "variant", "reward"},
        ),
        ("extremal", "ep"),
        {"area": "areas"},
    ),
]

_LUCENT = [
    Target(
        "lucent.feature_visualization",
        frozenset(
            {
                "objective",
                "steps",
                "image_size",
                "parameterization",
                "decorrelate",
                "lr",
                "init_std",
                "pad",
                "jitter",
                "scale",
                "rotate",
                "normalize",
            }
        ),
        ("rendervis", "lucent", "featurevis"),
        {"thresholds": "steps", "obj": "objective", "objective_f": "objective"},
    )
]

_LIME = [
    Target(
        "lime.lime",
        frozenset(
            {
                "segmentation",
                "n_segments",
                "compactness",
                "sigma",
                "kernel_size",
                "max_dist",
                "ratio",
                "scale",
                "min_size",
                "num_samples",
                "num_features",
                "feature_selection",
                "kernel_width",
                "distance_metric",
                "hide_color",
                "batch_size",
                "use_softmax",
                "positive_only",
                "min_weight",
                "random_seed",
            }
        ),
        ("limeimage", "limeimageexplainer"),
    )
]

METHODS: dict[str, list[Target]] = {
    "captum": _CAPTUM,
    "cnnvis": _CNNVIS,
    "torchray": _TORCHRAY,
    "lucent": _LUCENT,
    "lime": _LIME,
}
"""Library -> its esegeta methods, with the original names each one answers to."""

LIBRARY_RENAMES: dict[str, dict[str, str]] = {
    "cnnvis": {
        "filter_pos": "filter",
        "selected_filter": "filter",
        "target_layer": "layer",
        "selected_layer": "layer",
        "cnn_layer": "layer",
    },
    "torchray": {"layer": "saliency_layer", "seed": "mask_seed"},
}
"""Original keyword -> esegeta parameter, for every method of a library."""

NO_COUNTERPART: dict[str, str] = {
    "top_labels": "esegeta explains the run's `targets` (null = each input's prediction)",
    "depth": "esegeta's LIME handles 3D natively instead of slice by slice",
    "neuron_index": "a neuron selection belongs to the captum.neuron_* methods",
    "target": "targets are set once for the run (`targets`)",
    "return_convergence_delta": "esegeta returns the maps only",
}
"""Keywords of the original with no esegeta counterpart, and why they are dropped."""

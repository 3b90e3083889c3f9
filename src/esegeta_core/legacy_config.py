"""Convert a TorchEsegeta JSON config into an esegeta run config.

TorchEsegeta (the original pipeline) was driven by one JSON file: model description,
input transforms, runtime switches and a list of methods per library with their
keyword arguments. :func:`convert_legacy` carries over everything esegeta has a
counterpart for (a :class:`~esegeta_core.config.RunConfig` mapping) and returns a
human-readable warning for everything it cannot, so nothing is dropped silently.

The method table maps (library, original method name) to esegeta method names; names
match case-insensitively ignoring spaces, underscores and dashes ("Integrated
Gradients" = "IntegratedGradients" = "integrated_gradients"). Keyword renames and the
parameters each esegeta method accepts are a static copy of the plugins' ``Params``
(so converting needs no plugin installed); ``esegeta validate`` then checks the result.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPLACE_ME = "REPLACE_ME"
MODEL_PLACEHOLDER = f"{REPLACE_ME}:build_model"

__all__ = ["METHODS", "MODEL_PLACEHOLDER", "REPLACE_ME", "convert_legacy", "write_converted"]


@dataclass(frozen=True)
class Target:
    """One esegeta method: the parameters it accepts, renames and fixed presets."""

    name: str
    params: frozenset[str]
    aliases: tuple[str, ...] = ()
    renames: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    preset: dict[str, Any] = field(default_factory=dict)


def _p(*groups: frozenset[str] | set[str]) -> frozenset[str]:
    out: set[str] = set()
    for group in groups:
        out |= group
    return frozenset(out)


# Parameter groups of the plugins' Params classes.
_NT = frozenset({"noise_tunnel", "nt_samples", "nt_stdevs", "nt_samples_batch_size"})
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
    Target(
        "captum.layer_conductance",
        _p(_NT, _IG, _BASE, _LAYER),
        (),
        _NT_RENAMES,
        required=("layer",),
    ),
    Target(
        "captum.internal_influence",
        _p(_NT, _IG, _BASE, _LAYER),
        (),
        _NT_RENAMES,
        required=("layer",),
    ),
    Target(
        "captum.layer_gradient_shap",
        _p(_NT, _MUL, _BASE, _SHAP, _LAYER),
        (),
        _SHAP_RENAMES,
        required=("layer",),
    ),
    Target(
        "captum.layer_deep_lift",
        _p(_NT, _MUL, _BASE, _LAYER),
        (),
        _NT_RENAMES,
        required=("layer",),
    ),
    Target("captum.layer_activation", _p(_NT, _LAYER), (), _NT_RENAMES, required=("layer",)),
    Target(
        "captum.layer_gradient_x_activation",
        _p(_NT, _MUL, _LAYER),
        ("layergradxactivation",),
        _NT_RENAMES,
        required=("layer",),
    ),
    Target(
        "captum.layer_grad_cam",
        _p(_NT, _LAYER, {"relu_attributions", "attr_dim_summation"}),
        ("layergradcam", "gradcam"),
        _NT_RENAMES,
        required=("layer",),
    ),
    Target(
        "captum.layer_integrated_gradients",
        _p(_NT, _MUL, _IG, _BASE, _LAYER),
        (),
        _NT_RENAMES,
        required=("layer",),
    ),
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

_CNNVIS_RENAMES = {
    "filter_pos": "filter",
    "selected_filter": "filter",
    "target_layer": "layer",
    "selected_layer": "layer",
    "cnn_layer": "layer",
}
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
        {"update_count": "steps", "iterations": "steps"},
        required=("layer", "filter"),
    ),
    Target(
        "cnnvis.deep_dream",
        frozenset({"layer", "filter", "steps", "lr"}),
        (),
        {"update_count": "steps", "iterations": "steps"},
        required=("layer",),
    ),
    Target(
        "cnnvis.inverted_representation",
        frozenset({"layer", "steps", "lr", "alpha", "alpha_weight", "tv_beta", "tv_weight"}),
        (),
        {"update_count": "steps", "iterations": "steps"},
        required=("layer",),
    ),
    Target("cnnvis.smoothgrad", _p(_GRADS, {"base"}), (), {"param_n": "noise_samples"}),
]

_TORCHRAY_RENAMES = {"layer": "saliency_layer", "seed": "mask_seed"}
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

_LIBRARY_RENAMES: dict[str, dict[str, str]] = {
    "cnnvis": _CNNVIS_RENAMES,
    "torchray": _TORCHRAY_RENAMES,
}

# Keywords of the original with no esegeta counterpart, and why.
_NO_COUNTERPART = {
    "top_labels": "esegeta explains the run's `targets` (null = each input's prediction)",
    "depth": "esegeta's LIME handles 3D natively instead of slice by slice",
    "neuron_index": "a neuron selection belongs to the captum.neuron_* methods",
    "target": "targets are set once for the run (`targets`)",
    "return_convergence_delta": "esegeta returns the maps only",
}


def _norm(name: str) -> str:
    """Comparison key of a name: lower case, '++' -> 'pp', letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower().replace("++", "pp"))


def _library(name: str) -> str | None:
    key = _norm(name)
    if key.startswith(("cnn", "pytorchcnn")):
        return "cnnvis"
    for lib in ("captum", "torchray", "lucent", "lime"):
        if key.startswith(lib):
            return lib
    return None


def _lookup(library: str, method_name: str) -> Target | None:
    key = _norm(method_name)
    for target in METHODS[library]:
        suffix = target.name.split(".", 1)[1]
        if key in (_norm(suffix), _norm(target.name), *target.aliases):
            return target
    return None


def _truthy(value: Any) -> bool:
    """The original's flags: booleans, 0/1, "True"/"False" strings."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _unset(value: Any) -> bool:
    """A setting left unset in the original: missing, null, false, empty or -1."""
    if value is None or value is False:
        return True
    if isinstance(value, (list, tuple, str, dict)):
        return not value or (isinstance(value, (list, tuple)) and all(v == -1 for v in value))
    return isinstance(value, (int, float)) and value == -1


def _off(value: Any) -> bool:
    """A size left unset: :func:`_unset`, or no positive number in it."""
    if _unset(value):
        return True
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(isinstance(v, (int, float)) and v <= 0 for v in values)


def _floats(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def _layer_path(value: Any, where: str, warn: Callable[[str], None]) -> Any:
    """The original's layer reference -> an esegeta module path ('features.3')."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return value
    if isinstance(value, int):
        path = f"features.{value}"
        warn(
            f"{where}: layer index {value} became the module path {path!r} (the original "
            "indexed model.features); check it against your model."
        )
        return path
    path = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", value.strip())
    path = re.sub(r"^(self\.)?model\.", "", path)
    if path != value:
        warn(f"{where}: layer {value!r} became the module path {path!r}; check it.")
    return path


def _spatial(value: Any, rank: int) -> Any:
    """Captum's window/stride shapes include the channel dimension; esegeta's do not."""
    if isinstance(value, (list, tuple)) and len(value) == rank + 1:
        return list(value[1:])
    return list(value) if isinstance(value, (list, tuple)) else value


def _convert_params(
    target: Target,
    library: str,
    keywords: dict[str, Any],
    rank: int,
    where: str,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    params = dict(target.preset)
    renames = {**_LIBRARY_RENAMES.get(library, {}), **target.renames}
    for key, value in keywords.items():
        name = renames.get(key, key)
        if name not in target.params:
            reason = _NO_COUNTERPART.get(key, f"{target.name} has no such parameter")
            warn(f"{where}: keyword {key!r}={value!r} dropped ({reason}).")
            continue
        if name in ("layer", "saliency_layer", "contrast_layer", "classifier_layer"):
            value = _layer_path(value, where, warn)
        elif name in ("window", "strides"):
            value = _spatial(value, rank)
        elif name == "steps" and isinstance(value, (list, tuple)):
            value = max(value)  # Lucent's thresholds: the last one is the step count
        elif name == "areas" and not isinstance(value, (list, tuple)):
            value = [value]
        params[name] = value
    orphans = sorted(k for k in _NT - {"noise_tunnel"} if k in params)
    if "noise_tunnel" in target.params and "noise_tunnel" not in params and orphans:
        for key in orphans:
            warn(f"{where}: {key}={params.pop(key)!r} dropped (no nt_type: no noise tunnel).")
    if "objective" in params and library == "lucent":
        warn(
            f"{where}: Lucent objective {params['objective']!r} kept as is; esegeta objectives "
            "name layers by module path ('features.conv2:3'), not Lucent's underscore names."
        )
    for name in target.required:
        if name not in params:
            params[name] = REPLACE_ME
            warn(f"{where}: {target.name} needs `{name}` (a module path): set it.")
    return params


def _devices(entries: list[dict[str, Any]], warn: Callable[[str], None]) -> list[str]:
    from esegeta_core.runtime.scheduler import DEVICE_FORMS, DEVICE_PATTERN

    found: list[str] = []
    for entry in entries:
        value = entry.get("device_id")
        values = value if isinstance(value, (list, tuple)) else [value]
        for device in values:
            if device is None or device == "":
                continue
            if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
                text = "cpu" if int(device) < 0 else f"cuda:{int(device)}"
            else:
                text = str(device).strip().lower()
                text = "cuda:0" if text in ("cuda", "gpu") else text
                # 'gpu1', 'gpu:1', 'cuda1' -> 'cuda:1'
                text = re.sub(r"^(?:gpu|cuda):?([0-9]+)$", r"cuda:\1", text)
            if not DEVICE_PATTERN.fullmatch(text):
                warn(
                    f"device_id {device!r} is not a device esegeta knows "
                    f"({', '.join(map(repr, DEVICE_FORMS))}); dropped."
                )
                continue
            if text not in found:
                found.append(text)
    return found


_SIGNS = {
    "all": "all",
    "positive": "positive",
    "absolute": "absolute",
    "absolutevalue": "absolute",
    "abs": "absolute",
}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}
_TOP_KEYS = {
    "model_nature",
    "model_name",
    "dataset",
    "test_run",
    "is_3d",
    "isDepthFirst",
    "batch_dim_present",
    "batch_present",
    "default",
    "resize",
    "centre_crop",
    "mean_vec",
    "std_vec",
    "patch_size",
    "patch_overlap",
    "amp_enbled",
    "amp_enabled",
    "share_gpu_threads",
    "timeout_enabled",
    "timeout_time",
    "log_level",
    "methods",
    "explain_methods",
}
_ENTRY_KEYS = {
    "method_name",
    "library",
    "device_id",
    "use",
    "patch_required",
    "visualize_method",
    "sign",
    "show_colorbar",
    "title",
    "uncertainity_metrics",
    "uncertainity_cascading",
    "keywords",
}


def _method_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method entry; LIME ``explain_methods`` become lime entries (keys = keywords)."""
    entries = [dict(e) for e in data.get("methods") or [] if isinstance(e, dict)]
    for raw in data.get("explain_methods") or []:
        if not isinstance(raw, dict):
            continue
        entry = {k: v for k, v in raw.items() if k in _ENTRY_KEYS}
        keywords = dict(entry.get("keywords") or {})
        keywords.update({k: v for k, v in raw.items() if k not in _ENTRY_KEYS})
        entry.update(keywords=keywords, library="lime")
        entry.setdefault("method_name", "lime")
        entries.append(entry)
    return entries


def _convert_method(
    entry: dict[str, Any], index: int, rank: int, warn: Callable[[str], None]
) -> dict[str, Any] | None:
    original = str(entry.get("method_name", ""))
    where = f"method {index} ({entry.get('library', '?')}/{original})"
    if not _truthy(entry.get("use", 1)):
        warn(f"{where}: dropped because `use` is 0 (disabled in the original).")
        return None
    library = _library(str(entry.get("library", "")))
    if library is None:
        warn(f"{where}: unknown library {entry.get('library')!r}; method dropped.")
        return None
    target = _lookup(library, original)
    if target is None:
        known = ", ".join(dict.fromkeys(t.name for t in METHODS[library]))
        warn(f"{where}: unknown method {original!r}; dropped (esegeta {library}: {known}).")
        return None
    keywords = entry.get("keywords") or {}
    spec: dict[str, Any] = {"method": target.name}
    params = _convert_params(target, library, dict(keywords), rank, where, warn)
    if params:
        spec["params"] = params
    if entry.get("title"):
        spec["title"] = str(entry["title"])
    if "patch_required" in entry:
        spec["patches"] = _truthy(entry["patch_required"])
    sign = _SIGNS.get(_norm(entry.get("sign", "all")))
    if sign is None:
        warn(f"{where}: sign {entry.get('sign')!r} has no counterpart; showing 'all'.")
        sign = "all"
    spec["sign"] = sign
    visual = entry.get("visualize_method")
    if visual and _norm(visual) != "heatmap":
        warn(
            f"{where}: visualize_method {visual!r} not carried over (esegeta figures show "
            "the input next to the map, and an overlay for 3D)."
        )
    if _truthy(entry.get("uncertainity_metrics", False)):
        warn(
            f"{where}: uncertainity_metrics not carried over: metrics (infidelity, "
            "sensitivity) belong to evaluation, not to `esegeta run`."
        )
    if _truthy(entry.get("uncertainity_cascading", 0)):
        warn(
            f"{where}: uncertainity_cascading={entry['uncertainity_cascading']!r} not carried "
            "over: cascading randomisation belongs to evaluation, not to `esegeta run`."
        )
    for key in sorted(set(entry) - _ENTRY_KEYS):
        warn(f"{where}: unknown entry key {key!r} dropped.")
    return spec


def convert_legacy(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Convert a TorchEsegeta config dict into a ``RunConfig`` dict plus warnings.

    The result validates as :class:`esegeta_core.config.RunConfig` whenever at least
    one method carries over; the model factory and input paths are ``REPLACE_ME``
    placeholders (the original had neither) and a warning says to set them.
    """
    warnings: list[str] = []
    warn = warnings.append
    rank = 3 if _truthy(data.get("is_3d", False)) else 2

    out: dict[str, Any] = {}
    keys = ("model_name", "dataset", "test_run")
    parts = [str(data[k]) for k in keys if data.get(k) not in (None, "")]
    name = "_".join(parts) or "run"
    out["name"] = re.sub(r"[/\\\0]", "_", name) if name not in (".", "..") else "run"
    if out["name"] != name:
        warn(f"run name {name!r} became {out['name']!r} (a run name is one folder name).")

    out["model"] = {"factory": MODEL_PLACEHOLDER}
    warn(
        "model.factory is a placeholder: the original config named no model factory; set it "
        "to 'package.module:function' (or 'file.py:function') and add a checkpoint if needed."
    )
    if _truthy(data.get("default", False)):
        warn(
            "`default` (bundled demo models) not carried over: esegeta ships no demo models; "
            "point model.factory at your model."
        )

    inputs: dict[str, Any] = {"paths": [REPLACE_ME], "rank": rank}
    warn("inputs.paths is a placeholder: the original config named no input files; set it.")
    if "isDepthFirst" in data:
        inputs["depth_first"] = _truthy(data["isDepthFirst"])
    batch = data.get("batch_dim_present", data.get("batch_present"))
    if batch is not None:
        inputs["batch_dim"] = _truthy(batch)
    mean, std = data.get("mean_vec"), data.get("std_vec")
    if not _unset(mean) and not _unset(std):
        inputs["normalise"] = {"mean": _floats(mean), "std": _floats(std)}
    elif not (_unset(mean) and _unset(std)):
        warn("mean_vec/std_vec: only one of them is set; normalisation not carried over.")
    resize = data.get("resize")
    if not _off(resize):
        sizes = resize if isinstance(resize, (list, tuple)) else [resize] * rank
        inputs["resize"] = [int(s) for s in sizes]
    if not _off(data.get("centre_crop")):
        warn(f"centre_crop={data['centre_crop']!r} not carried over: esegeta has no centre crop.")
    out["inputs"] = inputs

    nature = _norm(data.get("model_nature", "classification"))
    if nature.startswith("seg"):
        out["task"] = "segmentation"
    elif nature.startswith("class"):
        out["task"] = "classification"
    else:
        out["task"] = "classification"
        warn(f"model_nature {data.get('model_nature')!r} unknown; using 'classification'.")

    entries = _method_entries(data)
    methods = [
        spec
        for i, entry in enumerate(entries)
        if (spec := _convert_method(entry, i, rank, warn)) is not None
    ]
    if not methods:
        warn("No method carried over: add at least one to `methods` before running.")
    out["methods"] = methods

    used = [e for e in entries if _truthy(e.get("use", 1))]
    devices = _devices(used, warn)
    if devices:
        out["devices"] = devices
    if len(devices) > 1:
        warn(
            f"device_id per method not carried over: esegeta schedules every job on any of "
            f"{devices} (set `devices` to restrict)."
        )
    threads = data.get("share_gpu_threads")
    if isinstance(threads, (int, float)) and threads >= 1:
        out["jobs_per_gpu"] = int(threads)

    size, overlap = data.get("patch_size"), data.get("patch_overlap", 0)
    if not _off(size):
        overlap = 0 if _off(overlap) else overlap
        overlaps = overlap if isinstance(overlap, (list, tuple)) else [overlap]
        even = [int(o) - int(o) % 2 for o in overlaps]
        if even != [int(o) for o in overlaps] or any(o != int(o) for o in overlaps):
            warn(f"patch_overlap {overlap!r} rounded down to even {even} (esegeta needs even).")
        sizes = [int(s) for s in size] if isinstance(size, (list, tuple)) else int(size)
        out["patches"] = {
            "size": sizes,
            "overlap": even if isinstance(overlap, (list, tuple)) else even[0],
            "mode": "average",
        }
    elif any(_truthy(e.get("patch_required", 0)) for e in used):
        warn("Some methods set patch_required but patch_size is off: no patches.")

    if _truthy(data.get("amp_enbled", data.get("amp_enabled", False))):
        if any(d.startswith("cuda") for d in devices):
            out["amp"] = "fp16"
        else:
            out["amp"] = "bf16"
            warn(
                "amp_enbled: no CUDA device in the config, so amp is 'bf16' (fp16 mixed "
                "precision is a CUDA feature); set 'fp16' if the run will use a GPU."
            )

    if _truthy(data.get("timeout_enabled", False)):
        limit = data.get("timeout_time")
        if isinstance(limit, (int, float)) and limit > 0:
            out["time_limit"] = float(limit)
        else:
            warn(f"timeout_enabled but timeout_time={limit!r} is not a positive number: no limit.")

    colorbars = {_truthy(e.get("show_colorbar", True)) for e in used}
    out["outputs"] = {"colorbar": True in colorbars or not colorbars}
    if len(colorbars) > 1:
        warn("show_colorbar differs between methods; esegeta has one setting: colour bars on.")

    level = data.get("log_level")
    if level is not None:
        name = str(level).upper()
        name = {"WARN": "WARNING", "CRITICAL": "ERROR", "FATAL": "ERROR"}.get(name, name)
        if name.isdigit():
            name = {10: "DEBUG", 20: "INFO", 30: "WARNING"}.get(int(name), "ERROR")
        if name in _LOG_LEVELS:
            out["log_level"] = name
        else:
            warn(f"log_level {level!r} unknown; using INFO.")

    for key in sorted(set(data) - _TOP_KEYS):
        warn(f"unknown top-level key {key!r} dropped.")
    return out, warnings


def write_converted(
    src: Path, dst: Path | None = None, *, force: bool = False
) -> tuple[Path, list[str]]:
    """Read a TorchEsegeta JSON config, convert it and write YAML (default: beside it).

    Returns the written path and the warnings; the YAML starts with the warnings as
    comments so they travel with the file. An existing ``dst`` is replaced only with
    ``force``, the source never (not even with ``force``); the YAML is written to a
    temporary file in the same folder and moved into place, so a failure leaves no
    half-written file.
    """
    import yaml

    from esegeta_core.config import read_config_file
    from esegeta_core.errors import InvalidParamsError
    from esegeta_core.files import atomic_path

    src = Path(src)
    text = read_config_file(src, "TorchEsegeta config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParamsError(
            f"TorchEsegeta config {src} is not valid JSON at line {exc.lineno}, column "
            f"{exc.colno}: {exc.msg}."
        ) from exc
    except RecursionError as exc:
        raise InvalidParamsError(f"TorchEsegeta config {src} is nested too deeply.") from exc
    if not isinstance(data, dict):
        raise InvalidParamsError(f"{src}: a TorchEsegeta config is a JSON object at the top level.")
    dst = src.with_suffix(".yaml") if dst is None else Path(dst)
    _check_destination(src, dst, force)
    converted, warnings = convert_legacy(data)
    header = [f"# Converted from {src.name} (TorchEsegeta) by esegeta."]
    header += [f"# WARNING: {w}" for w in warnings]
    body = yaml.safe_dump(converted, sort_keys=False)
    try:
        with atomic_path(dst) as tmp:
            tmp.write_text("\n".join(header) + "\n" + body)
    except OSError as exc:
        raise InvalidParamsError(
            f"Cannot write the converted config {dst}: {exc.strerror or exc}; choose another "
            "path with -o."
        ) from exc
    return dst, warnings


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    """Refuse to write over ``src`` (ever) or over an existing ``dst`` (without force)."""
    from esegeta_core.errors import InvalidParamsError

    same = src.resolve() == dst.resolve()
    if not same and dst.exists():
        try:
            same = os.path.samefile(src, dst)
        except OSError:
            same = False
    if same:
        raise InvalidParamsError(
            f"convert-config would write over its own source {src}; choose another output "
            "file with -o (e.g. -o converted.yaml)."
        )
    if dst.is_dir():
        raise InvalidParamsError(f"{dst} is a folder; give a file name with -o (e.g. -o run.yaml).")
    if dst.exists() and not force:
        raise InvalidParamsError(
            f"{dst} already exists; pass --force to replace it (force=True from Python), or "
            "choose another file with -o."
        )

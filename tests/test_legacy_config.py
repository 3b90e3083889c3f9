"""TorchEsegeta JSON configs convert to valid esegeta run configs, with warnings."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from esegeta_core.config import RunConfig, load_config
from esegeta_core.legacy_config import (
    METHODS,
    MODEL_PLACEHOLDER,
    REPLACE_ME,
    convert_legacy,
    write_converted,
)


def _entry(library: str, name: str, **extra: Any) -> dict[str, Any]:
    entry = {
        "method_name": name,
        "library": library,
        "device_id": "cuda:0",
        "use": 1,
        "patch_required": 0,
        "visualize_method": "heat_map",
        "sign": "all",
        "show_colorbar": True,
        "title": name,
        "uncertainity_metrics": False,
        "uncertainity_cascading": 0,
        "keywords": {},
    }
    entry.update(extra)
    return entry


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

LEGACY: dict[str, Any] = json.loads((EXAMPLES / "torchesegeta_config.json").read_text())
"""A TorchEsegeta config in the original's format (examples/torchesegeta_config.json)."""


@pytest.fixture(scope="module")
def converted() -> tuple[dict[str, Any], list[str]]:
    return convert_legacy(copy.deepcopy(LEGACY))


def _method(out: dict[str, Any], title: str) -> dict[str, Any]:
    (spec,) = [m for m in out["methods"] if m.get("title") == title]
    return spec


def _warned(warnings: list[str], *words: str) -> bool:
    return any(all(w in text for w in words) for text in warnings)


def test_result_validates(converted: tuple[dict[str, Any], list[str]]) -> None:
    out, _ = converted
    config = RunConfig.model_validate(out)
    assert len(config.methods) == 14  # 15 methods + 1 LIME, minus use=0 and unknown


def test_top_level_mappings(converted: tuple[dict[str, Any], list[str]]) -> None:
    out, _ = converted
    assert out["name"] == "UNetMSS_vessels_3"
    assert out["task"] == "segmentation"
    assert out["model"] == {"factory": MODEL_PLACEHOLDER}
    assert out["inputs"] == {
        "paths": [REPLACE_ME],
        "rank": 3,
        "depth_first": False,
        "batch_dim": True,
        "normalise": {"mean": [0.5], "std": [0.25]},
        "resize": [64, 64, 32],
    }
    assert out["devices"] == ["cuda:0", "cuda:1"]
    assert out["jobs_per_gpu"] == 2
    assert out["patches"] == {"size": 32, "overlap": 4, "mode": "average"}
    assert out["amp"] == "fp16"
    assert out["time_limit"] == 600.0
    assert out["log_level"] == "DEBUG"
    assert out["outputs"] == {"colorbar": True}


def test_method_names_and_keywords(converted: tuple[dict[str, Any], list[str]]) -> None:
    out, _ = converted
    saliency = _method(out, "Saliency")
    assert saliency == {
        "method": "captum.saliency",
        "params": {"abs": True, "noise_tunnel": "smoothgrad", "nt_samples": 8},
        "title": "Saliency",
        "patches": False,
        "sign": "positive",
    }
    assert _method(out, "Integrated Gradients")["method"] == "captum.integrated_gradients"
    occlusion = _method(out, "Occlusion")
    assert occlusion["params"] == {"window": [8, 8, 8], "strides": [4, 4, 4]}
    assert occlusion["patches"] is True
    assert _method(out, "GuidedGradCam")["params"] == {"layer": "encoder.2"}
    assert _method(out, "layer_gradcam")["method"] == "captum.layer_grad_cam"
    assert _method(out, "GradientShap")["params"] == {"n_samples": 5, "stdevs": 0.1}
    assert "params" not in _method(out, "DeepLift")  # its only keyword was unknown
    lagb = _method(out, "Layer Activation Guided Backprop")
    assert lagb["method"] == "cnnvis.layer_activation_guided_backprop"
    assert lagb["params"] == {"layer": "features.3", "filter": 5}
    dream = _method(out, "DeepDream")
    assert dream["method"] == "cnnvis.deep_dream"
    assert dream["params"] == {"steps": 250, "layer": REPLACE_ME}
    assert _method(out, "GradCam++")["method"] == "cnnvis.grad_cam_pp"
    ceb = _method(out, "contrastive_excitation_backprop")
    assert ceb["method"] == "torchray.contrastive_excitation_backprop"
    assert ceb["params"] == {"saliency_layer": "encoder.conv2", "contrast_layer": "encoder.conv1"}
    rise = _method(out, "RISE")
    assert rise["method"] == "torchray.rise"
    assert rise["sign"] == "absolute"
    assert _method(out, "render_vis")["method"] == "lucent.feature_visualization"
    (lime,) = [m for m in out["methods"] if m["method"] == "lime.lime"]
    assert lime["params"] == {"num_samples": 100, "num_features": 5}
    names = [m["method"] for m in out["methods"]]
    assert "captum.deconvolution" not in names


def test_warnings_name_everything_not_carried(
    converted: tuple[dict[str, Any], list[str]],
) -> None:
    _, warnings = converted
    assert _warned(warnings, "model.factory", "placeholder")
    assert _warned(warnings, "inputs.paths", "placeholder")
    assert _warned(warnings, "centre_crop")
    assert _warned(warnings, "patch_overlap", "[4]")
    assert _warned(warnings, "Deconvolution", "use")
    assert _warned(warnings, "MagicAttribution", "unknown method")
    assert _warned(warnings, "DeepLift", "warp_factor")
    assert _warned(warnings, "DeepLift", "uncertainity_metrics", "evaluation")
    assert _warned(warnings, "DeepLift", "uncertainity_cascading", "evaluation")
    assert _warned(warnings, "DeepDream", "`layer`")
    assert _warned(warnings, "layer index 3", "features.3")
    assert _warned(warnings, "model.encoder[2]", "encoder.2")
    assert _warned(warnings, "RISE", "blended_heat_map")
    assert _warned(warnings, "lime", "top_labels")
    assert _warned(warnings, "lime", "depth")
    assert _warned(warnings, "Lucent objective", "encoder_conv2:3")
    assert _warned(warnings, "device_id per method", "cuda:1")


@pytest.mark.parametrize(
    ("library", "name", "expected"),
    [
        ("captum", "Saliency", "captum.saliency"),
        ("captum", "IntegratedGradients", "captum.integrated_gradients"),
        ("captum", "integrated_gradients", "captum.integrated_gradients"),
        ("captum", "FeatureAblation", "captum.feature_ablation"),
        ("captum", "GuidedBackprop", "captum.guided_backprop"),
        ("captum", "LayerConductance", "captum.layer_conductance"),
        ("captum", "InternalInfluence", "captum.internal_influence"),
        ("captum", "LayerGradientShap", "captum.layer_gradient_shap"),
        ("captum", "LayerDeepLift", "captum.layer_deep_lift"),
        ("captum", "LayerActivation", "captum.layer_activation"),
        ("captum", "LayerGradientXActivation", "captum.layer_gradient_x_activation"),
        ("captum", "DeepLiftShap", "captum.deep_lift_shap"),
        ("captum", "InputXGradient", "captum.input_x_gradient"),
        ("captum", "ShapleyValueSampling", "captum.shapley_value_sampling"),
        ("captum", "FeaturePermutation", "captum.feature_permutation"),
        ("cnn visualizations", "Vanilla Backprop", "cnnvis.vanilla_backprop"),
        ("cnn visualizations", "GuidedBackprop", "cnnvis.guided_backprop"),
        ("cnn visualizations", "grad_x_image", "cnnvis.gradient_x_input"),
        ("cnn visualizations", "IntegratedGradients", "cnnvis.integrated_gradients"),
        ("cnn visualizations", "Grad-CAM", "cnnvis.grad_cam"),
        ("cnn visualizations", "ScoreCam", "cnnvis.score_cam"),
        ("cnn visualizations", "GuidedGradCam", "cnnvis.guided_grad_cam"),
        ("cnn visualizations", "LayerVisualization", "cnnvis.layer_visualization"),
        ("torchray", "excitation_backprop", "torchray.excitation_backprop"),
        ("torchray", "deconvnet", "torchray.deconvnet"),
        ("torchray", "gradient", "torchray.gradient"),
        ("torchray", "guided_backprop", "torchray.guided_backprop"),
        ("torchray", "gradcam", "torchray.grad_cam"),
        ("torchray", "linear_approx", "torchray.linear_approx"),
        ("torchray", "extremal_perturbation", "torchray.extremal_perturbation"),
        ("lime", "LimeImageExplainer", "lime.lime"),
    ],
)
def test_method_table(library: str, name: str, expected: str) -> None:
    data = {"is_3d": False, "methods": [_entry(library, name, device_id="cpu")]}
    out, _ = convert_legacy(data)
    assert [m["method"] for m in out["methods"]] == [expected]
    RunConfig.model_validate(out)


def test_required_layers_have_placeholders_and_table_is_consistent() -> None:
    for targets in METHODS.values():
        for target in targets:
            assert set(target.required) <= target.params, target.name
            assert set(target.preset) <= target.params, target.name
    out, warnings = convert_legacy({"methods": [_entry("torchray", "grad_cam")]})
    assert out["methods"][0]["params"] == {"saliency_layer": REPLACE_ME}
    assert _warned(warnings, "saliency_layer", "set it")


def test_cpu_amp_is_bf16_with_warning_and_off_switches() -> None:
    data = {
        "model_nature": "Classification",
        "is_3d": False,
        "amp_enbled": True,
        "patch_size": -1,
        "patch_overlap": -1,
        "timeout_enabled": False,
        "timeout_time": 10,
        "mean_vec": [],
        "std_vec": [],
        "resize": -1,
        "default": True,
        "methods": [_entry("captum", "Saliency", device_id=["cpu"], show_colorbar=False)],
    }
    out, warnings = convert_legacy(data)
    assert out["amp"] == "bf16"
    assert _warned(warnings, "amp_enbled", "bf16")
    assert out["task"] == "classification"
    assert out["inputs"]["rank"] == 2
    for key in ("patches", "time_limit"):
        assert key not in out
    assert "normalise" not in out["inputs"]
    assert "resize" not in out["inputs"]
    assert out["outputs"] == {"colorbar": False}
    assert out["devices"] == ["cpu"]
    assert _warned(warnings, "`default`", "demo models")
    RunConfig.model_validate(out)


def test_noise_tunnel_samples_without_type_are_dropped_with_warning() -> None:
    out, warnings = convert_legacy(
        {"methods": [_entry("captum", "Saliency", keywords={"n_samples": 4})]}
    )
    assert "params" not in out["methods"][0]
    assert _warned(warnings, "nt_samples", "no noise tunnel")


def test_nothing_left_is_reported() -> None:
    out, warnings = convert_legacy({"methods": [_entry("captum", "Saliency", use=0)]})
    assert out["methods"] == []
    assert _warned(warnings, "No method carried over")


def test_write_converted(tmp_path: Path) -> None:
    src = tmp_path / "old.json"
    src.write_text(json.dumps(LEGACY))
    dst, warnings = write_converted(src, None)
    assert dst == tmp_path / "old.yaml"
    text = dst.read_text()
    assert text.startswith("# Converted from old.json")
    assert text.count("# WARNING:") == len(warnings)
    data = yaml.safe_load(text)
    assert list(data)[:3] == ["name", "model", "inputs"]  # order kept (sort_keys=False)
    assert data == convert_legacy(copy.deepcopy(LEGACY))[0]
    config = load_config(dst)  # the core's own loader accepts it
    assert config.name == "UNetMSS_vessels_3"
    other, _ = write_converted(src, tmp_path / "sub" / "new.yaml")
    assert other.exists()

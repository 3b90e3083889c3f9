"""Parameter validation, capabilities and the behaviour of the shared pieces."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from esegeta_core import (
    InvalidParamsError,
    NotApplicableError,
    explain,
    get_registry,
)
from esegeta_core.testing import tiny_input, tiny_model

CAPTUM = sorted(n for n, p in get_registry().plugin_of.items() if p == "captum")


def run(method: str, rank: int = 2, **params: object) -> torch.Tensor:
    model, x = tiny_model("classification", rank), tiny_input("classification", rank)
    return explain(model, x, method, seed=0, **params)


def test_import_does_not_import_captum() -> None:
    code = "import sys, esegeta_captum; sys.exit('captum' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("method", CAPTUM)
def test_capabilities(method: str) -> None:
    cls = get_registry().get(method)
    assert cls.description() and cls.paper.startswith("https://")
    assert cls.ranks == (2, 3)
    assert cls.output == ("layer" if cls.family == "layer" else "input")
    assert cls.needs_layer == bool(cls.Params.layer_fields())
    for name, field in cls.Params.model_fields.items():
        assert field.description, name


def test_wrong_type_is_invalid_params() -> None:
    with pytest.raises(InvalidParamsError, match="n_steps"):
        run("captum.integrated_gradients", n_steps="many")


@pytest.mark.parametrize(("field", "value"), [("window", (4, 4, 4)), ("strides", (2,))])
def test_window_with_wrong_dims(field: str, value: tuple[int, ...]) -> None:
    with pytest.raises(InvalidParamsError, match=f"{'window' if field == 'window' else 'strides'}"):
        run("captum.occlusion", **{field: value})


def test_window_per_dim_in_3d() -> None:
    e = run("captum.occlusion", rank=3, window=(8, 4, 4), strides=(8, 4, 4))
    # one window along depth: every depth slice of a cell gets the same attribution
    a = e.attributions
    assert torch.allclose(a[:, :, :1].expand_as(a), a)


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("captum.feature_ablation", {"feature_mask": "superpixel", "grid_cell": 4}, "grid_cell"),
        ("captum.feature_ablation", {"n_segments": 4}, "n_segments"),
        ("captum.saliency", {"nt_samples": 4}, "noise_tunnel"),
        ("captum.integrated_gradients", {"baseline_sigma": 2.0}, "baseline_sigma"),
        ("captum.integrated_gradients", {"method": "riemann_left"}, "reserved|method"),
    ],
)
def test_unused_or_reserved_parameters_are_rejected(
    method: str, params: dict[str, object], match: str
) -> None:
    with pytest.raises((InvalidParamsError, TypeError), match=match):
        run(method, **params)


def test_shapley_values_refuses_too_many_features() -> None:
    with pytest.raises(InvalidParamsError, match="shapley_value_sampling"):
        run("captum.shapley_values", grid_cell=4)


def test_kernel_shap_needs_two_features() -> None:
    with pytest.raises(InvalidParamsError, match="single feature"):
        run("captum.kernel_shap", grid_cell=16, n_samples=4)


def test_deep_lift_shap_needs_two_references() -> None:
    with pytest.raises(InvalidParamsError, match="at least two"):
        run("captum.deep_lift_shap", baselines=["zeros"])


@pytest.mark.parametrize("selector", [(8,), (0, 0, 0, 0), (0, 9)])
def test_neuron_selector_out_of_range(selector: tuple[int, ...]) -> None:
    with pytest.raises(InvalidParamsError, match="neuron_selector"):
        run("captum.neuron_gradient", layer="features.conv2", neuron_selector=selector)


@pytest.mark.parametrize("rank", [2, 3])
def test_superpixel_masks(rank: int) -> None:
    e = run("captum.feature_ablation", rank=rank, feature_mask="superpixel", n_segments=8)
    mask = e.extras["feature_mask"]
    x = tiny_input("classification", rank)
    assert mask.shape == (2, 1, *x.shape[2:])
    assert 1 < int(mask[0].max()) + 1 <= 32
    # every pixel of a superpixel gets the same attribution (all channels together)
    a, m = e.attributions[0, 0], mask[0, 0]
    for s in m.unique():
        assert torch.allclose(a[m == s], a[m == s][0])


def test_user_feature_mask() -> None:
    halves = torch.zeros(16, 16, dtype=torch.long)
    halves[:, 8:] = 7
    e = run("captum.feature_ablation", feature_mask=halves)
    assert e.attributions[0, 0, :, :8].unique().numel() == 1
    with pytest.raises(InvalidParamsError, match="feature mask"):
        run("captum.feature_ablation", feature_mask=torch.zeros(4, 4))


def test_layer_feature_ablation_units_and_tensor_masks() -> None:
    unit = run("captum.layer_feature_ablation", layer="features.conv2", layer_mask="unit")
    chan = run("captum.layer_feature_ablation", layer="features.conv2")
    assert unit.attributions.shape == chan.attributions.shape == (2, 8, 8, 8)
    assert chan.attributions[0, 0].unique().numel() == 1
    assert unit.attributions[0, 0].unique().numel() > 1


def test_noise_tunnel_changes_the_result_and_is_seeded() -> None:
    plain = run("captum.saliency").attributions
    smooth = run("captum.saliency", noise_tunnel="smoothgrad", nt_samples=4).attributions
    again = run("captum.saliency", noise_tunnel="smoothgrad", nt_samples=4).attributions
    assert not torch.allclose(plain, smooth)
    assert torch.equal(smooth, again)


def test_layer_method_with_noise_tunnel() -> None:
    e = run("captum.layer_grad_cam", layer="features.conv2", noise_tunnel="vargrad", nt_samples=3)
    assert e.attributions.shape == (2, 1, 8, 8)


def test_neuron_methods_ignore_the_target() -> None:
    model, x = tiny_model(), tiny_input()
    p = {"layer": "features.conv2", "neuron_selector": (2,)}
    a = explain(model, x, "captum.neuron_gradient", target=0, **p).attributions
    b = explain(model, x, "captum.neuron_gradient", target=3, **p).attributions
    assert torch.equal(a, b)


def test_feature_permutation_numpy_state_is_left_alone() -> None:
    import numpy as np

    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    run("captum.gradient_shap", n_samples=2)
    assert np.random.rand() == expected


class _Exp(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.exp()


def test_lrp_passes_relevance_through_any_activation_and_refuses_unknown_layers() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 3), torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.Linear(392, 2)
    )
    e = explain(model, tiny_input(), "captum.lrp", 0)
    assert torch.isfinite(e.attributions).all() and e.attributions.abs().sum() > 0
    model[1] = _Exp()
    with pytest.raises(NotApplicableError, match="exp inside _Exp"):
        explain(model, tiny_input(), "captum.lrp", 0)

"""Cascading randomisation mechanics, and the Spearman / SSIM similarities it uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esegeta_core import InvalidParamsError, LayerNotFoundError, ScoreModel
from esegeta_core.evaluation import (
    cascading_randomisation,
    randomisation_layers,
    spearman,
    ssim,
)
from esegeta_core.targets import MultiClassScores
from esegeta_core.testing import tiny_input, tiny_model


def gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    return g


def weight_blind(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x * x  # an edge-detector-like map that never looks at the weights


# --- similarities -------------------------------------------------------------------


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-4, 5, (3, 1, 6, 6), generator=gen).float()  # many ties
    b = a + torch.randint(-2, 3, (3, 1, 6, 6), generator=gen).float()
    ours = spearman(a, b)
    for i in range(3):
        rho = stats.spearmanr(a[i].abs().flatten(), b[i].abs().flatten()).statistic
        assert ours[i].item() == pytest.approx(rho, abs=1e-6)
    signed = spearman(a, b, absolute=False)
    rho = stats.spearmanr(a[0].flatten(), b[0].flatten()).statistic
    assert signed[0].item() == pytest.approx(rho, abs=1e-6)
    assert torch.allclose(spearman(a, a), torch.ones(3))
    # scipy says NaN for constant maps; here one constant map scores 0, two score 1
    assert spearman(torch.ones(1, 1, 6, 6), a[:1]).item() == 0.0
    assert spearman(torch.ones(1, 1, 6, 6), torch.zeros(1, 1, 6, 6)).item() == 1.0


@pytest.mark.parametrize("shape", [(16, 16), (12, 12, 12)])
def test_ssim_matches_skimage(shape):
    metrics = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 1, *shape, generator=gen)
    b = a + 0.5 * torch.randn(2, 1, *shape, generator=gen)
    ours = ssim(a, b)
    for i in range(2):
        x, y = a[i, 0].abs().double(), b[i, 0].abs().double()
        expected = metrics.structural_similarity(
            (x / x.max()).numpy(),
            (y / y.max()).numpy(),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    assert torch.allclose(ssim(a, 3 * a), torch.ones(2))  # scale-free: each map scaled to [0, 1]


def test_ssim_small_maps_shrink_the_window():
    a = torch.rand(2, 1, 4, 4, 4)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    assert bool((ssim(a, torch.rand(2, 1, 4, 4, 4)) < 1).all())


# --- cascading randomisation ----------------------------------------------------------


def test_layers_in_cascading_order():
    model = tiny_model("classification", 2)
    assert randomisation_layers(model) == ["fc", "features.conv2", "features.bn1", "features.conv1"]
    assert randomisation_layers(model, "children") == ["fc", "features"]
    wrapped = ScoreModel(tiny_model("segmentation", 3), MultiClassScores())
    # names refer to the user's model inside the wrapper
    assert randomisation_layers(wrapped, "children") == ["head", "encoder"]
    seq = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1)))
    assert randomisation_layers(seq, "children") == ["0.2", "0.0"]  # the only child's children
    assert randomisation_layers(model, ["features.conv1"]) == ["features.conv1"]
    with pytest.raises(LayerNotFoundError, match="features.conv3"):
        randomisation_layers(model, ["features.conv3"])
    with pytest.raises(InvalidParamsError, match="layers"):
        randomisation_layers(model, "modules")


@pytest.mark.parametrize("rank", [2, 3])
def test_weight_blind_map_stays_identical_and_fails(rank):
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=2)
    out = cascading_randomisation(model, x, 0, weight_blind)
    assert out.layers == ("fc", "features.conv2", "features.bn1", "features.conv1")
    assert out.spearman.shape == (4, 2) and out.ssim.shape == (4, 2)
    assert torch.allclose(out.spearman, torch.ones(4, 2))
    assert torch.allclose(out.ssim, torch.ones(4, 2), atol=1e-6)
    assert out.fails.tolist() == [True, True] and out.failed


@pytest.mark.parametrize("rank", [2, 3])
def test_gradient_of_a_tiny_model_changes(rank):
    model = ScoreModel(tiny_model("segmentation", rank), MultiClassScores())
    x = tiny_input("segmentation", rank, batch=2)
    with torch.no_grad():
        t = model(x).argmax(1)
    out = cascading_randomisation(model, x, t, gradient)
    assert out.layers == ("head", "encoder.conv2", "encoder.bn1", "encoder.conv1")
    assert bool((out.spearman[-1] < 0.5).all())
    assert out.fails.tolist() == [False, False] and not out.failed


def test_randomisation_is_seeded():
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2)
    out = cascading_randomisation(model, x, 1, gradient, layers="children")
    again = cascading_randomisation(model, x, 1, gradient, layers="children")
    assert torch.equal(out.spearman, again.spearman) and torch.equal(out.ssim, again.ssim)
    other = cascading_randomisation(model, x, 1, gradient, layers="children", seed=1)
    assert not torch.equal(out.spearman, other.spearman)


def test_randomisation_is_cumulative_on_a_copy():
    model = tiny_model("classification", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = tiny_input("classification", 2, batch=1)
    seen = []

    def record(m, xs, ts):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return gradient(m, xs, ts)

    cascading_randomisation(model, x, 0, record, layers="children", init="uniform")
    original, step1, step2 = seen
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k  # the user's model is untouched
        assert torch.equal(original[k], v), k
    assert not torch.equal(step1["fc.weight"], before["fc.weight"])
    assert torch.equal(step1["features.conv1.weight"], before["features.conv1.weight"])
    assert torch.equal(step2["fc.weight"], step1["fc.weight"])  # cumulative
    assert not torch.equal(step2["features.conv1.weight"], before["features.conv1.weight"])
    # "uniform": values drawn within mean +- std of the original values
    w = before["fc.weight"]
    std, mean = torch.std_mean(w)
    assert bool(((step1["fc.weight"] >= mean - std) & (step1["fc.weight"] <= mean + std)).all())


def test_verdict_threshold_and_ssim_verdict():
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2)
    a = weight_blind(model, x, None)
    out = cascading_randomisation(
        model, x, 0, weight_blind, attributions=a, threshold=1.5, verdict_on="ssim"
    )
    assert out.fails.tolist() == [False, False] and out.verdict_on == "ssim"
    with pytest.raises(InvalidParamsError, match="verdict_on"):
        cascading_randomisation(model, x, 0, weight_blind, verdict_on="pearson")
    with pytest.raises(InvalidParamsError, match="init"):
        cascading_randomisation(model, x, 0, weight_blind, init="zeros")
    with pytest.raises(InvalidParamsError, match="no layers"):
        cascading_randomisation(nn.Flatten(), x, 0, weight_blind)

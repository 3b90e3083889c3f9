"""Infidelity and max-sensitivity: hand-computed cases and agreement with Captum."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from esegeta_core import InvalidInputError, InvalidParamsError, InvalidTargetError, ScoreModel
from esegeta_core.evaluation import PRESETS, TORCHESEGETA, infidelity, max_sensitivity, preset
from esegeta_core.targets import MultiClassScores
from esegeta_core.testing import tiny_input, tiny_model


class Linear(nn.Module):
    """f(x) = W x: the gradient is the exact attribution for any perturbation."""

    def __init__(self, shape: tuple[int, ...], classes: int = 3) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.weight = nn.Parameter(torch.randn(classes, math.prod(shape), generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():  # Captum's sensitivity_max calls it under no_grad
        (g,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    return g


def gaussian_pair(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn_like(inputs) * 0.05
    return noise, inputs - noise


def uniform_perturb(inputs: torch.Tensor, radius: float) -> torch.Tensor:
    return inputs + torch.empty_like(inputs).uniform_(-radius, radius)


def case(rank: int, batch: int = 2, task: str = "classification"):
    model = tiny_model(task, rank)
    if task == "segmentation":
        model = ScoreModel(model, MultiClassScores())
    x = tiny_input(task, rank, batch=batch)
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, x, t


# --- infidelity -------------------------------------------------------------------


@pytest.mark.parametrize("rank", [2, 3])
def test_infidelity_linear_model_is_exact(rank):
    shape = (2,) + (4,) * rank
    model = Linear(shape)
    x = torch.rand(3, *shape)
    t = torch.tensor([0, 1, 2])
    a = gradient(model, x, t)
    out = infidelity(model, x, t, a, normalize=False, n_samples=4)
    assert out.infidelity.shape == (3,)
    assert torch.allclose(out.infidelity, torch.zeros(3), atol=1e-6)
    # twice the gradient: error (W.I)^2 unless normalised, which rescales by beta = 1/2
    doubled = infidelity(model, x, t, 2 * a, normalize=False, n_samples=4, seed=3)
    assert bool((doubled.infidelity > 0).all())
    scaled = infidelity(model, x, t, 2 * a, normalize=True, n_samples=4, seed=3)
    assert torch.allclose(scaled.infidelity, torch.zeros(3), atol=1e-6)


def test_infidelity_hand_computed_single_perturbation():
    # one feature, f(x) = 2x; perturbation I = 0.5; map A = 3
    model = Linear((1, 1, 1), classes=1)
    with torch.no_grad():
        model.weight.fill_(2.0)
    x = torch.ones(1, 1, 1, 1)
    out = infidelity(
        model,
        x,
        0,
        torch.full_like(x, 3.0),
        normalize=False,
        n_samples=2,
        perturbation=lambda xs: (torch.full_like(xs, 0.5), xs - 0.5),
    )
    # (A.I - (f(x) - f(x - I)))^2 = (1.5 - 1.0)^2
    assert out.infidelity.item() == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("rank", "normalize", "batch_size", "task"),
    [
        (2, False, 64, "classification"),
        (2, True, 4, "classification"),
        (3, True, 64, "classification"),
        (3, False, 6, "segmentation"),
    ],
)
def test_infidelity_matches_captum(rank, normalize, batch_size, task):
    metrics = pytest.importorskip("captum.metrics")
    model, x, t = case(rank, batch=2, task=task)
    a = gradient(model, x, t)
    torch.manual_seed(0)
    expected = metrics.infidelity(
        model,
        gaussian_pair,
        x,
        a,
        target=t,
        n_perturb_samples=5,
        max_examples_per_batch=batch_size if batch_size < 10 else None,
        normalize=normalize,
    )
    ours = infidelity(
        model,
        x,
        t,
        a,
        n_samples=5,
        perturbation=gaussian_pair,
        normalize=normalize,
        batch_size=batch_size,
        seed=0,
    )
    assert torch.allclose(ours.infidelity, expected.float(), rtol=1e-4, atol=1e-9)


def test_infidelity_default_noise_matches_captum_with_the_same_noise():
    metrics = pytest.importorskip("captum.metrics")
    model, x, t = case(2, batch=3)
    a = gradient(model, x, t)

    def pair(inputs):
        noise = torch.randn_like(inputs) * 1e-2
        return noise, inputs - noise

    torch.manual_seed(7)
    expected = metrics.infidelity(model, pair, x, a, target=t, n_perturb_samples=3)
    ours = infidelity(model, x, t, a, noise_std=1e-2, n_samples=3, normalize=False, seed=7)
    assert torch.allclose(ours.infidelity, expected, rtol=1e-4)


def test_infidelity_one_channel_map_broadcasts_and_perturbed_only_return():
    model, x, t = case(2)
    a = gradient(model, x, t)
    full = infidelity(model, x, t, a.sum(1, keepdim=True).expand_as(a).contiguous(), seed=1)
    one = infidelity(model, x, t, a.sum(1, keepdim=True), seed=1)
    assert torch.allclose(full.infidelity, one.infidelity)
    # returning only the perturbed inputs means perturbation = inputs - perturbed
    pairs = infidelity(model, x, t, a, perturbation=gaussian_pair, seed=2)
    only = infidelity(model, x, t, a, perturbation=lambda xs: gaussian_pair(xs)[1], seed=2)
    assert torch.allclose(pairs.infidelity, only.infidelity, rtol=1e-5)


def test_infidelity_is_seeded_and_leaves_the_global_rng_alone():
    model, x, t = case(2)
    a = gradient(model, x, t)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    one = infidelity(model, x, t, a, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    two = infidelity(model, x, t, a, seed=5)
    assert torch.equal(one.infidelity, two.infidelity)


def test_infidelity_softmax_score():
    model, x, t = case(2)
    a = gradient(model, x, t)
    out = infidelity(model, x, t, a, score="softmax")
    assert torch.isfinite(out.infidelity).all()


# --- max-sensitivity --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize(("rank", "batch_size"), [(2, 64), (2, 3), (3, 64)])
def test_max_sensitivity_matches_captum(rank, batch_size):
    metrics = pytest.importorskip("captum.metrics")
    attr = pytest.importorskip("captum.attr")
    model, x, t = case(rank, batch=2)

    def captum_expl(inputs, target):
        return attr.Saliency(model).attribute(inputs, target=target, abs=False)

    def ours_expl(m, inputs, target):
        return attr.Saliency(m).attribute(inputs, target=target, abs=False)

    torch.manual_seed(0)
    expected = metrics.sensitivity_max(
        captum_expl,
        x,
        perturb_func=uniform_perturb,
        perturb_radius=0.05,
        n_perturb_samples=4,
        max_examples_per_batch=batch_size if batch_size < 8 else None,
        target=t,
    )
    ours = max_sensitivity(
        model,
        x,
        t,
        ours_expl,
        perturbation=uniform_perturb,
        radius=0.05,
        n_samples=4,
        batch_size=batch_size,
        seed=0,
    )
    assert torch.allclose(ours.sensitivity, expected, rtol=1e-4)


def test_max_sensitivity_builtin_uniform_is_captums_default():
    metrics = pytest.importorskip("captum.metrics")
    model, x, t = case(2)
    torch.manual_seed(4)
    expected = metrics.sensitivity_max(
        lambda inputs, target: (gradient(model, inputs[0], target),),
        x,
        target=t,
        n_perturb_samples=3,
    )
    ours = max_sensitivity(model, x, t, gradient, n_samples=3, seed=4)
    assert torch.allclose(ours.sensitivity, expected, rtol=1e-4)


def test_max_sensitivity_hand_computed():
    # the map is the input itself: ||x' - x|| / ||x|| with x' = x + 0.1 everywhere
    x = torch.ones(2, 1, 2, 2)
    x[1] *= 2
    model = Linear((1, 2, 2))
    out = max_sensitivity(
        model,
        x,
        0,
        lambda m, xs, ts: xs.clone(),
        perturbation=lambda xs: xs + 0.1,
    )
    assert torch.allclose(out.sensitivity, torch.tensor([0.1, 0.05]))
    # a map that ignores its input has sensitivity 0; a zero map's norm counts as 1
    const = max_sensitivity(model, x, 0, lambda m, xs, ts: torch.zeros_like(xs))
    assert torch.equal(const.sensitivity, torch.zeros(2))


def test_max_sensitivity_gaussian_and_given_attributions():
    model, x, t = case(2)
    a = gradient(model, x, t)
    given = max_sensitivity(
        model, x, t, gradient, attributions=a, perturbation="gaussian", radius=1e-3, n_samples=2
    )
    computed = max_sensitivity(
        model, x, t, gradient, perturbation="gaussian", radius=1e-3, n_samples=2
    )
    assert torch.allclose(given.sensitivity, computed.sensitivity)
    inf_norm = max_sensitivity(model, x, t, gradient, norm=math.inf, n_samples=2)
    assert inf_norm.sensitivity.shape == (2,)


# --- presets and errors -------------------------------------------------------------


def test_esegeta_preset_is_the_function_defaults():
    import inspect

    import esegeta_core.evaluation as ev

    # the one documented exception: POMPOM's threshold is relative in evaluate(), the
    # paper's absolute 1e-6 in pompom() (maps in arbitrary units would all score ~1)
    assert dict(PRESETS["esegeta"]["pompom"]) == {"eps": 0.05, "relative": True}
    assert preset("torchesegeta", "pompom") == {"eps": 0.05, "relative": True}
    for metric, settings in PRESETS["esegeta"].items():
        if metric == "pompom":
            continue
        params = inspect.signature(getattr(ev, metric)).parameters
        for key, value in settings.items():
            assert params[key].default == value, (metric, key)
    assert TORCHESEGETA["infidelity"]["noise_std"] == 1e-4
    assert TORCHESEGETA["infidelity"]["n_samples"] == 1
    assert preset("torchesegeta", "max_sensitivity") == {
        "perturbation": "gaussian",
        "radius": 1e-3,
        "n_samples": 2,
    }
    assert preset("torchesegeta", "aopc") == dict(PRESETS["esegeta"]["aopc"])
    with pytest.raises(InvalidParamsError, match="preset"):
        preset("nope", "aopc")


def test_original_preset_runs():
    model, x, t = case(2)
    a = gradient(model, x, t)
    infidelity(model, x, t, a, **preset("torchesegeta", "infidelity"))
    max_sensitivity(model, x, t, gradient, **preset("torchesegeta", "max_sensitivity"))


def test_faithfulness_errors():
    model, x, t = case(2)
    a = gradient(model, x, t)
    with pytest.raises(InvalidInputError, match="infidelity.*attributions"):
        infidelity(model, x, t, a[:, :, :3])
    with pytest.raises(InvalidInputError, match="inputs must be shaped"):
        infidelity(model, x[0], t, a)
    with pytest.raises(InvalidTargetError, match="out of range"):
        infidelity(model, x, torch.tensor([0, 9]), a)
    with pytest.raises(InvalidTargetError, match=r"\(B,\)"):
        infidelity(model, x, torch.tensor([0, 1, 2]), a)
    with pytest.raises(InvalidParamsError, match="n_samples"):
        infidelity(model, x, t, a, n_samples=0)
    with pytest.raises(InvalidParamsError, match="score"):
        infidelity(model, x, t, a, score="logits")
    with pytest.raises(InvalidParamsError, match="keep the shape"):
        infidelity(model, x, t, a, perturbation=lambda xs: xs[:1])
    with pytest.raises(InvalidParamsError, match="perturbation"):
        max_sensitivity(model, x, t, gradient, perturbation="salt")
    with pytest.raises(InvalidParamsError, match="explain_fn"):
        max_sensitivity(model, x, t, lambda m, xs, ts: "map")
    with pytest.raises(InvalidParamsError, match="norm"):
        max_sensitivity(model, x, t, gradient, norm=-1)

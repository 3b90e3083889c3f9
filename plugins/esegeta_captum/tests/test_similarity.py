"""Captum's default LIME and KernelSHAP weights computed for every sample at once
(esegeta_captum.similarity) equal Captum's per-sample functions on the inputs Captum
builds, and the surrogate path calls no similarity function per sample for them."""

from __future__ import annotations

import pytest
import torch
from captum.attr import KernelShap, Lime
from captum.attr._core.lime import (
    default_from_interp_rep_transform,
    get_exp_kernel_similarity_function,
)
from esegeta_captum import primary, similarity
from esegeta_captum.similarity import exp_kernel_settings, sample_weights

from esegeta_core import explain
from esegeta_core.testing import tiny_input, tiny_model


def _case(rank: int, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, *([6] * rank), generator=gen) - 0.3
    channels = 3 if per_channel else 1
    mask = torch.randint(0, 5, (1, channels, *([6] * rank)), generator=gen)
    mask.view(-1)[:5] = torch.arange(5)  # every id present
    return x, mask, 5


def _coalitions(count: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    rows = (torch.rand(20, count, generator=gen) > 0.5).float()
    rows[0] = 0  # nothing kept: the perturbed input is the baseline
    rows[1] = 1  # everything kept: the input itself
    return rows


def _captum_weights(func, x, baselines, mask, coalitions) -> torch.Tensor:
    """Captum's similarity function called per sample, on the input Captum builds."""
    out = []
    for row in coalitions:
        sample = row.view(1, -1)
        perturbed = default_from_interp_rep_transform(
            sample, x, feature_mask=mask, baselines=baselines
        )
        sim = func(x, perturbed, sample, num_interp_features=coalitions.shape[1])
        out.append(torch.as_tensor(sim, dtype=torch.float32).flatten())
    return torch.cat(out)


@pytest.mark.parametrize("mode", ["cosine", "euclidean"])
@pytest.mark.parametrize("width", [1.0, 0.25, 3.0])
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("baseline", ["zero", "number", "tensor"])
def test_the_exp_kernel_equals_captums(mode, width, rank, per_channel, baseline) -> None:
    x, mask, count = _case(rank, per_channel)
    baselines = {
        "zero": 0,
        "number": 0.4,
        "tensor": torch.linspace(-1, 1, x.numel()).view(x.shape),
    }[baseline]
    coalitions = _coalitions(count)
    if mode == "euclidean":
        width *= 10  # distances over hundreds of elements: spread weights, not 0 and 1
    func = get_exp_kernel_similarity_function(mode, width)
    assert exp_kernel_settings(func) == (mode, width)
    want = _captum_weights(func, x, baselines, mask, coalitions)
    got = similarity.exp_kernel(x, baselines, mask, coalitions, mode, width)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7)
    assert len(set(want.tolist())) > 10  # the weights differ from sample to sample


def test_the_shapley_kernel_equals_captums() -> None:
    algorithm = KernelShap(torch.nn.Linear(4, 2))
    coalitions = _coalitions(6)
    want = torch.cat(
        [
            algorithm.similarity_func(None, None, row.view(1, -1), num_interp_features=6)
            for row in coalitions
        ]
    )
    got = sample_weights(algorithm, torch.zeros(1, 6), coalitions, {})
    assert got is not None and torch.equal(got, want)
    assert set(got.tolist()) == {1.0, 1e6}


def test_other_similarity_functions_are_called_per_sample() -> None:
    def custom(original, perturbed, sample, **kwargs):
        return 1.0

    assert exp_kernel_settings(custom) is None
    lime = Lime(torch.nn.Linear(4, 2), similarity_func=custom)
    assert sample_weights(lime, torch.zeros(1, 4), _coalitions(4), {}) is None


@pytest.mark.parametrize("method", ["captum.lime", "captum.kernel_shap"])
def test_the_default_kernels_are_not_called_per_sample(method, monkeypatch) -> None:
    """The surrogate path hands the coalition engine no per-sample callback for
    Captum's default kernels, and the map is a real one."""
    callbacks: list[object] = []
    engine = primary.coalition_scores

    def spy(*args, **kwargs):
        callbacks.append(kwargs.get("built"))
        return engine(*args, **kwargs)

    monkeypatch.setattr(primary, "coalition_scores", spy)
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=1, size=12)
    extra = {"alpha": 1e-6} if method == "captum.lime" else {}  # tiny scores: small Lasso
    out = explain(model, x, method, 1, grid_cell=4, n_samples=24, seed=0, progress=False, **extra)
    assert callbacks == [None]
    assert out.attributions.abs().amax() > 0

"""AOPC, deletion and insertion: hand-computed curves, batching, 3D, Quantus agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from esegeta_core import InvalidInputError, InvalidParamsError, ScoreModel
from esegeta_core.evaluation import aopc, deletion, insertion
from esegeta_core.targets import MultiClassScores
from esegeta_core.testing import tiny_input, tiny_model


class Weighted(nn.Module):
    """Raw score = sum(x * w) (one class): perturbing a pixel removes exactly its term."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1, keepdim=True)


def quadrant_case():
    # 4 x 4, cells of 2 x 2 weighted 3, 2, 1, 0 (row-major); input all ones
    w = torch.zeros(1, 1, 4, 4)
    w[..., :2, :2], w[..., :2, 2:], w[..., 2:, :2] = 3, 2, 1
    return Weighted(w), torch.ones(1, 1, 4, 4), w.clone()


def test_aopc_hand_computed():
    model, x, w = quadrant_case()
    out = aopc(model, x, 0, w, grid=2, perturbation="zero", score="raw")
    # f(x_k) = 24, 12, 4, 0, 0; drops 0, 12, 20, 24, 24
    assert torch.allclose(out.curve, torch.tensor([[24.0, 12, 4, 0, 0]]))
    assert torch.allclose(out.fractions, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    assert out.aopc.item() == pytest.approx(16.0)
    capped = aopc(model, x, 0, w, grid=2, perturbation="zero", score="raw", steps=2)
    assert torch.allclose(capped.curve, torch.tensor([[24.0, 4, 0]]))
    assert capped.aopc.item() == pytest.approx((0 + 20 + 24) / 3)
    # the reversed map perturbs the least relevant cells first: a small AOPC
    worst = aopc(model, x, 0, -w, grid=2, perturbation="zero", score="raw")
    assert worst.aopc.item() < out.aopc.item()
    # ranking by |relevance| undoes the sign flip
    flipped = aopc(model, x, 0, -w, grid=2, perturbation="zero", score="raw", absolute=True)
    assert flipped.aopc.item() == pytest.approx(16.0)


def test_deletion_and_insertion_hand_computed():
    model, x, w = quadrant_case()
    d = deletion(model, x, 0, w, grid=2, steps=None, score="raw")
    assert torch.allclose(d.curve, torch.tensor([[24.0, 12, 4, 0, 0]]))
    # trapezoid over 0, .25, .5, .75, 1
    assert d.auc.item() == pytest.approx(0.25 * (18 + 8 + 2 + 0))
    i = insertion(model, x, 0, w, grid=2, steps=None, score="raw", baseline="zero")
    assert torch.allclose(i.curve, torch.tensor([[0.0, 12, 20, 24, 24]]))
    assert i.auc.item() == pytest.approx(0.25 * (6 + 16 + 22 + 24))
    # pixel order: 16 pixels in 8 steps of 2 (ties broken by position, row-major)
    p = deletion(model, x, 0, w, steps=8, score="raw")
    assert torch.allclose(p.curve, torch.tensor([[24.0, 18, 12, 8, 4, 2, 0, 0, 0]]))


def test_fill_values():
    model, x, w = quadrant_case()
    x = x * 2
    for fill, value in [("mean", 2.0), (0.5, 0.5), (torch.tensor(1.5), 1.5)]:
        out = aopc(model, x, 0, w, grid=2, perturbation=fill, score="raw", steps=1)
        assert out.curve[0, -1].item() == pytest.approx(value * 24), fill
    # blur of a constant image is the same image; noise is seeded and within range
    blur = deletion(model, x, 0, w, perturbation="blur", score="raw", steps=1)
    assert blur.curve[0, -1].item() == pytest.approx(48.0, rel=1e-5)
    rng_x = torch.rand(2, 1, 4, 4)
    m2 = Weighted(torch.ones(1, 1, 4, 4))
    n1 = deletion(m2, rng_x, 0, w.expand(2, -1, -1, -1), perturbation="noise", score="raw")
    n2 = deletion(m2, rng_x, 0, w.expand(2, -1, -1, -1), perturbation="noise", score="raw")
    n3 = deletion(m2, rng_x, 0, w.expand(2, -1, -1, -1), perturbation="noise", score="raw", seed=9)
    assert torch.equal(n1.curve, n2.curve) and not torch.equal(n1.curve, n3.curve)
    lo, hi = rng_x.flatten(1).min(1).values * 16, rng_x.flatten(1).max(1).values * 16
    assert bool((n1.curve[:, -1] >= lo).all() and (n1.curve[:, -1] <= hi).all())


@pytest.mark.parametrize("rank", [2, 3])
def test_batched_equals_item_by_item_and_chunking(rank):
    model = ScoreModel(tiny_model("segmentation", rank), MultiClassScores())
    x = tiny_input("segmentation", rank, batch=3)
    t = torch.tensor([0, 1, 2])
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    kw = {"grid": 4, "score": "raw", "perturbation": "mean"}
    full = aopc(model, x, t, a, batch_size=7, **kw)
    big = aopc(model, x, t, a, batch_size=1000, **kw)
    assert torch.allclose(full.curve, big.curve, rtol=1e-5, atol=1e-4)
    units = 4**rank if rank == 2 else 2**3
    assert full.curve.shape == (3, units + 1)
    for i in range(3):
        one = aopc(model, x[i : i + 1], t[i : i + 1], a[i : i + 1], **kw)
        assert torch.allclose(one.curve[0], full.curve[i], rtol=1e-5, atol=1e-4)
    d = deletion(model, x, t, a, steps=10, batch_size=5)
    assert d.curve.shape == (3, 11) and d.auc.shape == (3,)
    assert not torch.is_inference(d.curve)  # results are ordinary tensors
    d.curve[0, 0] = 0.0
    assert bool(((d.curve >= 0) & (d.curve <= 1)).all())  # softmax probabilities


def test_per_dimension_grid_and_partial_cells():
    # 3 x 5 map, cells of 2 x 3: cells (2 rows x 2 cols), border cells smaller
    w = torch.tensor([[[[1.0, 1, 1, 5, 5], [1, 1, 1, 5, 5], [0, 0, 0, 2, 2]]]])
    model = Weighted(w)
    out = deletion(model, torch.ones_like(w), 0, w, grid=(2, 3), steps=None, score="raw")
    # cell means: top-left 1, top-right 5, bottom-left 0, bottom-right 2
    assert torch.allclose(out.curve, torch.tensor([[30.0, 10, 6, 0, 0]]))


def test_classification_channels_are_summed():
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2)
    a = torch.rand_like(x)
    summed = deletion(model, x, 1, a.sum(1, keepdim=True), steps=5)
    channels = deletion(model, x, 1, a, steps=5)
    assert torch.equal(summed.curve, channels.curve)


def test_deletion_matches_quantus_pixel_flipping():
    quantus = pytest.importorskip("quantus")
    model = ScoreModel(tiny_model("segmentation", 2), MultiClassScores()).eval()
    x = tiny_input("segmentation", 2, batch=2, size=8)
    with torch.no_grad():
        t = model(x).argmax(1)
    a = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))  # no ties
    metric = quantus.PixelFlipping(features_in_step=8, disable_warnings=True)
    expected = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=t.numpy(),
        a_batch=a.numpy(),
        device="cpu",
        softmax=True,
    )
    black = x.flatten(1).min(1).values.view(-1, 1, 1, 1)  # Quantus's "black"
    ours = deletion(model, x, t, a, steps=8, perturbation=black)
    assert torch.allclose(ours.curve[:, 1:], torch.tensor(expected).float(), atol=1e-5)


def test_aopc_matches_quantus_region_perturbation():
    quantus = pytest.importorskip("quantus")
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=8)
    with torch.no_grad():
        t = model(x).argmax(1)
    a = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    metric = quantus.RegionPerturbation(
        patch_size=2, regions_evaluation=16, perturb_baseline="black", disable_warnings=True
    )
    expected = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=t.numpy(),
        a_batch=a.expand_as(x).numpy(),
        device="cpu",
        softmax=True,
    )
    black = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    ours = aopc(model, x, t, a, grid=2, perturbation=black)
    drops = ours.curve[:, :1] - ours.curve[:, 1:]  # Quantus leaves out k = 0
    assert torch.allclose(drops, torch.tensor(np.array(expected)).float(), atol=1e-6)
    assert torch.allclose(ours.aopc, drops.sum(1) / 17)


def test_curve_errors():
    model, x, w = quadrant_case()
    with pytest.raises(InvalidParamsError, match="grid"):
        aopc(model, x, 0, w, grid=(2, 2, 2))
    with pytest.raises(InvalidParamsError, match="grid"):
        aopc(model, x, 0, w, grid=0)
    with pytest.raises(InvalidParamsError, match="perturbation"):
        aopc(model, x, 0, w, perturbation="white")
    with pytest.raises(InvalidParamsError, match="steps"):
        deletion(model, x, 0, w, steps=0)
    with pytest.raises(InvalidParamsError, match="blur_sigma"):
        insertion(model, x, 0, w, blur_sigma=-1)
    with pytest.raises(InvalidInputError, match="deletion.*attributions"):
        deletion(model, x, 0, w[..., :3])
    with pytest.raises(InvalidInputError, match="NaN"):
        deletion(model, x, 0, w * float("nan"))

"""Pointing game, relevance mass / rank accuracy, POMPOM: hand-computed and vs Quantus."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from esegeta_core import InvalidInputError, InvalidParamsError
from esegeta_core.evaluation import (
    pointing_accuracy,
    pointing_game,
    pompom,
    relevance_mass,
    relevance_rank_accuracy,
)


def one_hot_map(shape: tuple[int, ...], point: tuple[int, ...]) -> torch.Tensor:
    a = torch.zeros(1, 1, *shape)
    a[(0, 0, *point)] = 1.0
    return a


def box_mask(shape: tuple[int, ...], box: tuple[slice, ...]) -> torch.Tensor:
    m = torch.zeros(1, 1, *shape, dtype=torch.bool)
    m[(0, 0, *box)] = True
    return m


def test_pointing_game_tolerance_is_torchrays_strict_disk():
    mask = box_mask((40, 40), (slice(0, 10), slice(0, 10)))  # rows/cols 0..9
    # the maximum at row 9 + 15 = 24: distance 15 is not < 15 (miss); at 23: hit
    assert pointing_game(one_hot_map((40, 40), (24, 5)), mask).hit.item() == 0.0
    assert pointing_game(one_hot_map((40, 40), (23, 5)), mask).hit.item() == 1.0
    # diagonal: (9, 9) to (19, 19) is sqrt(200) = 14.1 < 15
    assert pointing_game(one_hot_map((40, 40), (19, 19)), mask).hit.item() == 1.0
    assert pointing_game(one_hot_map((40, 40), (20, 20)), mask).hit.item() == 0.0
    # tolerance 1: only the mask itself; tolerance 0 never hits (strict inequality)
    assert pointing_game(one_hot_map((40, 40), (9, 9)), mask, tolerance=1).hit.item() == 1.0
    assert pointing_game(one_hot_map((40, 40), (10, 9)), mask, tolerance=1).hit.item() == 0.0
    assert pointing_game(one_hot_map((40, 40), (9, 9)), mask, tolerance=0).hit.item() == 0.0
    out = pointing_game(one_hot_map((40, 40), (23, 5)), mask)
    assert out.point.tolist() == [[23, 5]]


def test_pointing_game_matches_torchray_on_random_cases():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 1, 30, 30, generator=gen)
    masks = torch.zeros(6, 30, 30, dtype=torch.bool)
    for i in range(6):
        r, c = torch.randint(0, 25, (2,), generator=gen).tolist()
        masks[i, r : r + 5, c : c + 5] = True
    ours = pointing_game(maps, masks, tolerance=7).hit
    for i in range(6):  # TorchRay's PointingGame.evaluate, written out per item
        row, col = divmod(int(maps[i].argmax()), 30)
        v = (torch.arange(30.0)[:, None] - row) ** 2
        u = (torch.arange(30.0)[None, :] - col) ** 2
        assert ours[i].item() == float(bool((masks[i] & ((v + u) < 49)).any()))


def test_pointing_game_3d_spacing_batch_and_empty_mask(caplog):
    shape = (6, 8, 8)
    maps = torch.cat([one_hot_map(shape, (0, 4, 4)), one_hot_map(shape, (5, 4, 4))])
    mask = torch.zeros(2, 1, *shape, dtype=torch.bool)
    mask[:, :, 2, 4, 4] = True
    out = pointing_game(maps, mask, tolerance=3)
    assert out.hit.tolist() == [1.0, 0.0]  # depth distances 2 and 3
    assert out.point.tolist() == [[0, 4, 4], [5, 4, 4]]
    # voxels 2 mm deep: the same distances are 4 and 6 mm
    assert pointing_game(maps, mask, tolerance=3, spacing=(2, 1, 1)).hit.tolist() == [0.0, 0.0]
    mask[1] = False
    with caplog.at_level("WARNING"):
        out = pointing_game(maps, mask, tolerance=3)
    assert out.hit[0].item() == 1.0 and math.isnan(out.hit[1].item())
    assert "empty mask" in caplog.text


def test_pointing_accuracy_is_averaged_per_class():
    hit = torch.tensor([1.0, 0.0, 1.0, 1.0, float("nan")])
    classes = torch.tensor([0, 0, 0, 2, 2])
    acc = pointing_accuracy(hit, classes)
    assert acc.counts.tolist() == [3, 0, 1]
    assert acc.per_class[0].item() == pytest.approx(2 / 3)
    assert math.isnan(acc.per_class[1].item()) and acc.per_class[2].item() == 1.0
    assert acc.accuracy.item() == pytest.approx((2 / 3 + 1) / 2)
    assert pointing_accuracy(hit, classes, num_classes=5).per_class.shape == (5,)
    with pytest.raises(InvalidParamsError, match="num_classes"):
        pointing_accuracy(hit, classes, num_classes=2)


def test_relevance_mass_and_rank_hand_computed():
    a = torch.tensor([[[[4.0, 1.0], [-3.0, 0.0]]]])
    mask = torch.tensor([[[[1, 0], [1, 0]]]])
    # positive relevance: 4 inside, 1 outside (negative ignored)
    assert relevance_mass(a, mask).item() == pytest.approx(0.8)
    # K = 2: the top two are 4 (inside) and 1 (outside)
    assert relevance_rank_accuracy(a, mask).item() == pytest.approx(0.5)
    assert math.isnan(relevance_mass(-a.abs(), mask).item())  # no positive relevance


def test_channels_are_summed_and_masks_may_lack_the_channel_dim():
    a = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(2)) > 0.5
    assert torch.equal(relevance_mass(a, mask), relevance_mass(a.sum(1, keepdim=True), mask))
    assert torch.equal(
        relevance_rank_accuracy(a, mask.float()[:, None]),
        relevance_rank_accuracy(a.sum(1, keepdim=True), mask),
    )


@pytest.mark.parametrize("rank", [2, 3])
def test_localisation_matches_quantus(rank):
    quantus = pytest.importorskip("quantus")
    gen = torch.Generator().manual_seed(rank)
    shape = (4, 1) + (7,) * rank
    a = torch.rand(shape, generator=gen)  # no ties
    s = torch.rand(shape, generator=gen) > 0.6
    x = torch.rand(shape, generator=gen)
    metrics = {
        "pg": quantus.PointingGame(disable_warnings=True),
        "rma": quantus.RelevanceMassAccuracy(disable_warnings=True),
        "rra": quantus.RelevanceRankAccuracy(disable_warnings=True),
    }
    if rank == 2:
        kw = {
            "model": None,
            "x_batch": x.numpy(),
            "y_batch": torch.zeros(4, dtype=torch.long).numpy(),
            "a_batch": a.numpy(),
            "s_batch": s.float().numpy(),
        }
        expected = {k: m(**kw) for k, m in metrics.items()}
    else:  # Quantus's input checks stop at 2D; its batch formulas are N-D
        kw = {"a_batch": a.numpy(), "s_batch": s.float().numpy()}
        expected = {k: m.evaluate_batch(**kw) for k, m in metrics.items()}
    assert pointing_game(a, s, tolerance=1).hit.tolist() == [float(h) for h in expected["pg"]]
    rma = torch.tensor(list(expected["rma"])).float()
    assert torch.allclose(relevance_mass(a, s), rma, atol=1e-6)
    rra = torch.tensor(list(expected["rra"])).float()
    assert torch.allclose(relevance_rank_accuracy(a, s), rra, atol=1e-6)


def test_pompom_hand_computed():
    # outside the mask: 3 pixels, two of them meaningful (> 1e-6)
    a = torch.tensor([[[[0.5, 0.0], [0.2, 0.9]]]])
    mask = torch.tensor([[[[False, False], [False, True]]]])
    assert pompom(a, mask).item() == pytest.approx(2 / 3)
    # relative threshold: 0.5 * max = 0.45; outside only 0.5 exceeds it
    assert pompom(a, mask, eps=0.5, relative=True).item() == pytest.approx(1 / 3)
    assert pompom(a, torch.ones_like(mask)).item() == 0.0  # nothing outside
    assert pompom(a, torch.zeros_like(mask)).item() == pytest.approx(3 / 4)  # all outside
    vol = torch.zeros(2, 1, 4, 4, 4)
    vol[1, 0, 0, 0, :2] = 1.0
    vmask = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    vmask[:, 0, 0, 0] = True
    assert torch.allclose(pompom(vol, vmask), torch.tensor([0.0, 1 / 63]))


def test_localisation_errors():
    a = torch.rand(2, 1, 4, 4)
    with pytest.raises(InvalidInputError, match="mask of shape"):
        relevance_mass(a, torch.ones(2, 1, 4, 5))
    with pytest.raises(InvalidInputError, match="0 and 1"):
        pompom(a, torch.full((2, 4, 4), 0.5))
    with pytest.raises(InvalidInputError, match="attributions must be"):
        pointing_game(a[0], torch.ones(2, 4, 4))
    with pytest.raises(InvalidInputError, match="NaN"):
        relevance_rank_accuracy(a * float("nan"), torch.ones(2, 4, 4))
    with pytest.raises(InvalidParamsError, match="spacing"):
        pointing_game(a, torch.ones(2, 4, 4), spacing=(1, 1, 1))
    with pytest.raises(InvalidParamsError, match="tolerance"):
        pointing_game(a, torch.ones(2, 4, 4), tolerance=-1)


def test_pointing_game_warns_once_about_a_lenient_tolerance(caplog):
    from esegeta_core.evaluation import localisation

    localisation._WARNED.clear()
    maps, masks = torch.rand(2, 1, 64, 64), torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    masks[:, :, 10:20, 10:20] = True
    with caplog.at_level(logging.WARNING, logger="esegeta_core.evaluation.localisation"):
        pointing_game(maps, masks, tolerance=4)
        assert not caplog.records
        pointing_game(maps, masks, tolerance=15)
        pointing_game(maps, masks, tolerance=15)
    assert len(caplog.records) == 1
    assert "tolerance=4.3" in caplog.records[0].getMessage()

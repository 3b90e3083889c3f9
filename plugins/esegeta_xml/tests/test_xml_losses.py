"""The xML losses against values computed by hand (2D and 3D) and the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch
from esegeta_xml.losses import (
    EPS,
    hybrid_loss,
    joint_loss,
    sparsity_loss,
    total_variation_loss,
    unsupervised_loss,
    weak_mask_loss,
)

from esegeta_core.errors import InvalidInputError, InvalidParamsError

# z = [[0, 1], [1, 1]]: mean |z| = 3/4; row differences [1, 0] and column differences
# [1, 0] have mean 1/2 each, so TV = 1
Z2 = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
# weak mask: the object is the bottom-right pixel; outside it z sums to 2 over 3 pixels
M2 = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])


def test_sparsity_and_total_variation_by_hand():
    assert sparsity_loss(Z2).item() == pytest.approx(0.75)
    assert total_variation_loss(Z2).item() == pytest.approx(1.0)


def test_unsupervised_and_hybrid_by_hand():
    assert unsupervised_loss(Z2, beta=0.9).item() == pytest.approx(0.9 * 0.75 + 0.1 * 1.0)
    assert weak_mask_loss(Z2, M2).item() == pytest.approx(2 / (3 + EPS))
    expected = 0.9 * 0.75 + 0.1 * 1.0 + 2.0 * 2 / 3
    assert hybrid_loss(Z2, M2, beta=0.9, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)
    # masks without the channel dimension work too
    assert weak_mask_loss(Z2, M2[:, 0]).item() == pytest.approx(2 / 3, rel=1e-5)


def test_total_variation_3d_sums_the_three_axes():
    z = torch.zeros(1, 1, 2, 2, 3)
    z[0, 0, 1] = 1.0  # depth: every one of the 6 pairs differs by 1 -> 1
    z[0, 0, :, :, 2] += 0.5  # width: pairs (1, 2) differ by 0.5 -> (0 + 0.5) / 2 per row
    # height: no change -> 0
    assert total_variation_loss(z).item() == pytest.approx(1.0 + 0.25)
    assert sparsity_loss(z).item() == pytest.approx(z.mean().item())


def test_batch_reduction_matches_the_original_per_item_loop():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(3, 1, 5, 7, generator=g)
    m = (torch.rand(3, 1, 5, 7, generator=g) > 0.5).float()

    def original(pred, target, beta, gamma):  # icrto/xML PyTorch/losses.py, on (H, W)
        l1 = torch.mean(torch.abs(pred))
        tv = torch.mean(torch.abs(pred[:-1] - pred[1:])) + torch.mean(
            torch.abs(pred[:, :-1] - pred[:, 1:])
        )
        weakly = torch.abs(torch.sum((1 - target) * pred) / (torch.sum(1 - target) + EPS))
        return beta * l1 + (1 - beta) * tv + gamma * weakly

    per_item = [original(z[i, 0], m[i, 0], 0.8, 0.5) for i in range(3)]
    ours = hybrid_loss(z, m, beta=0.8, gamma=0.5, reduction="none")
    assert torch.allclose(ours, torch.stack(per_item), atol=1e-6)
    assert hybrid_loss(z, m, beta=0.8, gamma=0.5).item() == pytest.approx(
        sum(per_item).item() / 3, rel=1e-6
    )
    assert hybrid_loss(z, m, beta=0.8, gamma=0.5, reduction="sum").item() == pytest.approx(
        sum(per_item).item(), rel=1e-6
    )


def test_joint_loss_weighs_cross_entropy_and_explanation_with_alpha():
    logits = torch.zeros(1, 2)  # cross-entropy = ln 2 whatever the label
    labels = torch.tensor([0])
    terms = joint_loss(logits, labels, Z2, alpha=0.25, beta=0.9)
    expl = 0.9 * 0.75 + 0.1 * 1.0
    assert terms.classification.item() == pytest.approx(math.log(2))
    assert terms.explanation.item() == pytest.approx(expl)
    assert terms.total.item() == pytest.approx(0.25 * math.log(2) + 0.75 * expl)
    assert terms.weak_mask is None
    hybrid = joint_loss(logits, labels, Z2, alpha=0.5, beta=0.9, kind="hybrid", gamma=1, mask=M2)
    assert hybrid.weak_mask.item() == pytest.approx(2 / 3, rel=1e-5)
    assert hybrid.total.item() == pytest.approx(0.5 * math.log(2) + 0.5 * (expl + 2 / 3), rel=1e-5)
    assert set(hybrid.as_floats()) == {
        "loss",
        "classification",
        "explanation",
        "sparsity",
        "total_variation",
        "weak_mask",
    }


def test_losses_are_differentiable():
    z = Z2.clone().requires_grad_(True)
    hybrid_loss(z, M2, beta=0.5, gamma=1.0).backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InvalidInputError, match=r"\(B, 1, \*spatial\)"):
        sparsity_loss(torch.rand(1, 3, 4, 4))
    with pytest.raises(InvalidInputError, match="shaped like the explanations"):
        weak_mask_loss(Z2, torch.ones(1, 1, 3, 3))
    with pytest.raises(InvalidParamsError, match="beta"):
        unsupervised_loss(Z2, beta=1.5)
    with pytest.raises(InvalidParamsError, match="alpha"):
        joint_loss(torch.zeros(1, 2), torch.tensor([0]), Z2, alpha=-0.1, beta=0.5)
    with pytest.raises(InvalidInputError, match="weak masks"):
        joint_loss(torch.zeros(1, 2), torch.tensor([0]), Z2, alpha=0.5, beta=0.5, kind="hybrid")

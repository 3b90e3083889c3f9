"""The arithmetic on hand-made matrices."""

from __future__ import annotations

import pytest
import torch
from esegeta_attention.rollout import (
    discard_lowest,
    fuse_heads,
    gae_cam,
    gae_rows,
    query_rows,
    rolled_rows,
    rollout_matrix,
    row_map,
    uses_class_token,
)

from esegeta_core import InvalidParamsError
from esegeta_core.layouts import Layout


def _attn(b: int = 2, h: int = 3, n: int = 5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, h, n, n, generator=gen) * 2, dim=-1)


def test_head_fusions() -> None:
    a = _attn()
    assert torch.equal(fuse_heads(a, "mean"), a.mean(1))
    assert torch.equal(fuse_heads(a, "max"), a.max(1).values)
    assert torch.equal(fuse_heads(a, "min"), a.min(1).values)


def test_discard_drops_exactly_the_lowest_and_keeps_the_class_token() -> None:
    fused = torch.tensor([[[0.0, 0.5, 0.5], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]])
    out = discard_lowest(fused, 4 / 9, keep=0)  # 4 lowest of the 8 others: 0.1, 0.2, 0.3, 0.3
    assert out[0, 0, 0] == 0.0  # kept (it was 0 already) and not counted
    assert torch.equal(out, torch.tensor([[[0.0, 0.5, 0.5], [0.0, 0.0, 0.7], [0.0, 0.0, 0.4]]]))
    kept = torch.tensor([[[0.01, 0.5], [0.4, 0.6]]])
    assert discard_lowest(kept, 0.5, keep=0)[0, 0, 0] == 0.01
    assert discard_lowest(kept, 0.5, keep=None)[0, 0, 0] == 0.0
    assert discard_lowest(kept, 0.0, keep=0) is kept
    noisy = fuse_heads(_attn(b=3, n=7), "max")
    for ratio in (0.1, 0.5, 0.6, 0.95):  # both ways of selecting: the same entries
        for keep in (0, None):
            out = discard_lowest(noisy, ratio, keep)
            count = min(int(ratio * 49), 48 if keep is not None else 49)
            for b in range(3):
                order = [i for i in torch.argsort(noisy[b].flatten()).tolist() if i != keep]
                expected = noisy[b].flatten().clone()
                expected[order[:count]] = 0
                assert torch.equal(out[b].flatten(), expected), (ratio, keep)
    assert torch.equal(fused, torch.tensor([[[0.0, 0.5, 0.5], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]]))


def test_rollout_factor_is_half_attention_half_identity() -> None:
    fused = fuse_heads(_attn(), "mean")
    a = rollout_matrix(fused)
    assert torch.allclose(a, 0.5 * fused + 0.5 * torch.eye(5), atol=1e-6)
    assert torch.allclose(a.sum(-1), torch.ones(2, 5))


def test_gae_rows_are_rows_of_chefers_relevance() -> None:
    gen = torch.Generator().manual_seed(2)
    attns = [_attn(seed=s) for s in range(3)]
    grads = [torch.randn(2, 3, 5, 5, generator=gen) for _ in range(3)]
    cams = [gae_cam(a, g) for a, g in zip(attns, grads)]
    assert torch.allclose(cams[0], (grads[0] * attns[0]).clamp(min=0).mean(1))
    r = torch.eye(5).expand(2, 5, 5)
    for cam in cams:  # R <- R + cam @ R, first block first
        r = r + cam @ r
    cls = Layout("tokens", (2, 2), 1)
    got = gae_rows(query_rows(cls, True, r), cams)
    assert torch.allclose(got[:, 0], r[:, 0], atol=1e-6)
    got = gae_rows(query_rows(cls, False, r), cams)
    assert torch.allclose(got[:, 0], r[:, 1:].mean(1), atol=1e-6)


def test_rolled_rows_are_rows_of_the_product() -> None:
    factors = [rollout_matrix(fuse_heads(_attn(seed=s), "mean")) for s in range(4)]
    product = torch.eye(5).expand(2, 5, 5)
    for a in factors:  # first block first: R <- A @ R
        product = a @ product
    layout = Layout("tokens", (2, 2), 1)
    rows = rolled_rows(query_rows(layout, True, product), factors)
    assert torch.allclose(rows[:, 0], product[:, 0], atol=1e-6)
    assert torch.allclose(row_map(rows, layout), product[:, 0, 1:].reshape(2, 1, 2, 2), atol=1e-6)
    rows = rolled_rows(query_rows(layout, False, product), factors)
    assert torch.allclose(rows[:, 0], product[:, 1:].mean(1), atol=1e-6)
    assert torch.allclose(rows.sum(-1), torch.ones(2, 1))  # products of stochastic matrices


def test_maps_and_queries() -> None:
    cls = Layout("tokens", (2, 2), 1)
    v = query_rows(cls, True, torch.zeros(3, 5, 5))
    assert v.shape == (3, 1, 5) and torch.equal(v[0, 0], torch.tensor([1.0, 0, 0, 0, 0]))
    v = query_rows(Layout("tokens", (2, 2, 2), 0), False, torch.zeros(1, 8, 8))
    assert torch.allclose(v, torch.full((1, 1, 8), 1 / 8))
    assert row_map(torch.rand(1, 1, 8), Layout("tokens", (2, 2, 2), 0)).shape == (1, 1, 2, 2, 2)
    assert uses_class_token(cls, "auto", "m") and not uses_class_token(cls, "mean", "m")
    assert not uses_class_token(Layout("tokens", (2, 2), 0), "auto", "m")
    with pytest.raises(InvalidParamsError, match="no class token"):
        uses_class_token(Layout("tokens", (2, 2), 0), "class", "m")

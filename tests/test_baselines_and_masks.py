"""Named baselines and feature masks, 2D and 3D."""

from __future__ import annotations

import pytest
import torch

import esegeta_core as ec
from esegeta_core.baselines import gaussian_blur, make_baseline
from esegeta_core.feature_masks import check_mask, grid_mask


@pytest.mark.parametrize("shape", [(2, 3, 12, 10), (1, 2, 6, 8, 7)])
def test_named_baselines_have_the_input_shape(shape):
    x = torch.rand(shape)
    for name in ("zeros", "mean", "blurred", "uniform", "gaussian"):
        b = make_baseline(name, x, generator=torch.Generator().manual_seed(0))
        assert b.shape == x.shape and b.dtype == x.dtype
    assert torch.equal(make_baseline("zeros", x), torch.zeros_like(x))
    assert torch.allclose(make_baseline("mean", x).flatten(2)[..., 0], x.flatten(2).mean(-1))
    assert torch.equal(make_baseline(0.5, x), torch.full_like(x, 0.5))
    u = make_baseline("uniform", x)
    assert u.min() >= x.min() and u.max() <= x.max()


def test_blur_preserves_constants_and_smooths():
    x = torch.full((1, 1, 9, 9, 9), 2.0)
    assert torch.allclose(gaussian_blur(x, 1.5), x, atol=1e-5)
    spike = torch.zeros(1, 1, 15, 15)
    spike[0, 0, 7, 7] = 1
    blurred = gaussian_blur(spike, 1.0)
    assert abs(float(blurred.sum()) - 1.0) < 1e-4
    assert blurred[0, 0, 7, 7] < 0.2 and blurred[0, 0, 7, 8] > 0


def test_bad_baseline_tensor_and_name():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ec.InvalidParamsError, match="broadcast"):
        make_baseline(torch.zeros(5, 5), x, method="m")
    with pytest.raises(ec.InvalidParamsError, match="unknown baseline"):
        make_baseline("black", x)


def test_grid_mask_2d_and_3d():
    m = grid_mask(torch.rand(2, 3, 4, 6), (2, 3))
    assert m.shape == (2, 1, 4, 6)
    assert m[0, 0].tolist() == [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2
    m3 = grid_mask(torch.rand(1, 1, 4, 4, 4), 2)
    assert m3.unique().numel() == 8
    assert (m3 == 7).sum() == 8
    with pytest.raises(ec.InvalidParamsError, match="3 positive ints"):
        grid_mask(torch.rand(1, 1, 4, 4, 4), (2, 2))


def test_user_mask_is_checked_and_renumbered():
    x = torch.rand(2, 3, 4, 4)
    mask = torch.tensor([[5, 5, 9, 9]] * 4)
    out = check_mask(mask, x)
    assert out.shape == (2, 1, 4, 4) and set(out.unique().tolist()) == {0, 1}
    with pytest.raises(ec.InvalidParamsError, match="does not fit"):
        check_mask(torch.zeros(3, 3), x)

"""The plugin authors' toolkit: interpolation modes per rank and target gathering."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from esegeta_core.toolkit import gather_target, interpolation_mode


@pytest.mark.parametrize(("rank", "mode"), [(1, "linear"), (2, "bilinear"), (3, "trilinear")])
def test_interpolation_mode_resizes_every_rank(rank, mode):
    assert interpolation_mode(rank) == mode
    x = torch.rand(1, 1, *([4] * rank))
    out = F.interpolate(x, size=(8,) * rank, mode=interpolation_mode(rank), align_corners=False)
    assert tuple(out.shape[2:]) == (8,) * rank


def test_interpolation_mode_refuses_other_ranks():
    with pytest.raises(ValueError, match="1 to 3 spatial dimensions, not 4"):
        interpolation_mode(4)


def test_gather_target_picks_each_items_class():
    scores = torch.arange(12.0).view(3, 4)
    target = torch.tensor([3, 0, 2])
    assert gather_target(scores, target).tolist() == [3.0, 4.0, 10.0]
    assert gather_target(scores, target.view(3, 1)).shape == (3,)

"""RISE's masked inputs made per pass in one reused buffer: the map does not depend on
the pass size (fixed, planned, cached plans, channels-last), equals the fixed
computation (a block of masks at once, one item per pass), and the model never sees
more inputs per pass than the plan allows."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
from esegeta_cnnvis.rise import draw_grids, rise_masks
from torch import nn

import esegeta_core as ec
from esegeta_core.runtime import passes
from esegeta_core.testing import tiny_input, tiny_model


@pytest.fixture(autouse=True)
def fresh_plans() -> Iterator[None]:
    passes.clear_plans()
    yield
    passes.clear_plans()


class Recorder(nn.Module):
    """The model, recording each pass's size and where its inputs live."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[int] = []
        self.pointers: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        self.pointers.append(x.data_ptr())
        return self.model(x)


def resnet18() -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=5).eval()


def reference(
    model: nn.Module,
    x: torch.Tensor,
    target: list[int],
    *,
    num_masks: int,
    block: int,
    cells: int,
    seed: int,
    p: float = 0.5,
) -> torch.Tensor:
    """RISE as it was computed before the pass buffer: each block of masks made at
    once, every item's masked copies in one pass, the softmax of the target; the
    centred sum (the default) from all the scores at the end."""
    spatial = tuple(x.shape[2:])
    gen = torch.Generator().manual_seed(seed)
    scores, flats = [], []
    with torch.no_grad():
        for start in range(0, num_masks, block):
            count = min(block, num_masks - start)
            masks = rise_masks(count, (cells,) * len(spatial), spatial, p, generator=gen)
            flats.append(masks.reshape(count, -1))
            scores.append(
                torch.stack(
                    [
                        model(x[i : i + 1] * masks).float().softmax(1)[:, t]
                        for i, t in enumerate(target)
                    ]
                )
            )
    s, flat = torch.cat(scores, 1), torch.cat(flats)
    mean = s.mean(1, keepdim=True)
    saliency = (s - mean) @ flat / (num_masks * p) + mean
    return saliency.view(x.shape[0], 1, *spatial).expand(x.shape)


CASES = [
    ("tiny2d", lambda: tiny_model("classification", 2), (3, 3, 16, 16), [0, 2, 1], 3),
    ("tiny3d", lambda: tiny_model("classification", 3), (3, 3, 8, 8, 8), [1, 0, 2], 3),
    ("resnet18", resnet18, (2, 3, 32, 32), [4, 1], 4),
]


def _input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "build", "shape", "target", "cells"), CASES)
def test_rise_map_does_not_depend_on_the_pass_size(name, build, shape, target, cells) -> None:
    model, x = build(), _input(shape)
    args = {"num_masks": 40, "mask_seed": 3, "cells": cells, "progress": False}
    # one block of 40 masks: the masks are the same whatever the passes
    fixed = ec.explain(model, x, "cnnvis.rise", target, batch_size=512, **args).attributions
    expected = reference(model, x, target, num_masks=40, block=512, cells=cells, seed=3)
    torch.testing.assert_close(fixed, expected, rtol=1e-5, atol=1e-6)
    for cap in (1, 7, 512):
        passes.clear_plans()  # a plan found under a smaller cap would be reused
        with passes.planning(model, cap):
            planned = ec.explain(model, x, "cnnvis.rise", target, batch_size=512, **args)
        torch.testing.assert_close(planned.attributions, fixed, rtol=1e-5, atol=1e-6)
    auto = ec.explain(model, x, "cnnvis.rise", target, auto_batch=True, **args)
    assert auto.params.batch_size >= 40  # the same single block
    assert auto.extras["pass_plan"]["inputs_per_pass"] >= 1
    torch.testing.assert_close(auto.attributions, fixed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rank", [2, 3])
def test_rise_blocks_of_masks_equal_the_fixed_computation(rank: int) -> None:
    """Several blocks (60 masks, 7 per block): each block's masks drawn as before (the
    sum weighs them from their grids: the same products, added in another order)."""
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=3)
    target = [2, 0, 1]
    got = ec.explain(
        model, x, "cnnvis.rise", target, num_masks=60, mask_seed=5, cells=3, batch_size=7
    ).attributions
    expected = reference(model, x, target, num_masks=60, block=7, cells=3, seed=5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch_size", [1, 7, 512])
def test_rise_given_masks_do_not_depend_on_batch_size(batch_size: int) -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=3)
    masks = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    target = [1, 2, 0]
    one = ec.explain(model, x, "cnnvis.rise", target, masks=masks, batch_size=40)
    got = ec.explain(model, x, "cnnvis.rise", target, masks=masks, batch_size=batch_size)
    auto = ec.explain(model, x, "cnnvis.rise", target, masks=masks, auto_batch=True)
    torch.testing.assert_close(got.attributions, one.attributions, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(auto.attributions, one.attributions, rtol=1e-5, atol=1e-6)


def test_rise_passes_hold_at_most_batch_size_in_one_reused_buffer() -> None:
    model = Recorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=2)
    ec.explain(model, x, "cnnvis.rise", [0, 1], num_masks=17, mask_seed=0, batch_size=7)
    # blocks of 7, 7 and 3 masks; one pass per item and block (after explain's probe
    # pass of one item)
    assert model.sizes[-6:] == [7, 7, 7, 7, 3, 3]
    assert len(set(model.pointers[-6:])) == 1  # every pass built in the same buffer


@pytest.mark.parametrize("cap", [1, 5])
def test_rise_passes_never_exceed_the_plan(cap: int) -> None:
    """A cached plan (also channels-last) is what the model sees, never the block."""
    model = Recorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=3)
    args = {"num_masks": 50, "mask_seed": 1, "cells": 4, "progress": False}
    fixed = ec.explain(model, x, "cnnvis.rise", [0, 1, 2], batch_size=512, **args)
    for channels_last in (False, True):
        key = passes._key("forward", x[:1])
        passes._plans[model] = {key: passes.PassPlan(cap, channels_last)}
        model.sizes.clear()
        auto = ec.explain(model, x, "cnnvis.rise", [0, 1, 2], auto_batch=True, **args)
        plan = auto.extras["pass_plan"]
        assert plan["inputs_per_pass"] == cap and not plan["measured_now"]
        assert max(model.sizes) <= cap  # explain's own probe passes hold one item
        assert sum(model.sizes) >= 3 * 50
        torch.testing.assert_close(auto.attributions, fixed.attributions, rtol=1e-5, atol=1e-6)
    # the planner's search under a cap: no pass above it either
    passes.clear_plans()
    model.sizes.clear()
    with passes.planning(model, cap):
        planned = ec.explain(model, x, "cnnvis.rise", [0, 1, 2], batch_size=512, **args)
    assert max(model.sizes) <= cap
    torch.testing.assert_close(planned.attributions, fixed.attributions, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("spatial", "cells"), [((16, 16), (4, 4)), ((8, 9, 10), (3, 3, 3))])
def test_rise_masks_of_a_range_equal_the_block_s(spatial, cells) -> None:
    gen = torch.Generator().manual_seed(4)
    grids = draw_grids(30, cells, spatial, 0.5, generator=gen)
    whole = rise_masks(30, cells, spatial, 0.5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(grids.masks(0, 30), whole, rtol=0, atol=0)
    for start, stop in ((0, 1), (3, 11), (29, 30)):
        torch.testing.assert_close(
            grids.masks(start, stop), whole[start:stop], rtol=1e-6, atol=1e-7
        )


@pytest.mark.parametrize(
    ("spatial", "cells"),
    [((16, 16), (4, 4)), ((8, 9, 10), (3, 3, 3)), ((3, 16), (6, 3)), ((2, 5, 6), (4, 2, 3))],
)
def test_rise_weighted_sum_from_the_grids_equals_the_masks_weighted(spatial, cells) -> None:
    """The saliency's sum is made from the grids (the first dimension's up-sampling and
    the sum over masks in one product): equal to the masks weighted one by one, in
    pieces that hold no more numbers than the masks where a dimension has fewer voxels
    than padded cells (the last two cases)."""
    grids = draw_grids(30, cells, spatial, 0.5, generator=torch.Generator().manual_seed(6))
    masks = grids.masks(0, 30).reshape(30, -1)
    weights = torch.rand(3, 30, generator=torch.Generator().manual_seed(7))
    pieces = grids.pieces()
    assert pieces[0][0] == 0 and pieces[-1][1] == 30
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    k0, n0 = cells[0] + 2, spatial[0]
    assert len(pieces) == (1 if k0 <= n0 else -(-30 // (30 * n0 // k0)))
    total = sum(grids.weighted_sum(weights[:, a:b], a, b) for a, b in pieces)
    torch.testing.assert_close(total, weights @ masks, rtol=1e-5, atol=1e-6)
    part = grids.weighted_sum(weights[:, 4:9], 4, 9)
    torch.testing.assert_close(part, weights[:, 4:9] @ masks[4:9])

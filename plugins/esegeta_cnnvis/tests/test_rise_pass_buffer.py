"""RISE's masked inputs made per pass in one reused buffer: the map does not depend on
the pass size (fixed, planned, cached plans, channels-last, ``batch_size``,
``auto_batch``), equals the fixed computation (every mask at once, one item per pass),
and the model never sees more inputs per pass than the plan allows."""

from __future__ import annotations

import itertools

import pytest
import torch
from esegeta_cnnvis.rise import draw_grids, rise_masks
from torch import nn

import esegeta_core as ec
from esegeta_core.runtime import passes
from esegeta_core.testing import PassRecorder, tiny_input, tiny_model
from esegeta_core.testing.plans import fresh_plans  # noqa: F401  (autouse)


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
    segmentation: bool = False,
) -> torch.Tensor:
    """RISE as it was computed before the pass buffer: each block of masks made at
    once, every item's masked copies in one pass, the softmax of the target (a
    segmentation model's raw summed class score); the centred sum (the default) from
    all the scores at the end."""
    if segmentation:
        scored = ec.ScoreModel(model, ec.MultiClassScores())
        score = lambda masked, t: scored(masked).float()[:, t]  # noqa: E731
    else:
        score = lambda masked, t: model(masked).float().softmax(1)[:, t]  # noqa: E731
    spatial = tuple(x.shape[2:])
    gen = torch.Generator().manual_seed(seed)
    scores, flats = [], []
    with torch.no_grad():
        for start in range(0, num_masks, block):
            count = min(block, num_masks - start)
            masks = rise_masks(count, (cells,) * len(spatial), spatial, p, generator=gen)
            flats.append(masks.reshape(count, -1))
            scores.append(
                torch.stack([score(x[i : i + 1] * masks, t) for i, t in enumerate(target)])
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
    # the same single block of masks; the params record the plan's passes
    assert auto.params.batch_size == auto.extras["pass_plan"]["inputs_per_pass"] >= 1
    torch.testing.assert_close(auto.attributions, fixed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net", ["DenseNet121", "UNet"])
def test_rise_map_on_monai_3d_models_equals_the_masks_weighted_one_by_one(net: str) -> None:
    """Real 3D architectures, batches of 2: the map from the grids (summed per crop
    start, up-sampled once) equals masks made whole and weighted one by one, for a
    classifier's softmax and a segmentation's raw summed class score."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    segmentation = net == "UNet"
    if segmentation:
        model = nets.UNet(
            spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
        )
    else:
        model = nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=3)
    model.eval()
    side = 16 if segmentation else 32  # DenseNet121 pools 32^3 down to 1
    x, target = _input((2, 1, side, side, side)), [2, 1]
    args = {"num_masks": 24, "mask_seed": 5, "cells": 3, "progress": False}
    task = "segmentation" if segmentation else "classification"
    got = ec.explain(model, x, "cnnvis.rise", target, task=task, batch_size=512, **args)
    want = reference(
        model, x, target, num_masks=24, block=512, cells=3, seed=5, segmentation=segmentation
    )
    assert torch.isfinite(got.attributions).all() and got.attributions.abs().max() > 0
    scale = float(want.abs().max())
    torch.testing.assert_close(got.attributions, want, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_rise_masks_do_not_depend_on_batch_size_or_auto_batch(rank: int, task: str) -> None:
    """Every mask is drawn at once: 60 masks at 1, 7 or 512 per pass, the default and
    ``auto_batch`` give the same map, equal to the masks drawn in one block (the sum
    weighs them from their grids: the same products, added in another order)."""
    model = tiny_model(task, rank)
    x = tiny_input(task, rank, batch=3)
    target = [2, 0, 1] if task == "classification" else [1, 0, 1]
    args = {"num_masks": 60, "mask_seed": 5, "cells": 3, "task": task, "progress": False}
    default = ec.explain(model, x, "cnnvis.rise", target, **args)
    segmentation = task == "segmentation"  # one channel: masks made in the pass buffer
    expected = reference(
        model, x, target, num_masks=60, block=60, cells=3, seed=5, segmentation=segmentation
    )
    torch.testing.assert_close(default.attributions, expected, rtol=1e-5, atol=1e-5)
    for batch_size in (1, 7, 512):
        got = ec.explain(model, x, "cnnvis.rise", target, batch_size=batch_size, **args)
        torch.testing.assert_close(got.attributions, default.attributions, rtol=1e-5, atol=1e-6)
    auto = ec.explain(model, x, "cnnvis.rise", target, auto_batch=True, **args)
    assert auto.params.batch_size == auto.extras["pass_plan"]["inputs_per_pass"]
    torch.testing.assert_close(auto.attributions, default.attributions, rtol=1e-5, atol=1e-6)
    # explain's seed draws the same masks whatever the batch size too
    del args["mask_seed"]
    seeded = [
        ec.explain(model, x, "cnnvis.rise", target, seed=3, batch_size=n, **args).attributions
        for n in (4, 64)
    ]
    torch.testing.assert_close(seeded[0], seeded[1], rtol=1e-5, atol=1e-6)


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
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=2)
    ec.explain(model, x, "cnnvis.rise", [0, 1], num_masks=17, mask_seed=0, batch_size=7)
    # 34 (item, mask) pairs, 7 per pass (the third pass holds both items), after
    # explain's probe pass of one item
    assert model.sizes[-5:] == [7, 7, 7, 7, 6]
    assert len(set(model.pointers[-5:])) == 1  # every pass built in the same buffer


@pytest.mark.parametrize("cap", [1, 5])
def test_rise_passes_never_exceed_the_plan(cap: int) -> None:
    """A cached plan (also channels-last) is what the model sees, never the block."""
    model = PassRecorder(tiny_model("classification", 2))
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
    """The saliency's sum is made from the grids (summed per crop start along the first
    dimension, then up-sampled along it): equal to the masks weighted one by one,
    whatever the pieces of grids it takes at once (each holding at most the numbers
    asked for: one mask's grids up-sampled along all but the first dimension is padded
    cells times the other dimensions' voxels)."""
    grids = draw_grids(30, cells, spatial, 0.5, generator=torch.Generator().manual_seed(6))
    masks = grids.masks(0, 30).reshape(30, -1)
    weights = torch.rand(3, 30, generator=torch.Generator().manual_seed(7)) - 0.5
    per_mask = (cells[0] + 2) * masks.shape[1] // spatial[0]
    for numbers, count in ((1, 30), (per_mask, 30), (4 * per_mask + 1, 8), (10**9, 1)):
        pieces = grids.pieces(numbers)
        assert len(pieces) == count
        assert pieces[0][0] == 0 and pieces[-1][1] == 30
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
        total = grids.weighted_sum(weights, numbers)
        torch.testing.assert_close(total, weights @ masks, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_one_channel_masks_are_made_in_the_pass_buffer(channels, monkeypatch) -> None:
    """A one-channel input's masks are up-sampled into the pass's buffer and multiplied
    there: the model sees the buffer, and the map equals given masks' (made apart)."""
    from esegeta_cnnvis import rise

    model = PassRecorder(nn.Sequential(nn.Conv2d(channels, 4, 3), nn.Flatten(), nn.LazyLinear(3)))
    x = torch.rand(2, channels, 12, 12, generator=torch.Generator().manual_seed(0))
    model(x)  # the lazy layer
    written: list[int] = []
    made = rise.MaskGrids.masks

    def spy(self, start, stop, out=None):
        if out is not None:
            written.append(out.data_ptr())
        return made(self, start, stop, out)

    monkeypatch.setattr(rise.MaskGrids, "masks", spy)
    args = {"batch_size": 8, "progress": False}
    drawn = ec.explain(model, x, "cnnvis.rise", [0, 2], num_masks=20, cells=3, mask_seed=1, **args)
    assert bool(written) == (channels == 1)
    base = model.pointers[-1]  # every pass in the same buffer of 8 inputs
    assert all(base <= w < base + 8 * channels * 12 * 12 * 4 for w in written)
    grids = rise.draw_grids(20, (3, 3), (12, 12), 0.5, generator=torch.Generator().manual_seed(1))
    given = ec.explain(model, x, "cnnvis.rise", [0, 2], masks=grids.masks(0, 20), **args)
    torch.testing.assert_close(drawn.attributions, given.attributions, rtol=1e-5, atol=1e-6)

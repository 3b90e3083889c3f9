"""RISE: equality with TorchRay given the same masks, masks, seeding, batching, 3D."""

from __future__ import annotations

import pytest
import torch
from esegeta_cnnvis.rise import rise_masks

from esegeta_core import InvalidParamsError, MultiClassScores, ScoreModel, explain
from esegeta_core.testing import tiny_input, tiny_model


def test_equals_torchray_given_the_same_masks() -> None:
    rise_mod = pytest.importorskip("torchray.attribution.rise")
    model, x = tiny_model("classification", 2), tiny_input("classification", 2)
    masks = rise_masks(40, (4, 4), (16, 16), 0.5, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 3])
    ours = explain(
        model,
        x,
        "cnnvis.rise",
        target=target,
        masks=masks,
        p=0.5,
        scores="sigmoid",
        batch_size=16,
        centred=False,  # TorchRay's sum, the paper's
    ).attributions
    theirs = rise_mod.rise(model, x, num_masks=40, filter_masks=masks, batch_size=16)
    # TorchRay normalises by N, the paper (and esegeta) by N * p
    expected = theirs[torch.arange(2), target].unsqueeze(1) / 0.5
    torch.testing.assert_close(ours, expected.expand_as(ours), rtol=1e-5, atol=1e-6)


def test_softmax_score_with_full_masks() -> None:
    model, x = tiny_model("classification", 2), tiny_input("classification", 2)
    ones = torch.ones(6, 1, 16, 16)
    kw = {"target": [0, 2], "masks": ones, "p": 0.25}
    got = explain(model, x, "cnnvis.rise", centred=False, **kw).attributions
    with torch.no_grad():
        prob = model(x).softmax(1)[torch.arange(2), torch.tensor([0, 2])]
    torch.testing.assert_close(got, (prob / 0.25).view(2, 1, 1, 1).expand_as(got))
    # centred: every mask scores the mean, so the map is the mean (p does not enter)
    centred = explain(model, x, "cnnvis.rise", **kw).attributions
    torch.testing.assert_close(centred, prob.view(2, 1, 1, 1).expand_as(got))
    raw = explain(model, x, "cnnvis.rise", target=[0, 2], masks=ones, scores="raw", p=1.0)
    with torch.no_grad():
        logit = model(x)[torch.arange(2), torch.tensor([0, 2])]
    torch.testing.assert_close(raw.attributions[:, 0, 0, 0], logit)


@pytest.mark.parametrize("spatial", [(16, 16), (8, 9, 10)])
def test_masks(spatial: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    cells = (3,) * len(spatial)
    masks = rise_masks(500, cells, spatial, 0.3, generator=gen)
    assert tuple(masks.shape) == (500, 1, *spatial)
    assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
    assert abs(float(masks.mean()) - 0.3) < 0.03
    # smooth and shifted: not all masks share the same values at a cell centre
    assert len(torch.unique(masks[:, 0].flatten(1)[:, 0])) > 2
    again = rise_masks(500, cells, spatial, 0.3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(masks, again)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_batch_equals_one_item_at_a_time(task: str, rank: int) -> None:
    model, x = tiny_model(task, rank), tiny_input(task, rank)
    target = torch.tensor([2, 0])
    kw = {"num_masks": 24, "batch_size": 10, "cells": 3, "mask_seed": 5, "task": task}
    batched = explain(model, x, "cnnvis.rise", target=target, **kw).attributions
    assert tuple(batched.shape) == tuple(x.shape)
    for i in range(2):
        single = explain(model, x[i : i + 1], "cnnvis.rise", target=target[i : i + 1], **kw)
        torch.testing.assert_close(batched[i : i + 1], single.attributions)


def test_seeding() -> None:
    model, x = tiny_model("classification", 3), tiny_input("classification", 3)
    kw = {"num_masks": 16, "batch_size": 8, "cells": (2, 3, 4)}
    a = explain(model, x, "cnnvis.rise", seed=0, **kw).attributions
    b = explain(model, x, "cnnvis.rise", seed=0, **kw).attributions
    c = explain(model, x, "cnnvis.rise", seed=1, **kw).attributions
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    d = explain(model, x, "cnnvis.rise", mask_seed=3, **kw).attributions
    e = explain(model, x, "cnnvis.rise", mask_seed=3, seed=9, **kw).attributions
    torch.testing.assert_close(d, e)


def test_invalid_params() -> None:
    model, x = tiny_model("classification", 2), tiny_input("classification", 2)
    with pytest.raises(InvalidParamsError, match="masks must be shaped"):
        explain(model, x, "cnnvis.rise", masks=torch.ones(4, 1, 8, 8))
    with pytest.raises(InvalidParamsError, match="num_masks"):
        explain(model, x, "cnnvis.rise", masks=torch.ones(4, 16, 16), num_masks=4)
    with pytest.raises(InvalidParamsError, match="cells"):
        explain(model, x, "cnnvis.rise", cells=(2, 2, 2), num_masks=2)


@pytest.mark.parametrize("rank", [2, 3])
def test_auto_batch_runs_the_masks_through_the_pass_planner_with_the_same_map(rank):
    from esegeta_core import explain
    from esegeta_core.testing import tiny_input, tiny_model

    model, x = tiny_model("classification", rank), tiny_input("classification", rank, batch=2)
    args = {"num_masks": 300, "mask_seed": 5}
    planned = explain(model, x, "cnnvis.rise", 1, auto_batch=True, **args)
    # the params record the plan's passes, not the count handed to the planner
    assert planned.params.batch_size == planned.extras["pass_plan"]["inputs_per_pass"]
    # the masks drawn do not depend on batch_size: the default's map
    fixed = explain(model, x, "cnnvis.rise", 1, **args)
    assert fixed.params.batch_size < 300
    torch.testing.assert_close(planned.attributions, fixed.attributions, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("spatial", "cells"), [((16, 16), (4, 4)), ((20, 13), (3, 5)), ((8, 9, 10), (3, 3, 3))]
)
def test_masks_are_the_interpolated_grids_cropped_at_their_shift(spatial, cells) -> None:
    """The separable product equals F.interpolate of the padded grid, then the crop."""
    import math

    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(3)
    masks = rise_masks(30, cells, spatial, 0.5, generator=gen)
    gen = torch.Generator().manual_seed(3)  # the same draws, in the same order
    rank = len(spatial)
    grid = (torch.rand((30, 1, *cells), generator=gen) < 0.5).float()
    padded = F.pad(grid, [1, 1] * rank, mode="reflect")
    cell = [math.ceil(s / c) for s, c in zip(spatial, cells, strict=True)]
    size = [c * (k + 2) for c, k in zip(cell, cells, strict=True)]
    mode = {2: "bilinear", 3: "trilinear"}[rank]
    up = F.interpolate(padded, size=size, mode=mode, align_corners=False)[:, 0]
    shifts = [torch.randint(0, c, (30,), generator=gen) for c in cell]
    for m in range(30):
        box = tuple(
            slice(c + int(s[m]), c + int(s[m]) + n)
            for c, s, n in zip(cell, shifts, spatial, strict=True)
        )
        torch.testing.assert_close(masks[m, 0], up[m][box], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rank", [2, 3])
def test_segmentation_is_scored_raw_by_default(rank: int) -> None:
    """A segmentation's class scores sum logits over every pixel: a softmax of them is
    0 or 1 whatever the mask (an empty map). scores='auto' takes the raw sums there,
    the softmax for a classifier, and says which in the extras."""
    model, x = tiny_model("segmentation", rank), tiny_input("segmentation", rank)
    with torch.no_grad():
        sums = ScoreModel(model, MultiClassScores())(x)
    assert float(sums.softmax(1).amax(1).min()) > 0.999  # squashed: one class takes all
    target = sums.argmax(1)
    kw = {"task": "segmentation", "num_masks": 16, "mask_seed": 0, "progress": False}
    auto = explain(model, x, "cnnvis.rise", target=target, **kw)
    raw = explain(model, x, "cnnvis.rise", target=target, scores="raw", **kw)
    assert auto.extras["scores"] == "raw" and auto.params.scores == "auto"
    torch.testing.assert_close(auto.attributions, raw.attributions, rtol=0, atol=0)
    assert bool((auto.attributions.flatten(1).std(1) > 0).all())  # neither empty nor flat
    classifier, image = tiny_model("classification", rank), tiny_input("classification", rank)
    kw = {"num_masks": 16, "mask_seed": 0, "progress": False}
    plain = explain(classifier, image, "cnnvis.rise", target=[0, 1], **kw)
    soft = explain(classifier, image, "cnnvis.rise", target=[0, 1], scores="softmax", **kw)
    assert plain.extras["scores"] == "softmax"
    torch.testing.assert_close(plain.attributions, soft.attributions, rtol=0, atol=0)


@pytest.mark.parametrize("scores", ["softmax", "sigmoid"])
def test_squashed_scores_of_a_segmentation_are_refused(scores: str) -> None:
    model, x = tiny_model("segmentation", 2), tiny_input("segmentation", 2)
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(InvalidParamsError, match=r"cnnvis.*scores='raw'"):
        explain(model, x, "cnnvis.rise", target=0, task="segmentation", scores=scores)
    assert len(calls) <= 1  # refused after the probe, before any masked pass


@pytest.mark.parametrize("rank", [2, 3])
def test_centred_is_the_paper_s_sum_without_the_coverage_term(rank: int) -> None:
    """By hand, with given masks: the paper's sum ``s @ m / (N p)``; centred, ``(s -
    mean) @ m / (N p) + mean``, which differs from it by ``mean * (coverage / (N p) -
    1)`` only (the same expected map)."""
    model, x = tiny_model("classification", rank), tiny_input("classification", rank)
    spatial = tuple(x.shape[2:])
    gen = torch.Generator().manual_seed(3)
    masks = rise_masks(30, (3,) * rank, spatial, 0.4, generator=gen)
    target = torch.tensor([1, 3])
    flat = masks.flatten(1)
    with torch.no_grad():
        s = torch.stack([model(x[i : i + 1] * masks).softmax(1)[:, target[i]] for i in range(2)])
    paper = s @ flat / (30 * 0.4)
    mean = s.mean(1, keepdim=True)
    centred = (s - mean) @ flat / (30 * 0.4) + mean
    torch.testing.assert_close(centred, paper - mean * (flat.sum(0) / (30 * 0.4) - 1))
    kw = {"target": target, "masks": masks, "p": 0.4, "batch_size": 7}
    got = explain(model, x, "cnnvis.rise", **kw).attributions
    assert got.shape == x.shape
    torch.testing.assert_close(got[:, 0].flatten(1), centred, rtol=1e-5, atol=1e-6)
    plain = explain(model, x, "cnnvis.rise", centred=False, **kw).attributions
    torch.testing.assert_close(plain[:, 0].flatten(1), paper, rtol=1e-5, atol=1e-6)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_a_unet_s_summed_scores_need_the_centred_sum() -> None:
    """A real architecture: a MONAI U-Net's summed class scores are large against their
    spread, and the paper's sum of a few hundred masks is the masks' coverage, not the
    model; the centred sum of the same masks is close to the map of many masks."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.UNet(2, 1, 2, channels=(8, 16, 32), strides=(2, 2)).eval()
    x = torch.randn(1, 1, 32, 32)
    kw = {"task": "segmentation", "progress": False}
    many = explain(model, x, "cnnvis.rise", 1, num_masks=3000, mask_seed=1, cells=6, **kw)
    masks = rise_masks(300, (6, 6), (32, 32), 0.5, generator=torch.Generator().manual_seed(2))
    centred = explain(model, x, "cnnvis.rise", 1, masks=masks, **kw).attributions
    paper = explain(model, x, "cnnvis.rise", 1, masks=masks, centred=False, **kw).attributions
    coverage = masks.sum(0)[0]
    assert _corr(paper[0, 0], coverage) > 0.99  # the paper's sum: the coverage
    assert _corr(centred[0, 0], coverage) < 0.5
    truth = many.attributions[0, 0]
    assert _corr(centred[0, 0], truth) > 0.6
    assert _corr(centred[0, 0], truth) > _corr(paper[0, 0], truth) + 0.3


def test_on_a_volume_the_cpu_default_is_16_masks_per_pass_and_recorded() -> None:
    """Left unset, batch_size holds at most 2^21 input elements per pass on the CPU
    (16 RGB volumes of 32^3): the masks are drawn in blocks of 16, as if it were given."""
    model, x = tiny_model(rank=3), tiny_input(rank=3, batch=1, size=32)
    sized = explain(model, x, "cnnvis.rise", 0, seed=0, progress=False, num_masks=40)
    given = explain(model, x, "cnnvis.rise", 0, seed=0, progress=False, num_masks=40, batch_size=16)
    assert sized.params.batch_size == 16
    assert torch.equal(sized.attributions, given.attributions)
    cams = [
        explain(model, x, "cnnvis.score_cam", 0, progress=False, **kw)
        for kw in ({}, {"batch_size": 32})
    ]
    assert cams[0].params.batch_size == 16
    assert torch.equal(cams[0].attributions, cams[1].attributions)

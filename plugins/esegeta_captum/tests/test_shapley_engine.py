"""Exact Shapley values from the 2^n coalitions (esegeta_core.runtime.ablation's
shapley_values) give Captum's own ShapleyValues maps, called directly, on tiny 2D/3D
CNNs and a ResNet, through explain with fixed and planned passes, in 2^n forward
passes per item instead of Captum's n * n! + 1."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from captum.attr import ShapleyValues
from esegeta_captum.primary import MAX_EXACT_FEATURES
from esegeta_captum.primary import ShapleyValues as Method
from torch import nn

from esegeta_core import explain
from esegeta_core.errors import InvalidParamsError
from esegeta_core.runtime.ablation import shapley_values
from esegeta_core.testing import PassRecorder, tiny_input, tiny_model


def close(ours: torch.Tensor, theirs: torch.Tensor, atol: float = 1e-6) -> None:
    """Equal within 1e-5 relative (and an absolute floor far below the map's values)."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=atol)
    assert theirs.abs().max() > 100 * atol  # a map of zeros would prove nothing


def other(x: torch.Tensor) -> torch.Tensor:
    """A per-item baseline that differs from every item."""
    gen = torch.Generator().manual_seed(123)
    return torch.rand(x.shape, generator=gen)


def halves(x: torch.Tensor) -> torch.Tensor:
    """esegeta's default mask, built independently: a 2 x 2 grid over the last two
    spatial dimensions (cells of ceil(n / 2)), whole along any other; (1, 1, *spatial)."""
    *rest, h, w = x.shape[2:]
    rows = torch.arange(h) // -(-h // 2)
    cols = torch.arange(w) // -(-w // 2)
    ids = rows.view(h, 1) * 2 + cols.view(1, w)
    return ids.expand(*rest, h, w)[None, None].clone()


def random_mask(x: torch.Tensor, counts: list[int], seed: int = 0) -> torch.Tensor:
    """A (B, 1, *spatial) mask with ids 0..counts[i]-1 for item i, every id present."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in counts:
        ids = torch.randint(0, n, x.shape[2:], generator=gen)
        ids.view(-1)[:n] = torch.arange(n)  # each of the n ids at least once
        rows.append(ids[None])
    return torch.stack(rows)


def captum(model: nn.Module, x: torch.Tensor, target: object, mask: torch.Tensor, **kw: object):
    """Captum's exact Shapley values, called directly."""
    return ShapleyValues(model).attribute(x, target=target, feature_mask=mask, **kw)


# -- the engine against Captum -------------------------------------------------------------


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_engine_equals_captum(rank: int, batch: int) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=batch, size=12 if rank == 2 else 6)
    target = torch.tensor([2, 0, 3][:batch])
    cases = [  # (mask, baselines, perturbations per item and pass)
        (halves(x), 0, 1),  # the default: 4 features
        (halves(x), 0.25, 4),
        (halves(x), other(x), 32),
        (random_mask(x, [5]), other(x), 8),  # a custom mask, shared by every item
        (random_mask(x, [6] * batch, seed=1), 0.5, 6),  # one mask per item, 6 features
    ]
    for mask, baselines, per_eval in cases:
        theirs = captum(
            model, x, target, mask, baselines=baselines, perturbations_per_eval=per_eval
        )
        ours = shapley_values(
            model,
            x,
            target,
            feature_mask=mask,
            baselines=baselines,
            batch_size=per_eval * batch,
        )
        close(ours, theirs)


@pytest.mark.parametrize("rank", [2, 3])
def test_items_with_different_feature_counts(rank: int) -> None:
    """Captum numbers features across the batch (max id + 1): ids an item lacks are
    null players for it, so its values are those of its own features; negative ids are
    never added (they stay at the baseline and get 0)."""
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=3, size=10 if rank == 2 else 6)
    target = torch.tensor([1, 3, 0])
    for counts, baselines, per_eval in (([3, 5, 6], other(x), 6), ([2, 4, 3], 0.5, 1)):
        mask = random_mask(x, counts, seed=2)
        mask[1].view(-1)[::7] = -1
        theirs = captum(
            model, x, target, mask, baselines=baselines, perturbations_per_eval=per_eval
        )
        ours = shapley_values(
            model, x, target, feature_mask=mask, baselines=baselines, batch_size=3 * per_eval
        )
        close(ours, theirs)
        assert torch.all(ours[1][:, mask[1, 0] == -1] == 0)


def test_masks_per_channel_broadcast_and_broadcast_baselines() -> None:
    """Masks with ids per channel or of size 1 along a dimension, baselines without a
    batch (Captum needs them tiled to the inputs: given so here)."""
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=12)
    gen = torch.Generator().manual_seed(4)
    per_channel = torch.randint(0, 4, (1, 3, 12, 12), generator=gen)  # 4 ids, per channel
    rows_only = torch.randint(0, 5, (1, 1, 12, 1), generator=gen)  # broadcast over W
    for mask in (per_channel, rows_only):
        for baselines in (other(x)[:1], torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1)):
            tiled = baselines.expand_as(x).contiguous()
            theirs = captum(model, x, 3, mask, baselines=tiled, perturbations_per_eval=2)
            ours = shapley_values(model, x, 3, feature_mask=mask, baselines=baselines, batch_size=4)
            close(ours, theirs)


def test_resnet18_equals_captum() -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None).eval()
    x = torch.rand(2, 3, 32, 32)
    target = torch.tensor([3, 7])
    theirs = captum(model, x, target, halves(x), baselines=0.5, perturbations_per_eval=32)
    ours = shapley_values(model, x, target, feature_mask=halves(x), baselines=0.5, batch_size=64)
    close(ours, theirs)


# -- passes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [[4], [5, 5, 5], [2, 6, 3]])
def test_every_coalition_runs_once(counts: list[int]) -> None:
    """2^n inputs per item and nothing else (no unperturbed pass), in passes of the
    batch size built in one reused buffer."""
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=len(counts), size=12)
    mask = random_mask(x, counts, seed=3)
    shapley_values(model, x, 0, feature_mask=mask, batch_size=8)
    work = sum(2**n for n in counts)
    assert sum(model.sizes) == work
    assert model.sizes == [8] * (work // 8) + ([work % 8] if work % 8 else [])
    assert len(set(model.pointers)) == 1


def test_any_order_of_pass_sizes_and_layouts_builds_the_right_inputs(
    irregular_passes: list[tuple[int, bool]],
) -> None:
    """Whatever sizes and layouts the planner asks for, including a pass asked for twice
    in both layouts, the maps stay Captum's."""
    calls = irregular_passes
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=3, size=12)
    target = torch.tensor([3, 1, 2])
    mask = random_mask(x, [4, 6, 5], seed=5)
    theirs = captum(model, x, target, mask, baselines=other(x))
    ours = shapley_values(model, x, target, feature_mask=mask, baselines=other(x), batch_size=4)
    close(ours, theirs)
    assert len(calls) > 10 and any(layout for _, layout in calls)


def test_too_many_features_are_refused() -> None:
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=1, size=8)
    mask = torch.arange(64).view(1, 1, 8, 8) % 21
    with pytest.raises(InvalidParamsError, match="Shapley values: .*21 features"):
        shapley_values(model, x, 0, feature_mask=mask, batch_size=8)
    with pytest.raises(InvalidParamsError, match="Shapley values: the feature mask"):
        shapley_values(model, x, 0, feature_mask=mask[0], batch_size=8)
    assert not model.sizes


# -- through explain -------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [2, 3])
def test_explain_equals_captum_for_any_pass_size(
    rank: int, engine_only: Callable[..., None]
) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=3, size=14 if rank == 2 else 7)
    target = torch.tensor([2, 0, 1])
    theirs = captum(
        model, x, target, halves(x), baselines=torch.zeros_like(x), perturbations_per_eval=32
    )
    engine_only(ShapleyValues)
    runs = [{}, {"auto_batch": True}] + [{"perturbations_per_eval": n} for n in (1, 5, 16)]
    for kwargs in runs:
        ours = explain(model, x, "captum.shapley_values", target, **kwargs)
        close(ours.attributions, theirs)


def test_explain_with_a_custom_mask_and_baseline(engine_only: Callable[..., None]) -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=16)
    target = torch.tensor([1, 3])
    mask = random_mask(x, [6], seed=6)[0, 0]  # spatial ids, as a user gives them
    theirs = captum(
        model, x, target, mask[None, None], baselines=other(x), perturbations_per_eval=3
    )
    engine_only(ShapleyValues)
    for kwargs in ({"auto_batch": True}, {"perturbations_per_eval": 3}, {}):
        ours = explain(
            model,
            x,
            "captum.shapley_values",
            target,
            feature_mask=mask,
            baselines=other(x),
            **kwargs,
        )
        close(ours.attributions, theirs)


def test_explain_runs_2_to_the_n_passes_per_item(engine_only: Callable[..., None]) -> None:
    """Through explain the model sees the 2^4 coalitions of each item, not 4 * 4! + 1."""
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=2, size=16)
    engine_only(ShapleyValues)
    explain(model, x, "captum.shapley_values", torch.tensor([0, 1]), perturbations_per_eval=4)
    perturbed = [n for n in model.sizes if n == 8]  # 4 coalitions x 2 items a pass
    assert sum(perturbed) == 2 * 2**4
    assert sum(model.sizes) - sum(perturbed) <= 2  # at most the core's own probe


def test_workload_counts_the_coalitions() -> None:
    method = Method()
    shape = (2, 3, 16, 16)
    default = method.core_workload(Method.Params(), shape, {})
    assert default.passes == 2**4
    six = method.core_workload(Method.Params(grid_cell=(8, 6)), shape, {})
    assert six.passes == 2**6 and six.counts == ("grid_cell",)
    assert MAX_EXACT_FEATURES == 12
    twelve = torch.arange(12).repeat_interleave(2).view(4, 6)
    assert method.core_workload(Method.Params(feature_mask=twelve), shape, {}).passes == 4096
    assert 12 * math.factorial(12) > 2**12


def test_more_than_twelve_features_are_refused_by_the_plugin() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=1, size=16)
    thirteen = torch.arange(256).view(16, 16) % 13
    with pytest.raises(InvalidParamsError, match="13 features.*shapley_value_sampling"):
        explain(model, x, "captum.shapley_values", 0, feature_mask=thirteen, force=True)

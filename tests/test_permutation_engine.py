"""The core's permutation engine (esegeta_core.runtime.permutation) gives Captum 0.9's
FeaturePermutation maps with the same torch seed, on tiny 2D/3D CNNs and per-item and
per-channel masks, whatever the pass size or plan; it draws Captum's permutations,
builds its passes in one reused buffer and skips items a permutation leaves in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import esegeta_core.runtime.ablation as ablation
from esegeta_core.errors import InvalidParamsError, InvalidTargetError
from esegeta_core.runtime.passes import clear_plans, planning
from esegeta_core.runtime.permutation import draw_permutations, feature_permutation
from esegeta_core.testing import PassRecorder, tiny_input, tiny_model

attr = pytest.importorskip("captum.attr")


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal within 1e-5 relative / 1e-6 absolute, same dtype, and not all zero."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert theirs.abs().max() > 0


def masks(x: torch.Tensor) -> list[torch.Tensor]:
    """A shared grid-like mask, per-item masks with negative ids and ids missing from
    some items, a per-channel mask and one broadcast over the last dimension."""
    gen = torch.Generator().manual_seed(5)
    b, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    return [
        torch.randint(0, 5, (1, 1, *spatial), generator=gen),
        torch.randint(-2, 6, (b, 1, *spatial), generator=gen),
        torch.randint(0, 4, (1, c, *spatial), generator=gen),
        torch.randint(0, 3, (1, 1, *spatial[:-1], 1), generator=gen),
    ]


def captum(model: nn.Module, x: torch.Tensor, target: object, mask: torch.Tensor, per_eval: int):
    """Captum's map and the generator's state after it, from seed 7."""
    torch.manual_seed(7)
    out = attr.FeaturePermutation(model).attribute(
        x, target=target, feature_mask=mask, perturbations_per_eval=per_eval
    )
    return out, torch.get_rng_state()


def ours(model: nn.Module, x: torch.Tensor, target: object, mask: torch.Tensor, batch: int):
    """The engine's map and the generator's state after it, from seed 7."""
    torch.manual_seed(7)
    out = feature_permutation(model, x, target, feature_mask=mask, batch_size=batch)
    return out, torch.get_rng_state()


@pytest.mark.parametrize("rank", [2, 3])
def test_equals_captum_for_every_mask_and_pass_size(rank: int) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=4, size=12 if rank == 2 else 6)
    target = torch.tensor([0, 3, 1, 2])
    for mask in masks(x):
        theirs, state = captum(model, x, target, mask, 1)
        # Captum's draws do not depend on its pass size either
        assert torch.equal(captum(model, x, target, mask, 5)[0], theirs)
        for batch in (1, 3, 8, 100):
            got, after = ours(model, x, target, mask, batch)
            close(got, theirs)
            assert torch.equal(after, state)  # the same draws, no more


def test_int_target_and_a_batch_of_two() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=12)
    mask = masks(x)[0]
    theirs, _ = captum(model, x, 2, mask, 3)
    close(ours(model, x, 2, mask, 7)[0], theirs)


def test_resnet18_equals_captum() -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(3, 3, 32, 32)
    target = torch.tensor([3, 7, 1])
    mask = torch.arange(16).view(1, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3)
    theirs, _ = captum(model, x, target, mask, 4)
    for batch in (5, 16):
        close(ours(model, x, target, mask, batch)[0], theirs)


def test_planned_passes_equal_captum(irregular: list[int]) -> None:
    """Under the planner (as in explain(auto_batch=True)), and with irregular pass sizes
    in both layouts, the map stays Captum's."""
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=3, size=16)
    target = torch.tensor([1, 0, 2])
    mask = torch.randint(0, 30, (3, 1, 16, 16), generator=torch.Generator().manual_seed(2))
    theirs, _ = captum(model, x, target, mask, 32)
    clear_plans()
    with planning(model, 64) as state:
        close(ours(model, x, target, mask, 64)[0], theirs)
    assert state.plan is not None
    close(ours(model, x, target, mask, 4)[0], theirs)
    assert len(irregular) == 2 and irregular[1] > 10  # the patched planner ran


@pytest.fixture
def irregular(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From its second use on, the passes run in irregular sizes and both layouts (one
    pass computed both ways); returns the passes of each use."""
    real = ablation.method_passes
    runs: list[int] = []

    def irregular_passes(work, chunk, batch_size, sample, *, kind="forward", **kwargs):
        if not runs:
            runs.append(0)
            return real(work, chunk, batch_size, sample, kind=kind, **kwargs)
        sizes, out, start, i = [5, 1, 7, 3, 16, 2], [], 0, 0
        while start < work:
            stop = min(work, start + sizes[i % len(sizes)])
            if i == 3:
                chunk(start, stop, True)
            out.append(chunk(start, stop, i % 2 == 1))
            start, i = stop, i + 1
        runs.append(i)
        return torch.cat(out)

    monkeypatch.setattr(ablation, "method_passes", irregular_passes)
    return runs


def test_one_buffer_and_no_pass_for_an_item_left_in_place() -> None:
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=3, size=12)
    mask = masks(x)[0]
    features = int(torch.unique(mask).numel())
    torch.manual_seed(3)
    perms = draw_permutations(3, features)
    moved = sum(p[i] != i for p in perms for i in range(3))
    torch.manual_seed(3)
    feature_permutation(model, x, 0, feature_mask=mask, batch_size=4)
    assert sum(model.sizes) == 3 + moved < 3 + 3 * features  # some items stay in place
    assert len(set(model.pointers)) == 1


def test_draws_are_captums() -> None:
    """A non-identity permutation per feature, redrawn as Captum redraws: with two items
    every draw but the swap is redrawn."""
    torch.manual_seed(0)
    perms = draw_permutations(2, 50)
    assert all(p == [1, 0] for p in perms)
    torch.manual_seed(0)
    expected = []
    for _ in range(4):
        perm = torch.randperm(5)
        while bool((perm == torch.arange(5)).all()):
            perm = torch.randperm(5)
        expected.append(perm.tolist())
    torch.manual_seed(0)
    assert draw_permutations(5, 4) == expected


def test_refusals_name_the_method() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=8)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    with pytest.raises(InvalidParamsError, match="Feature permutation: .*at least 2 items"):
        feature_permutation(model, x[:1], 0, feature_mask=mask, batch_size=4)
    with pytest.raises(InvalidParamsError, match="Feature permutation: the feature mask"):
        feature_permutation(model, x, 0, feature_mask=mask[0], batch_size=4)
    with pytest.raises(InvalidParamsError, match="Feature permutation: batch_size"):
        feature_permutation(model, x, 0, feature_mask=mask, batch_size=0)
    with pytest.raises(InvalidTargetError, match="Feature permutation: target"):
        feature_permutation(model, x, [0, 1], feature_mask=mask, batch_size=4)

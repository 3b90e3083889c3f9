"""The coalition engine (esegeta_core.runtime.coalitions) on tiny models: Shapley value
sampling equals its definition computed input by input with the same permutations
(drawn as Captum draws them), for any pass size and order of passes; coalition scores
equal the model's scores of the blended inputs; feature values spread a value per
feature as Captum's Lime does; models that draw random numbers are refused."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import esegeta_core.runtime.coalitions as coalitions
from esegeta_core.errors import InvalidParamsError, InvalidTargetError
from esegeta_core.runtime.coalitions import (
    RandomModelError,
    coalition_scores,
    feature_values,
    shapley_value_sampling,
)
from esegeta_core.testing import PassRecorder, tiny_input, tiny_model


def close(ours: torch.Tensor, want: torch.Tensor) -> None:
    assert ours.shape == want.shape and ours.dtype == want.dtype
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
    assert want.abs().max() > 1e-4  # a map of zeros would prove nothing


def random_mask(x: torch.Tensor, counts: list[int], seed: int = 0) -> torch.Tensor:
    """A ``(B, 1, *spatial)`` mask with ids ``0 .. counts[i] - 1`` for item ``i``."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in counts:
        ids = torch.randint(0, n, x.shape[2:], generator=gen)
        ids.view(-1)[:n] = torch.arange(n)
        rows.append(ids[None])
    return torch.stack(rows)


def score(model: nn.Module, one: torch.Tensor, target: int) -> torch.Tensor:
    return model(one.unsqueeze(0))[0, target]


def by_definition(
    model: nn.Module,
    x: torch.Tensor,
    target: list[int],
    mask: torch.Tensor,
    n_samples: int,
    base: torch.Tensor,
) -> torch.Tensor:
    """Shapley value sampling input by input: ``n_samples`` permutations of ``0 .. max
    id`` drawn with ``torch.randperm`` in turn; along each, every item's features are
    added to its baseline and credited with the score change."""
    count = int(mask.max()) + 1
    orders = [torch.randperm(count).tolist() for _ in range(n_samples)]
    full = mask.expand(mask.shape[0], x.shape[1], *x.shape[2:])
    out = torch.zeros(x.shape)
    with torch.no_grad():
        for i in range(x.shape[0]):
            ids = full[i if len(full) > 1 else 0]
            b = base[i if len(base) > 1 else 0]
            phi = torch.zeros(count)
            for order in orders:
                current = b.clone()
                previous = score(model, current, target[i])
                for f in order:
                    if not bool((ids == f).any()):
                        continue
                    current[ids == f] = x[i][ids == f]
                    now = score(model, current, target[i])
                    phi[f] += now - previous
                    previous = now
            out[i] = torch.where(ids >= 0, phi[ids.clamp(min=0)], 0.0) / n_samples
    return out


def other(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(123))


# -- Shapley value sampling -----------------------------------------------------------------


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapley_value_sampling_is_its_definition(rank: int, batch: int) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=batch, size=10 if rank == 2 else 6)
    target = [2, 0, 3][:batch]
    holes = random_mask(x, [6] * batch, seed=1)
    holes[-1].view(-1)[::4] = -1  # negative ids are never added
    holes[0][holes[0] == 2] = 5  # an id item 0 lacks
    per_channel = torch.randint(
        0, 5, (1, 3, *x.shape[2:]), generator=torch.Generator().manual_seed(6)
    )
    cases = [(holes, other(x)), (random_mask(x, [8]), other(x)[:1]), (per_channel, None)]
    for mask, baselines in cases:
        base = baselines if baselines is not None else torch.zeros_like(x[:1])
        torch.manual_seed(3)
        want = by_definition(model, x, target, mask, 3, base)
        for size in (1, 4, 64):
            torch.manual_seed(3)
            ours = shapley_value_sampling(
                model,
                x,
                torch.tensor(target),
                feature_mask=mask,
                n_samples=3,
                baselines=baselines,
                batch_size=size,
            )
            close(ours, want)
            if mask is holes:  # negative ids get 0
                assert torch.all(ours[-1][:, holes[-1, 0] < 0] == 0)


def test_later_steps_only_add_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """With long orders and short passes a slot takes a later step of its order and
    only gets the added features; the maps equal passes built anew."""
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=16)
    mask = random_mask(x, [30, 24], seed=2)
    added: list[int] = []
    original = coalitions._Orders._add

    def spy(self: Any, data: torch.Tensor, steps: list[Any]) -> None:
        added.append(len(steps))
        original(self, data, steps)

    monkeypatch.setattr(coalitions._Orders, "_add", spy)
    maps = {}
    for size in (4, 256):
        added.clear()
        torch.manual_seed(0)
        maps[size] = shapley_value_sampling(
            model, x, 1, feature_mask=mask, n_samples=2, baselines=0.5, batch_size=size
        )
        if size == 4:
            assert sum(added) > 20  # most slots took the next steps of their order
        else:
            assert sum(added) == 0  # one pass: every slot built anew
    close(maps[4], maps[256])


def test_draws_as_captum_does() -> None:
    """One ``torch.randperm`` of every feature per sample and nothing else: the
    generator ends where those draws leave it."""
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=8)
    mask = random_mask(x, [5, 7])
    torch.manual_seed(11)
    shapley_value_sampling(model, x, 0, feature_mask=mask, n_samples=4, batch_size=3)
    ours = torch.rand(3)
    torch.manual_seed(11)
    for _ in range(4):
        torch.randperm(7)
    assert torch.equal(ours, torch.rand(3))


def test_baselines_ride_in_the_first_pass() -> None:
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=3, size=8)
    mask = random_mask(x, [4, 4, 3])
    shapley_value_sampling(model, x, 0, feature_mask=mask, n_samples=2, batch_size=5)
    work = 3 + 2 * (4 + 4 + 3)
    assert model.sizes == [5] * (work // 5) + ([work % 5] if work % 5 else [])
    assert len(set(model.pointers)) == 1


def test_any_order_of_pass_sizes_and_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Irregular pass sizes, channels-last passes and one pass computed in both layouts
    give the same maps."""
    calls: list[bool] = []

    def plan(work, chunk, batch_size, sample, *, kind="forward", layouts=True, fits=None):
        sizes, out, start, i = [3, 1, 6, 2, 5], [], 0, 0
        while start < work:
            stop = min(work, start + sizes[i % len(sizes)])
            if i == 2:
                chunk(start, stop, True)
            out.append(chunk(start, stop, i % 2 == 1))
            calls.append(i % 2 == 1)
            start, i = stop, i + 1
        return torch.cat(out)

    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=12)
    mask = random_mask(x, [9, 12], seed=4)
    torch.manual_seed(5)
    want = by_definition(model, x, [1, 2], mask, 2, other(x))
    monkeypatch.setattr(coalitions, "method_passes", plan)
    torch.manual_seed(5)
    ours = shapley_value_sampling(
        model,
        x,
        torch.tensor([1, 2]),
        feature_mask=mask,
        n_samples=2,
        baselines=other(x),
        batch_size=4,
    )
    close(ours, want)
    assert any(calls) and len(calls) > 5


class Noisy(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.drop = model, nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.drop(x))


def test_a_model_that_draws_random_numbers_is_refused() -> None:
    model = Noisy(tiny_model("classification", 2)).train()
    x = tiny_input("classification", 2, batch=1, size=8)
    mask = random_mask(x, [4])
    with pytest.raises(RandomModelError, match="drew random numbers"):
        shapley_value_sampling(model, x, 0, feature_mask=mask, n_samples=2, batch_size=4)
    coal = torch.ones(3, 4)
    with pytest.raises(RandomModelError, match="model.eval"):
        coalition_scores(model, x, 0, feature_mask=mask, coalitions=coal, batch_size=2)
    model.eval()
    shapley_value_sampling(model, x, 0, feature_mask=mask, n_samples=2, batch_size=4)


def test_bad_arguments_are_refused() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=8)
    mask = random_mask(x, [4])

    def run(**kw: Any) -> None:
        args: dict[str, Any] = {"feature_mask": mask, "n_samples": 2, "batch_size": 4}
        shapley_value_sampling(model, x, kw.pop("target", 0), **{**args, **kw})

    with pytest.raises(InvalidParamsError, match="Shapley value sampling: batch_size"):
        run(batch_size=0)
    with pytest.raises(InvalidParamsError, match="n_samples must be an integer"):
        run(n_samples=0)
    with pytest.raises(InvalidParamsError, match="the feature mask"):
        run(feature_mask=mask[0])
    with pytest.raises(InvalidParamsError, match="integer ids"):
        run(feature_mask=mask.float() + 0.5)
    with pytest.raises(InvalidTargetError, match="one class or one per item"):
        run(target=torch.tensor([0, 1, 2]))
    with pytest.raises(InvalidParamsError, match="do not broadcast"):
        run(baselines=torch.zeros(2, 3, 5, 5))


# -- coalition scores and feature values ------------------------------------------------------


@pytest.mark.parametrize("rank", [2, 3])
def test_coalition_scores_are_the_blended_inputs_scores(rank: int) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=2, size=10 if rank == 2 else 6)
    mask = random_mask(x, [6, 6], seed=7)
    gen = torch.Generator().manual_seed(8)
    coal = torch.randint(0, 2, (13, 6), generator=gen)
    items = [0] * 6 + [1] * 4 + [0] * 3
    base = other(x)
    seen: dict[int, torch.Tensor] = {}

    def built(j: int, one: torch.Tensor) -> None:
        seen[j] = one.clone()

    with torch.no_grad():
        blends = torch.stack(
            [torch.where(coal[j][mask[i, 0]].bool(), x[i], base[i]) for j, i in enumerate(items)]
        )
        want = model(blends)[torch.arange(13), torch.tensor([3, 1])[items]]
    for size in (1, 4, 32):
        seen.clear()
        ours = coalition_scores(
            model,
            x,
            torch.tensor([3, 1]),
            feature_mask=mask,
            coalitions=coal,
            items=items,
            baselines=base,
            batch_size=size,
            built=built,
        )
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
        assert torch.equal(torch.cat([seen[j] for j in range(13)]), blends)


def test_coalition_scores_reuse_one_buffer_and_check_ids() -> None:
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=1, size=8)
    mask = random_mask(x, [5])
    coal = torch.ones(11, 5, dtype=torch.long)
    coalition_scores(model, x, 2, feature_mask=mask, coalitions=coal, batch_size=4)
    assert model.sizes == [4, 4, 3] and len(set(model.pointers)) == 1
    with pytest.raises(InvalidParamsError, match=r"ids must lie in 0 \.\. 3"):
        coalition_scores(model, x, 2, feature_mask=mask, coalitions=coal[:, :4], batch_size=4)
    with pytest.raises(InvalidParamsError, match="items must name an item"):
        coalition_scores(
            model, x, 2, feature_mask=mask, coalitions=coal, items=[1] * 11, batch_size=4
        )


def test_feature_values_spread_each_features_value() -> None:
    x = tiny_input("classification", 2, batch=2, size=8)
    mask = random_mask(x, [4, 4], seed=9)
    values = torch.tensor([[0.5, -1.0, 2.0, 0.25], [1.0, 2.0, 3.0, 4.0]])
    out = feature_values(values, mask, x)
    assert out.shape == x.shape and out.dtype == torch.float32
    for i in range(2):
        want = sum(values[i, f].item() * (mask[i] == f).float() for f in range(4))
        assert torch.equal(out[i], want.expand(3, 8, 8))
    broken = values.clone()
    broken[0, 1] = math.inf  # Captum's sum: inf on its feature, inf * 0 = NaN elsewhere
    out = feature_values(broken, mask, x)
    assert torch.isinf(out[0][:, mask[0, 0] == 1]).all()
    assert torch.isnan(out[0][:, mask[0, 0] != 1]).all()
    assert torch.isfinite(out[1]).all()

"""captum.feature_permutation runs on the core's permutation engine
(esegeta_core.runtime.permutation): through explain its maps equal Captum's
FeaturePermutation called directly with the same seed, in 2D and 3D, with per-item
targets, at any pass size and under auto_batch; calls the engine does not cover go to
Captum unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import FeaturePermutation
from esegeta_captum.primary import FeaturePermutation as Method
from torch import nn

from esegeta_core import explain
from esegeta_core.feature_masks import grid_mask
from esegeta_core.testing import tiny_input, tiny_model


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal within 1e-5 relative / 1e-6 absolute, same dtype, and not all zero."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert theirs.abs().max() > 0


def seeded_like_explain(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()`` from the generator state ``explain(seed=0)`` gives a stochastic Captum
    method (torch seeded, then NumPy seeded from torch)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        np.random.seed(int(torch.randint(0, 2**31 - 1, ())))
        return fn()


def direct(model: nn.Module, x: torch.Tensor, target: Any, cell: int, per_eval: int = 32):
    mask = grid_mask(x, cell)
    return seeded_like_explain(
        lambda: FeaturePermutation(model).attribute(
            x, target=target, feature_mask=mask, perturbations_per_eval=per_eval
        )
    )


@pytest.mark.parametrize("rank", [2, 3])
def test_explain_equals_captum_at_any_pass_size(
    rank: int, engine_only: Callable[..., None]
) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=3, size=16 if rank == 2 else 8)
    target = torch.tensor([2, 0, 1])
    cell = 4 if rank == 2 else 2
    theirs = direct(model, x, target, cell)
    engine_only(FeaturePermutation)
    runs = [{"auto_batch": True}] + [{"perturbations_per_eval": n} for n in (1, 3, 32)]
    for kwargs in runs:
        ours = explain(
            model, x, "captum.feature_permutation", target, seed=0, grid_cell=cell, **kwargs
        )
        close(ours.attributions, theirs)


def test_auto_batch_plans_the_passes(engine_only: Callable[..., None]) -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=4, size=32)
    target = torch.tensor([0, 1, 2, 3])
    theirs = direct(model, x, target, 2, per_eval=1)
    engine_only(FeaturePermutation)
    ours = explain(
        model, x, "captum.feature_permutation", target, seed=0, grid_cell=2, auto_batch=True
    )
    close(ours.attributions, theirs)
    assert ours.extras["pass_plan"]["inputs_per_pass"] >= 1


def test_resnet18_equals_captum(engine_only: Callable[..., None]) -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(3, 3, 48, 48)
    target = torch.tensor([3, 7, 1])
    theirs = direct(model, x, target, 16, per_eval=1)
    engine_only(FeaturePermutation)
    for kwargs in ({"auto_batch": True}, {"perturbations_per_eval": 4}):
        ours = explain(
            model, x, "captum.feature_permutation", target, seed=0, grid_cell=16, **kwargs
        )
        close(ours.attributions, theirs)


def swap_first_two(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A custom perm_func: items 0 and 1 swap the feature."""
    order = torch.arange(x.shape[0])
    order[:2] = torch.tensor([1, 0])
    return torch.where(mask, x[order], x)


def test_calls_the_engine_does_not_cover_go_to_captum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another perm_func, one item, a target list, a mask in a tuple, a baseline list
    (which Captum ignores): Captum's own result, unchanged."""
    import esegeta_captum.primary as primary

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the engine ran")

    monkeypatch.setattr(primary, "feature_permutation", refuse)
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=3, size=8)
    mask = grid_mask(x, 4)
    plain = {"feature_mask": mask, "target": torch.tensor([0, 1, 2]), "perturbations_per_eval": 2}
    cases: list[tuple[Any, torch.Tensor, dict[str, Any]]] = [
        (FeaturePermutation(model, perm_func=swap_first_two), x, plain),
        (FeaturePermutation(model), x[:1], {**plain, "target": 1, "feature_mask": mask[:1]}),
        (FeaturePermutation(model), x, {**plain, "target": [0, 1, 2]}),
        (FeaturePermutation(model), x, {**plain, "feature_mask": (mask,)}),
        (FeaturePermutation(model), x, {**plain, "baselines": [0.0]}),
    ]
    for algorithm, inputs, kwargs in cases:
        torch.manual_seed(1)
        ours = Method().run(algorithm, inputs, kwargs, None)
        torch.manual_seed(1)
        theirs = algorithm.attribute(inputs, **kwargs)
        assert torch.equal(ours, theirs)


def test_the_engine_covers_captums_default_call() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=3, size=8)
    mask = grid_mask(x, 4)
    kwargs = {"feature_mask": mask, "target": torch.tensor([0, 1, 2]), "perturbations_per_eval": 2}
    algorithm = FeaturePermutation(model)
    calls: list[int] = []
    real = algorithm.forward_func

    def counted(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return real(batch)

    algorithm.forward_func = counted
    torch.manual_seed(1)
    ours = Method().run(algorithm, x, kwargs, None)
    engine_passes = list(calls)
    algorithm.forward_func = real
    torch.manual_seed(1)
    theirs = FeaturePermutation(model).attribute(x, **kwargs)
    close(ours, theirs)
    # passes of at most 2 x 3 inputs, the 3 inputs themselves in the first one
    assert max(engine_passes) <= 6 and sum(engine_passes) <= 3 + 3 * 4


def test_a_single_item_is_refused_before_the_model_runs() -> None:
    """A feature shuffled across a batch of one item stays in place: every attribution
    would be zero (Captum skips the feature and returns zeros). Refused before any
    pass, naming the ablation methods that explain one item."""
    from esegeta_core import InvalidInputError

    model, x = tiny_model("classification", 2), tiny_input("classification", 2)
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(InvalidInputError, match=r"at least 2 items, got 1.*captum\.occlusion"):
        explain(model, x[:1], "captum.feature_permutation", target=0)
    assert calls == []

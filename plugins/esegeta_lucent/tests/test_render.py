"""Optimisation: objectives go up, Lucent runs the 2D case, runs are reproducible and
leave nothing behind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from esegeta_core import Explanation, InvalidInputError, InvalidParamsError, explain
from esegeta_core.model_state import count_hooks
from esegeta_core.testing import tiny_input, tiny_model

METHOD = "lucent.feature_visualization"
NO_TRANSFORMS = {"pad": 0, "jitter": 0, "scale": 0.0, "rotate": 0}
OBJECTIVES = {
    "channel": "features.conv2:3",
    "neuron": "features.conv2:3@center",
    "layer": "features.conv2",
    "sum": "features.conv2:3 + 0.5*features.conv2:5 - features.conv1:0",
    "logit": "logit",
}


@pytest.fixture
def fast(fast_params: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The method's fast parameters: few steps, small transforms."""
    return dict(fast_params[METHOD])


def run(rank: int, task: str = "classification", **params: Any) -> Explanation:
    model, x = tiny_model(task, rank), tiny_input(task, rank)
    return explain(model, x, METHOD, task=task, seed=0, **params)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("kind", sorted(OBJECTIVES))
def test_objective_increases(rank: int, kind: str) -> None:
    e = run(rank, objective=OBJECTIVES[kind], steps=25, lr=0.1, **NO_TRANSFORMS)
    start, final = e.extras["objective_start"], e.extras["objective"]
    assert start.shape == final.shape == (2,)
    assert bool((final > start + 1e-4).all()), (kind, start, final)
    history = e.extras["objective_history"]
    assert history.shape == (25, 2)
    assert bool((history[-1] > history[0]).all())


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("parameterization", ["fft", "pixel"])
def test_parameterizations_with_transforms(rank: int, parameterization: str) -> None:
    e = run(
        rank,
        objective="features.conv2:1",
        steps=30,
        lr=0.1,
        pad=1,
        jitter=2,
        scale=0.1,
        rotate=10,
        parameterization=parameterization,
    )
    images = e.attributions
    assert images.shape == tiny_input("classification", rank).shape
    assert e.output == "image"
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert bool((e.extras["objective"] > e.extras["objective_start"]).all())


def test_segmentation_channel_of_the_head_is_class_visualization() -> None:
    e = run(3, "segmentation", objective="head:2", steps=20, lr=0.1, **NO_TRANSFORMS)
    assert e.attributions.shape == (2, 1, 8, 8, 8)
    assert bool((e.extras["objective"] > e.extras["objective_start"]).all())


@pytest.mark.parametrize("rank", [2, 3])
def test_seeded_runs_repeat_and_seeds_differ(rank: int, fast: dict[str, Any]) -> None:
    model, x = tiny_model("classification", rank), tiny_input("classification", rank)
    runs = [explain(model, x, METHOD, seed=s, **fast).attributions for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    # each batch item is its own random start
    assert not torch.allclose(runs[0][0], runs[0][1])


def test_numpy_global_state_is_restored(fast: dict[str, Any]) -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    run(2, **fast)
    assert np.random.rand() == expected


def test_2d_runs_through_lucent_render_vis(
    monkeypatch: pytest.MonkeyPatch, fast: dict[str, Any]
) -> None:
    from lucent.optvis import render

    calls: list[Any] = []
    original = render.render_vis

    def spy(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        calls.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(render, "render_vis", spy)
    model, x = tiny_model(), tiny_input()
    explain(model, x, METHOD, **fast)
    assert len(calls) == 1
    # render_vis hooks every child of the module it gets and never unhooks: it gets none
    assert not list(calls[0].children())
    assert count_hooks(model) == 0
    explain(tiny_model(rank=3), tiny_input(rank=3), METHOD, **fast)
    assert len(calls) == 1


def test_no_hooks_even_when_the_objective_fails(fast: dict[str, Any]) -> None:
    model, x = tiny_model(), tiny_input()
    with pytest.raises(InvalidParamsError):
        explain(model, x, METHOD, objective="features.conv2:99", **fast)
    assert count_hooks(model) == 0


@pytest.mark.parametrize("rank", [2, 3])
def test_image_size_and_extras(rank: int, fast: dict[str, Any]) -> None:
    size = (12, 10) if rank == 2 else (6, 5, 7)
    e = run(rank, image_size=size, **fast)
    assert e.attributions.shape == (2, 3, *size)
    assert e.extras["objective_history"].shape == (fast["steps"], 2)
    with pytest.raises(InvalidInputError, match="visualization"):
        e.saliency()


def test_bad_image_size(fast: dict[str, Any]) -> None:
    with pytest.raises(InvalidParamsError, match="image_size"):
        run(2, image_size=(4, 4, 4), **fast)


def test_decorrelation_and_normalisation_need_rgb(fast: dict[str, Any]) -> None:
    with pytest.raises(InvalidParamsError, match="decorrelate=True needs 3-channel"):
        run(2, "segmentation", decorrelate=True, **fast)
    with pytest.raises(InvalidParamsError, match="imagenet"):
        run(3, "segmentation", normalize="imagenet", **fast)
    a = run(2, decorrelate=True, normalize="imagenet", **fast).attributions
    b = run(2, decorrelate=False, normalize="imagenet", **fast).attributions
    assert not torch.allclose(a, b)


def test_model_errors_are_not_swallowed(fast: dict[str, Any]) -> None:
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 2:  # the core's scoring pass and the initial objective work
                raise RuntimeError("boom")
            return self.conv(x).mean((2, 3))

    with pytest.raises(Exception, match="boom"):
        explain(Broken(), tiny_input(), METHOD, **fast)

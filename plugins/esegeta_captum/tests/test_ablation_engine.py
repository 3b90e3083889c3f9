"""The core's ablation engine (esegeta_core.runtime.ablation) gives Captum's own
Occlusion and FeatureAblation maps, called directly, on tiny 2D/3D CNNs, a ResNet and a
segmentation model, through explain with fixed and planned passes; it builds its passes
in one reused buffer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from captum.attr import FeatureAblation, Occlusion
from esegeta_captum.primary import engine_batch

import esegeta_core.runtime.ablation as ablation
from esegeta_core import MultiClassScores, ScoreModel, explain
from esegeta_core.errors import InvalidParamsError
from esegeta_core.runtime.ablation import feature_ablation, occlusion
from esegeta_core.testing import PassRecorder, tiny_input, tiny_model


def close(ours: torch.Tensor, theirs: torch.Tensor, atol: float = 1e-6) -> None:
    """Equal within 1e-5 relative (and a floor far below any score drop)."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=atol)
    assert theirs.abs().max() > 0  # a map of zeros would prove nothing


def other(x: torch.Tensor) -> torch.Tensor:
    """A per-item baseline that differs from every item."""
    gen = torch.Generator().manual_seed(123)
    return torch.rand(x.shape, generator=gen)


# -- the engine against Captum -----------------------------------------------------------

WINDOWS = [
    # (channel extent, spatial window, channel stride, spatial stride): windows that do
    # not divide the size, overlapping strides, a window over part of the channels
    (3, 4, 3, 4),
    (3, 5, 3, 3),
    (1, 3, 1, 2),
    (2, 6, 1, 5),
]


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", range(len(WINDOWS)))
def test_occlusion_equals_captum(rank: int, batch: int, case: int) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=batch, size=13 if rank == 2 else 7)
    target = torch.tensor([0, 2, 3][:batch])
    c, w, cs, s = WINDOWS[case]
    window, strides = (c, *(w,) * rank), (cs, *(s,) * rank)
    for baselines, per_eval in ((0, 1), (0.25, 4), (other(x), 7)):
        theirs = Occlusion(model).attribute(
            x,
            sliding_window_shapes=window,
            strides=strides,
            baselines=baselines,
            target=target,
            perturbations_per_eval=per_eval,
        )
        ours = occlusion(
            model,
            x,
            target,
            window=window,
            strides=strides,
            baselines=baselines,
            batch_size=per_eval * batch,
        )
        close(ours, theirs)


def test_occlusion_takes_broadcast_baselines_and_int_targets() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=12)
    window, strides = (3, 5, 5), (3, 3, 3)
    for baselines in (other(x)[:1], other(x)[0], torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1)):
        theirs = Occlusion(model).attribute(
            x, sliding_window_shapes=window, strides=strides, baselines=baselines, target=2
        )
        ours = occlusion(
            model, x, 2, window=window, strides=strides, baselines=baselines, batch_size=3
        )
        close(ours, theirs)


def test_occlusion_refuses_windows_that_skip_elements() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=1)
    with pytest.raises(InvalidParamsError, match="at most the window"):
        occlusion(model, x, 0, window=(3, 2, 2), strides=(3, 4, 4), batch_size=4)
    with pytest.raises(InvalidParamsError, match="does not fit"):
        occlusion(model, x, 0, window=(3, 20, 2), strides=1, batch_size=4)


def grid(shape: tuple[int, ...], cell: int) -> torch.Tensor:
    """Row-major grid ids over the spatial dims, (1, 1, *spatial)."""
    spatial = shape[2:]
    ids = torch.zeros(spatial, dtype=torch.long)
    for d, n in enumerate(spatial):
        cells = torch.arange(n) // cell
        view = [1] * len(spatial)
        view[d] = n
        ids = ids * (-(-n // cell)) + cells.view(view)
    return ids[None, None]


@pytest.mark.parametrize("rank", [2, 3])
def test_feature_ablation_equals_captum(rank: int) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=3, size=13 if rank == 2 else 7)
    target = torch.tensor([1, 0, 3])
    gen = torch.Generator().manual_seed(5)
    masks = [
        grid(tuple(x.shape), 4),
        torch.randint(0, 6, (3, 1, *x.shape[2:]), generator=gen),  # per item, ids 0-5
        torch.randint(-2, 4, (1, 3, *x.shape[2:]), generator=gen),  # per channel
        torch.randint(0, 3, (1, 1, *x.shape[2:-1], 1), generator=gen),  # broadcast over W
    ]
    for mask in masks:
        for baselines, per_eval in ((0, 1), (0.5, 3), (other(x), 16)):
            theirs = FeatureAblation(model).attribute(
                x,
                feature_mask=mask,
                baselines=baselines,
                target=target,
                perturbations_per_eval=per_eval,
            )
            ours = feature_ablation(
                model,
                x,
                target,
                feature_mask=mask,
                baselines=baselines,
                batch_size=per_eval * 3,
            )
            close(ours, theirs)


def test_given_initial_scores_skip_the_plain_inputs() -> None:
    """Scores of the plain inputs the caller has (a prediction pass) are not computed
    again: only the perturbed inputs run, and the map is the same; a wrong shape is
    refused."""
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=12)
    target = torch.tensor([1, 0])
    mask = grid(tuple(x.shape), 4)  # 9 features per item
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[0]))
    try:
        theirs = feature_ablation(model, x, target, feature_mask=mask, batch_size=64)
        assert seen == [2 + 18]
        seen.clear()
        with torch.no_grad():
            initial = model(x)[torch.arange(2), target]
        seen.clear()
        ours = feature_ablation(model, x, target, feature_mask=mask, batch_size=64, initial=initial)
        assert seen == [18]
    finally:
        handle.remove()
    close(ours, theirs)
    with pytest.raises(InvalidParamsError, match="expected \\(2,\\)"):
        feature_ablation(model, x, target, feature_mask=mask, batch_size=64, initial=initial[:1])


def test_resnet18_equals_captum() -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(2, 3, 40, 40)
    target = torch.tensor([3, 7])
    window, strides = (3, 16, 16), (3, 8, 8)
    theirs = Occlusion(model).attribute(
        x, sliding_window_shapes=window, strides=strides, target=target, perturbations_per_eval=8
    )
    ours = occlusion(model, x, target, window=window, strides=strides, batch_size=16)
    close(ours, theirs)
    mask = grid(tuple(x.shape), 10)
    theirs = FeatureAblation(model).attribute(
        x, feature_mask=mask, baselines=0.5, target=target, perturbations_per_eval=8
    )
    ours = feature_ablation(model, x, target, feature_mask=mask, baselines=0.5, batch_size=16)
    close(ours, theirs)


# -- through explain ----------------------------------------------------------------------


@pytest.mark.parametrize("rank", [2, 3])
def test_explain_occlusion_equals_captum_for_any_pass_size(
    rank: int, engine_only: Callable[..., None]
) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=3, size=14 if rank == 2 else 8)
    target = torch.tensor([2, 0, 1])
    window = (3, *(5,) * rank)
    strides = (3, *(3,) * rank)
    theirs = Occlusion(model).attribute(
        x, sliding_window_shapes=window, strides=strides, baselines=torch.zeros_like(x),
        target=target, perturbations_per_eval=32,
    )  # fmt: skip
    engine_only(Occlusion, FeatureAblation)
    runs = [{"auto_batch": True}] + [{"perturbations_per_eval": n} for n in (1, 5, 32)]
    for kwargs in runs:
        ours = explain(model, x, "captum.occlusion", target, window=5, strides=3, **kwargs)
        close(ours.attributions, theirs)


def test_explain_feature_ablation_equals_captum(engine_only: Callable[..., None]) -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=16)
    target = torch.tensor([1, 3])
    mask = grid(tuple(x.shape), 4).expand(2, 1, 16, 16)
    theirs = FeatureAblation(model).attribute(
        x, feature_mask=mask, baselines=other(x), target=target, perturbations_per_eval=3
    )
    engine_only(Occlusion, FeatureAblation)
    for kwargs in ({"auto_batch": True}, {"perturbations_per_eval": 3}, {}):
        ours = explain(
            model, x, "captum.feature_ablation", target, grid_cell=4, baselines=other(x), **kwargs
        )
        close(ours.attributions, theirs)


def test_planned_passes_in_both_layouts_equal_captum(engine_only: Callable[..., None]) -> None:
    """Enough windows for the planner to measure: pass sizes climb and channels-last is
    tried on the same buffer."""
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=32)
    target = torch.tensor([0, 1])
    theirs = Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2), target=target,
        baselines=torch.zeros_like(x),
    )  # fmt: skip
    engine_only(Occlusion, FeatureAblation)
    ours = explain(model, x, "captum.occlusion", target, window=2, strides=2, auto_batch=True)
    # channels-last convolutions round the scores (about 0.3) differently: a few ulps
    close(ours.attributions, theirs, atol=1e-6)
    assert ours.extras["pass_plan"]["inputs_per_pass"] >= 1


@pytest.mark.parametrize("rank", [2, 3])
def test_segmentation_equals_captum_on_the_wrapped_model(
    rank: int, engine_only: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal maps, and after the first pass (whose scores the job checks in full) the
    passes reduce only the target's class (``MultiClassScores.class_scores``)."""
    reduced: list[int] = []
    one_class = MultiClassScores.class_scores

    def spy(self: MultiClassScores, out: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        reduced.append(out.shape[0])
        return one_class(self, out, classes)

    monkeypatch.setattr(MultiClassScores, "class_scores", spy)
    model = tiny_model("segmentation", rank)
    x = tiny_input("segmentation", rank)
    wrapped = ScoreModel(model, MultiClassScores())
    target = torch.tensor([0, 0])  # class 0 wins pixels in both ranks
    window = (1, *(4,) * rank)
    theirs = Occlusion(wrapped).attribute(
        x, sliding_window_shapes=window, strides=(1, *(2,) * rank),
        baselines=torch.zeros_like(x), target=target, perturbations_per_eval=32,
    )  # fmt: skip
    mask = grid(tuple(x.shape), 4)
    theirs_fa = FeatureAblation(wrapped).attribute(
        x, feature_mask=mask, baselines=torch.zeros_like(x), target=target,
        perturbations_per_eval=32,
    )  # fmt: skip
    engine_only(Occlusion, FeatureAblation)
    for kwargs in ({}, {"auto_batch": True}):
        ours = explain(
            model, x, "captum.occlusion", 0, task="segmentation", window=4, strides=2, **kwargs
        )
        close(ours.attributions, theirs)
        ours = explain(
            model, x, "captum.feature_ablation", 0, task="segmentation", grid_cell=4, **kwargs
        )
        close(ours.attributions, theirs_fa)
    assert reduced  # the passes after the first took the one-class reduction


# -- the buffer ----------------------------------------------------------------------------


def test_passes_reuse_one_buffer() -> None:
    """Every full pass runs on the same storage: no input-sized tensor per perturbation or
    per pass (the last, shorter pass is a view of the same buffer)."""
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=2, size=16)
    occlusion(model, x, torch.tensor([0, 1]), window=(3, 4, 4), strides=(3, 2, 2), batch_size=8)
    # the 2 inputs themselves ride in the first pass, then 49 windows x 2 items
    assert model.sizes == [8] * 12 + [4]
    assert len(set(model.pointers)) == 1


def test_any_order_of_pass_sizes_and_layouts_builds_the_right_inputs(
    monkeypatch: pytest.MonkeyPatch, irregular_passes: list[tuple[int, bool]]
) -> None:
    """Whatever sizes and layouts the planner asks for, including a pass asked for twice
    (its layout check), the maps stay Captum's; the buffer grows, never per pass."""
    calls = irregular_passes
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=3, size=12)
    target = torch.tensor([3, 1, 2])
    built: list[ablation._Buffer] = []
    init = ablation._Buffer.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(ablation._Buffer, "__init__", spy)
    theirs = Occlusion(model).attribute(
        x, sliding_window_shapes=(2, 3, 3), strides=(1, 2, 2), baselines=0.5, target=target
    )
    ours = occlusion(
        model, x, target, window=(2, 3, 3), strides=(1, 2, 2), baselines=0.5, batch_size=4
    )
    close(ours, theirs)
    assert len(calls) > 10 and built[0].allocations == 3  # 5, grown to 7, then to 16
    mask = torch.randint(0, 9, (3, 1, 12, 12), generator=torch.Generator().manual_seed(1))
    theirs = FeatureAblation(model).attribute(
        x, feature_mask=mask, baselines=other(x), target=target
    )
    ours = feature_ablation(model, x, target, feature_mask=mask, baselines=other(x), batch_size=4)
    close(ours, theirs)


def test_calls_the_engine_does_not_cover_go_to_captum() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2)
    algorithm = Occlusion(model)
    own = frozenset({"sliding_window_shapes", "strides"})
    plain = {
        "sliding_window_shapes": (3, 4, 4),
        "strides": (3, 4, 4),
        "target": torch.tensor([0, 1]),
    }
    assert engine_batch(algorithm, x, {**plain, "perturbations_per_eval": 4}, own) == 8
    assert engine_batch(algorithm, (x,), plain, own) is None  # a tuple of inputs
    assert engine_batch(algorithm, x, {**plain, "target": [0, 1]}, own) is None  # a list
    assert engine_batch(algorithm, x, {**plain, "additional_forward_args": (1,)}, own) is None
    assert engine_batch(algorithm, x, {**plain, "baselines": torch.zeros(5)}, own) is None
    # the method's run hands such a call to Captum unchanged
    from esegeta_captum.primary import Occlusion as Method

    kwargs = {**plain, "target": [0, 1], "baselines": 0.0}
    ours = Method().run(algorithm, x, kwargs, None)
    theirs = Occlusion(model).attribute(x, **kwargs)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("captum.occlusion", {"window": 16, "strides": 16}),
        ("captum.feature_ablation", {"feature_mask": "grid", "grid_cell": 16}),
        ("captum.lime", {"n_samples": 24, "alpha": 0.0}),
    ],
)
def test_the_cpu_default_pass_size_on_a_volume_leaves_the_map_unchanged(
    method: str, params: dict
) -> None:
    """Left unset, perturbations_per_eval is 16 for a 32^3 RGB volume on the CPU (2^21
    input elements per pass); the map is the one 32 per pass gives."""
    model, x = tiny_model(rank=3), tiny_input(rank=3, batch=1, size=32)
    sized = explain(model, x, method, 0, seed=0, progress=False, **params)
    fixed = explain(
        model, x, method, 0, seed=0, progress=False, perturbations_per_eval=32, **params
    )
    assert sized.params.perturbations_per_eval == 16
    assert torch.equal(sized.attributions, fixed.attributions)


# -- the prediction pass's scores ----------------------------------------------------------

PLAIN_CALLS = [
    # (method, params, the plain scores each item's call reads instead of running)
    ("captum.occlusion", {"window": 4, "strides": 4}, 1),
    ("captum.feature_ablation", {"grid_cell": 4}, 1),
    ("captum.feature_permutation", {"grid_cell": 4}, 1),
    ("captum.shapley_value_sampling", {"grid_cell": 4, "n_samples": 3}, 3),  # order ends
]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize(("method", "params", "read"), PLAIN_CALLS)
def test_target_none_reads_the_plain_scores_from_the_prediction_pass(
    method: str,
    params: dict[str, Any],
    read: int,
    rank: int,
    task: str,
    engine_only: Callable[..., None],
) -> None:
    """With ``target=None`` the core's prediction pass has scored the plain inputs: the
    engine takes those scores instead of running the inputs again (Shapley value
    sampling: at the end of each order), so the call runs the inputs of a call with the
    predicted classes given (whose engine scores the plain inputs itself) plus the
    prediction pass, less what it read, and the maps are the same."""
    model = tiny_model(task, rank)
    x = tiny_input(task, rank, batch=2, size=12 if rank == 2 else 8)
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[0]))
    engine_only(Occlusion, FeatureAblation)
    try:
        explain(model, x, method, 0, task=task, progress=False, **params)  # probes once
        seen.clear()
        found = explain(model, x, method, None, task=task, seed=0, progress=False, **params)
        predicted = sum(seen)
        seen.clear()
        given = explain(model, x, method, found.target, task=task, seed=0, progress=False, **params)
        assert predicted == sum(seen) + 2 - read * 2  # batch 2: the plain inputs ran again
    finally:
        handle.remove()
    close(found.attributions, given.attributions, atol=1e-5)


def test_the_plain_scores_serve_one_call_on_the_same_inputs() -> None:
    """Under mixed precision (no prediction pass of the method's) and patch by patch
    (another input than the one the prediction pass scored), the engine scores the
    plain inputs itself."""
    from esegeta_captum.primary import Occlusion as OcclusionMethod

    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=12)
    method = OcclusionMethod()
    with torch.no_grad():
        scores = method.prediction_pass(model, x, method.Params(window=4, strides=4))
    assert scores is not None and scores.shape == (2, 4)
    target = torch.tensor([1, 2])
    assert method.plain_scores(x.clone(), target) is None  # another tensor
    with torch.no_grad():
        method.prediction_pass(model, x, method.Params(window=4, strides=4))
    got = method.plain_scores(x, target)
    assert got is not None
    torch.testing.assert_close(got, scores[torch.arange(2), target])
    assert method.plain_scores(x, target) is None  # served once


def test_target_none_on_real_architectures_equals_captum() -> None:
    """A torchvision ResNet-18 (2D, batch 2) and a MONAI DenseNet (3D): with
    ``target=None`` occlusion and Shapley value sampling read the plain scores from the
    prediction pass, and equal Captum given the predicted classes."""
    tv = pytest.importorskip("torchvision")
    nets = pytest.importorskip("monai.networks.nets")
    from captum.attr import ShapleyValueSampling

    torch.manual_seed(0)
    cases = [
        (tv.models.resnet18(weights=None, num_classes=5).eval(), torch.rand(2, 3, 32, 32)),
        (
            nets.DenseNet(
                spatial_dims=3, in_channels=1, out_channels=3, init_features=8,
                growth_rate=8, block_config=(2, 2),
            ).eval(),
            torch.rand(2, 1, 16, 16, 16),
        ),
    ]  # fmt: skip
    for model, x in cases:
        rank = x.ndim - 2
        ours = explain(model, x, "captum.occlusion", None, window=8, strides=8, progress=False)
        t = ours.target
        window = (x.shape[1], *(8,) * rank)
        theirs = Occlusion(model).attribute(
            x, sliding_window_shapes=window, strides=window, target=t, perturbations_per_eval=8
        )
        close(ours.attributions, theirs, atol=1e-5)
        sampled = explain(
            model, x, "captum.shapley_value_sampling", None, grid_cell=8, n_samples=2, seed=3,
            progress=False,
        )  # fmt: skip
        mask = grid(tuple(x.shape), 8)
        torch.manual_seed(3)  # as explain(seed=3): torch, then NumPy from one draw
        torch.randint(0, 2**31 - 1, ())
        theirs = ShapleyValueSampling(model).attribute(
            x, feature_mask=mask, n_samples=2, target=sampled.target, perturbations_per_eval=8
        )
        close(sampled.attributions, theirs, atol=1e-5)

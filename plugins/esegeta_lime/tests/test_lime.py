"""Behaviour of ``lime.lime``: 3D supervoxels, segmentation algorithms and channel
counts, batched model calls, seeding, outputs and bad parameters."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn

from esegeta_core import InvalidParamsError, explain
from esegeta_core.feature_masks import grid_mask
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.testing.blas import blas_threads, spy_blas_threads


@pytest.fixture
def fast(fast_params: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """The parameters that keep ``lime.lime`` fast."""
    return fast_params["lime.lime"]


def _blobs(rank: int, channels: int, size: int) -> torch.Tensor:
    """A smooth batch of 2 (bright blob on a ramp) that segmentation algorithms can cut."""
    axes = torch.meshgrid(*[torch.linspace(-1, 1, size)] * rank, indexing="ij")
    radius = sum(a**2 for a in axes)
    items = []
    for shift in (0.0, 0.3):
        blob = (radius < 0.4 + shift).float() * 0.7 + 0.3 * (axes[-1] + 1) / 2
        items.append(torch.stack([blob * (1 - 0.1 * c) for c in range(channels)]))
    return torch.stack(items)


def _check_outputs(e, x: torch.Tensor) -> None:
    b, _, *spatial = x.shape
    seg = e.extras["segments"]
    assert seg.shape == (b, 1, *spatial) and seg.dtype == torch.long
    for key in ("positive_mask", "negative_mask"):
        assert e.extras[key].shape == (b, 1, *spatial) and e.extras[key].dtype == torch.bool
    assert not bool((e.extras["positive_mask"] & e.extras["negative_mask"]).any())
    for i in range(b):
        weights = e.extras["segment_weights"][i]
        assert weights.numel() == int(seg[i].max()) + 1
        expected = weights.float()[seg[i, 0]]
        assert torch.allclose(e.attributions[i], expected.expand_as(e.attributions[i]))
        k = e.params.num_features
        for key, signed in (("positive_mask", weights), ("negative_mask", -weights)):
            top = signed.argsort(descending=True)[:k]
            chosen = torch.zeros_like(weights, dtype=torch.bool)
            chosen[top[signed[top] > 0]] = True
            assert torch.equal(e.extras[key][i, 0], chosen[seg[i, 0]])
    for key in ("intercept", "score", "local_pred"):
        assert e.extras[key].shape == (b,)


def test_3d_uses_real_supervoxels() -> None:
    model = tiny_model("segmentation", 3)
    x = _blobs(3, 1, 8)
    e = explain(
        model, x, "lime.lime", task="segmentation", seed=0, num_samples=32, n_segments=6,
        compactness=1.0, feature_selection="none", num_features=64,
    )  # fmt: skip
    assert e.attributions.shape == x.shape
    seg = e.extras["segments"]
    assert int(seg[0].max()) + 1 > 2, "several supervoxels"
    # a supervoxel spans several slices: not a slice-by-slice segmentation
    for i in range(2):
        spans = [seg[i, 0, :, ...].eq(s).any(dim=(1, 2)).sum() for s in seg[i].unique()]
        assert max(spans) > 1
    _check_outputs(e, x)


def test_3d_user_mask() -> None:
    model = tiny_model("classification", 3)
    x = tiny_input("classification", 3)
    mask = grid_mask(x, 4)  # (B, 1, 8, 8, 8), 8 cells per item
    e = explain(
        model, x, "lime.lime", segmentation=mask, num_samples=24, num_features=8,
        feature_selection="none", seed=0,
    )  # fmt: skip
    assert torch.equal(e.extras["segments"], mask)
    _check_outputs(e, x)


@pytest.mark.parametrize("algorithm", ["quickshift", "slic", "felzenszwalb"])
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_2d_algorithms_and_channel_counts(algorithm: str, channels: int) -> None:
    model = tiny_model("classification", 2, in_channels=channels)
    x = _blobs(2, channels, 16)
    knobs = {
        "quickshift": {"kernel_size": 2.0, "max_dist": 6.0},
        "slic": {"n_segments": 8},
        "felzenszwalb": {"scale": 50.0, "min_size": 8},
    }[algorithm]
    e = explain(
        model, x, "lime.lime", segmentation=algorithm, num_samples=16, seed=0,
        feature_selection="none", **knobs,
    )  # fmt: skip
    assert e.attributions.shape == x.shape
    assert int(e.extras["segments"][0].max()) + 1 >= 2
    _check_outputs(e, x)


class _Recorder(nn.Module):
    """Records the batch size and device of every forward call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, torch.device]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], x.device))
        return self.model(x)


def test_samples_are_batched_through_the_model(fast: Mapping[str, Any]) -> None:
    model = _Recorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2)
    explain(model, x, "lime.lime", **{**fast, "num_samples": 40}, batch_size=16, seed=0)
    sizes = [n for n, _ in model.calls]
    # the memory check measures one item (batches of 16 copies are more than the batch
    # of 2), explain() scores the batch once; then per item: 16 + 16 + 8
    assert sizes == [1, 2, 16, 16, 8, 16, 16, 8]
    assert all(d == x.device for _, d in model.calls)


def test_seeding(fast: Mapping[str, Any]) -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2)

    def run(**kw):
        return explain(model, x, "lime.lime", **fast, **kw)

    assert torch.equal(run(random_seed=3).attributions, run(random_seed=3).attributions)
    assert not torch.equal(run(random_seed=3).attributions, run(random_seed=4).attributions)
    a, b = run(seed=1), run(seed=1)
    assert a.extras["random_seed"] == b.extras["random_seed"]
    assert torch.equal(a.attributions, b.attributions)
    assert run(seed=2).extras["random_seed"] != a.extras["random_seed"]


def test_positive_only_drops_negative_weights() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2)
    mask = grid_mask(x[:1], 4)[0, 0]
    common = dict(segmentation=mask, num_samples=32, feature_selection="none", seed=0)
    both = explain(model, x, "lime.lime", **common)
    pos = explain(model, x, "lime.lime", positive_only=True, **common)
    assert bool((both.attributions < 0).any()), "the test needs negative weights"
    assert torch.equal(pos.attributions, both.attributions.clamp_min(0))
    assert torch.equal(pos.extras["negative_mask"], both.extras["negative_mask"])


def test_masks_hold_top_num_features_and_respect_min_weight() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2)
    mask = grid_mask(x[:1], 4)[0, 0]
    common = dict(segmentation=mask, num_samples=32, feature_selection="none", seed=0)
    e = explain(model, x, "lime.lime", num_features=2, **common)
    for i in range(2):
        weights = e.extras["segment_weights"][i]
        for key, order in (("positive_mask", -weights), ("negative_mask", weights)):
            top = {int(s) for s in order.argsort()[:2] if order[s] < 0}
            assert top, "the test needs weights of both signs"
            assert set(mask[e.extras[key][i, 0]].unique().tolist()) == top
    big = float(max(w.abs().max() for w in e.extras["segment_weights"]))
    e = explain(model, x, "lime.lime", num_features=2, min_weight=big, **common)
    assert not bool(e.extras["positive_mask"].any() or e.extras["negative_mask"].any())


def test_hide_color_is_used() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2)
    mask = grid_mask(x[:1], 4)[0, 0]
    common = dict(segmentation=mask, num_samples=16, feature_selection="none", seed=0)
    a = explain(model, x, "lime.lime", hide_color=0.0, **common).attributions
    b = explain(model, x, "lime.lime", hide_color=None, **common).attributions
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 1}, "num_samples"),
        ({"num_features": 0}, "num_features"),
        ({"batch_size": 0}, "batch_size"),
        ({"segmentation": "watershed"}, "segmentation"),
        ({"segmentation": "quickshift", "n_segments": 8}, "n_segments"),
        ({"segmentation": torch.zeros(16, 16, dtype=torch.long), "sigma": 1.0}, "user"),
    ],
)
def test_bad_params_are_rejected(params: dict, words: str) -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2)
    with pytest.raises(InvalidParamsError, match=words):
        explain(model, x, "lime.lime", **params)


def test_user_mask_with_the_wrong_shape() -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2)
    with pytest.raises(InvalidParamsError, match="does not fit"):
        explain(model, x, "lime.lime", segmentation=torch.zeros(8, 8, dtype=torch.long))


@pytest.mark.parametrize("algorithm", ["quickshift", "felzenszwalb"])
def test_2d_only_algorithms_on_3d(algorithm: str) -> None:
    model = tiny_model("classification", 3)
    x = tiny_input("classification", 3)
    with pytest.raises(InvalidParamsError, match="slic"):
        explain(model, x, "lime.lime", segmentation=algorithm, num_samples=4)


def test_segmentation_model_with_raw_scores(fast: Mapping[str, Any]) -> None:
    model = tiny_model("segmentation", 2)
    x = _blobs(2, 1, 16)
    e = explain(
        model, x, "lime.lime", task="segmentation", target=1, use_softmax=False,
        seed=0, **fast,
    )  # fmt: skip
    assert e.attributions.shape == x.shape
    assert bool(e.extras["score"].isfinite().all())
    _check_outputs(e, x)


def test_segmentation_is_fit_on_raw_scores_by_default(fast: Mapping[str, Any]) -> None:
    """A segmentation's class scores sum logits over every pixel (their softmax is 0
    or 1): use_softmax=None fits the raw sums there, the softmax for a classifier, and
    says which in the extras; use_softmax=True is refused on a segmentation."""
    model = tiny_model("segmentation", 2)
    x = _blobs(2, 1, 16)
    kw = {"task": "segmentation", "target": 1, "seed": 0, **fast}
    auto = explain(model, x, "lime.lime", **kw)
    raw = explain(model, x, "lime.lime", use_softmax=False, **kw)
    assert auto.extras["use_softmax"] is False and auto.params.use_softmax is None
    torch.testing.assert_close(auto.attributions, raw.attributions, rtol=0, atol=0)
    with pytest.raises(InvalidParamsError, match=r"lime.*use_softmax=False"):
        explain(model, x, "lime.lime", use_softmax=True, **kw)
    classifier, image = tiny_model("classification", 2), tiny_input("classification", 2)
    plain = explain(classifier, image, "lime.lime", target=1, seed=0, **fast)
    soft = explain(classifier, image, "lime.lime", target=1, seed=0, use_softmax=True, **fast)
    assert plain.extras["use_softmax"] is True
    torch.testing.assert_close(plain.attributions, soft.attributions, rtol=0, atol=0)


def test_import_is_light() -> None:
    code = (
        "import sys, esegeta_lime; "
        "print(sorted(m for m in ('lime', 'skimage', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_slic_on_pixel_noise_smooths_instead_of_one_segment(caplog) -> None:
    """SLIC (Lab, no smoothing) merges a noisy RGB image into one segment; the plugin
    retries with sigma=1 and says so, and an explicit sigma is left alone."""
    model = tiny_model("classification", 2, in_channels=3)
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("WARNING", logger="esegeta_lime.segmentation"):
        e = explain(model, x, "lime.lime", n_segments=30, num_samples=16, seed=0)
    assert int(e.extras["segments"][0].max()) + 1 >= 10
    assert "retrying with sigma=1" in caplog.text
    caplog.clear()
    # an explicit sigma is not retried: one segment, refused (a constant map)
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with (
        caplog.at_level("WARNING", logger="esegeta_lime.segmentation"),
        pytest.raises(InvalidParamsError, match=r"item\(s\) \[0\] in one segment.*now 30"),
    ):
        explain(model, x, "lime.lime", n_segments=30, num_samples=16, seed=0, sigma=0.0)
    assert "retrying" not in caplog.text
    assert len(calls) <= 1  # refused before the samples' passes (the probe aside)


def test_an_item_in_one_given_segment_is_refused() -> None:
    """Segment ids given with a single segment for an item: the map would be constant."""
    model, x = tiny_model("classification", 2), tiny_input("classification", 2, size=16)
    ids = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    ids[0, :, :, 8:] = 1  # item 0 in two segments, item 1 in one
    with pytest.raises(InvalidParamsError, match=r"item\(s\) \[1\] in one segment.*at least two"):
        explain(model, x, "lime.lime", 0, segmentation=ids, num_samples=16)
    ids[1, :, 8:] = 3
    e = explain(model, x, "lime.lime", 0, segmentation=ids, num_samples=16, progress=False)
    assert e.attributions.shape[0] == 2


def test_auto_batch_runs_the_samples_through_the_pass_planner_with_the_same_map() -> None:
    model, x = tiny_model("classification", 2), tiny_input("classification", 2, batch=1, size=16)
    args = {"segmentation": "slic", "n_segments": 16, "num_samples": 200, "seed": 3}
    fixed = explain(model, x, "lime.lime", 1, batch_size=7, **args)
    planned = explain(model, x, "lime.lime", 1, auto_batch=True, **args)
    torch.testing.assert_close(planned.attributions, fixed.attributions, rtol=1e-4, atol=1e-6)
    # the params record the plan's passes, not the count handed to the planner
    assert planned.params.batch_size == planned.extras["pass_plan"]["inputs_per_pass"] >= 1


def test_on_a_volume_the_cpu_default_pass_size_leaves_the_map_unchanged() -> None:
    """Left unset, batch_size is 16 for a 32^3 RGB volume on the CPU (2^21 input elements
    per pass); the samples do not depend on it, so the map is the one 64 gives."""
    model, x = tiny_model(rank=3), tiny_input(rank=3, batch=1, size=32)
    kw = {"num_samples": 24, "sigma": 1.0, "seed": 0, "progress": False}
    sized = explain(model, x, "lime.lime", 0, **kw)
    fixed = explain(model, x, "lime.lime", 0, batch_size=64, **kw)
    assert sized.params.batch_size == 16
    assert torch.equal(sized.attributions, fixed.attributions)


def test_the_surrogate_fits_run_on_one_blas_thread(monkeypatch, fast):
    """Each item's distances and ridge fits run with numpy's BLAS on one thread, and the
    threads are as before after the call: a multi-threaded OpenBLAS call leaves its
    workers spinning against the next item's passes (esegeta_core.runtime.host_blas)."""
    from lime.lime_base import LimeBase  # scikit-learn's and scipy's BLAS are loaded

    seen = spy_blas_threads(monkeypatch, LimeBase, "explain_instance_with_data")
    before = blas_threads()
    x = tiny_input(batch=3, seed=1)
    explain(tiny_model(seed=0), x, "lime.lime", target=0, **fast, seed=0)
    assert len(seen) == 3  # one surrogate per item
    assert all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before

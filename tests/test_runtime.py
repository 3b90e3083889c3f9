"""Runtime features applied by explain(): patches, mixed precision, batch sizes."""

from __future__ import annotations

import pytest
import torch

import esegeta_core as ec
from esegeta_core.runtime.patches import PatchSpec, count_patches
from esegeta_core.testing import tiny_input, tiny_model


def _gxi(model, x, target):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return g * x.detach()


def _seg(rank, size):
    return tiny_model("segmentation", rank), tiny_input("segmentation", rank, size=size)


@pytest.mark.parametrize("rank", [2, 3])
def test_non_overlapping_patches_equal_explaining_each_patch(demo, rank):
    model, x = _seg(rank, 16)
    e = ec.explain(
        model,
        x,
        "demo.grad_x_input",
        target=1,
        task="segmentation",
        patches={"size": 8, "mode": "crop"},
        progress=False,
    )
    assert e.attributions.shape == x.shape
    wrapped = ec.ScoreModel(model, ec.MultiClassScores())
    expected = torch.zeros_like(x)
    t = torch.ones(2, dtype=torch.long)
    corners = [
        (i, j, k) for i in (0, 8) for j in (0, 8) for k in ((0, 8) if rank == 3 else (None,))
    ]
    for c in corners:
        sl = tuple(slice(o, o + 8) for o in c if o is not None)
        idx = (slice(None), slice(None), *sl)
        expected[idx] = _gxi(wrapped, x[idx], t)
    assert torch.allclose(e.attributions, expected, atol=1e-6)


def test_overlapping_patches_are_averaged(demo):
    model, x = _seg(2, 12)
    spec = PatchSpec(size=8, overlap=4, mode="average")
    e = ec.explain(
        model, x, "demo.grad_x_input", target=2, task="segmentation", patches=spec, progress=False
    )
    wrapped = ec.ScoreModel(model, ec.MultiClassScores())
    t = torch.full((2,), 2, dtype=torch.long)
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    for i in (0, 4):
        for j in (0, 4):
            idx = (slice(None), slice(None), slice(i, i + 8), slice(j, j + 8))
            total[idx] += _gxi(wrapped, x[idx], t)
            count[idx] += 1
    assert count_patches(x[0], spec) == 4
    assert torch.allclose(e.attributions, total / count, atol=1e-6)


def test_hann_mode_and_batched_patches_run(demo):
    model, x = _seg(3, 12)
    a = ec.explain(
        model,
        x,
        "demo.grad_x_input",
        target=1,
        task="segmentation",
        patches={"size": 8, "overlap": 4, "mode": "hann", "batch_size": 4},
        progress=False,
    ).attributions
    b = ec.explain(
        model,
        x,
        "demo.grad_x_input",
        target=1,
        task="segmentation",
        patches={"size": 8, "overlap": 4, "mode": "hann", "batch_size": 1},
        progress=False,
    ).attributions
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-6)


def test_patch_mode_default_target_sums_scores_over_patches(demo):
    model, x = _seg(3, 16)
    e = ec.explain(
        model, x, "demo.grad_x_input", task="segmentation", patches={"size": 8}, progress=False
    )
    wrapped = ec.ScoreModel(model, ec.MultiClassScores())
    totals = torch.zeros(2, 3)
    for i in (0, 8):
        for j in (0, 8):
            for k in (0, 8):
                with torch.no_grad():
                    totals += wrapped(x[:, :, i : i + 8, j : j + 8, k : k + 8])
    assert torch.equal(e.target, totals.argmax(1))


def test_region_target_in_patch_mode_leaves_other_patches_empty(demo):
    model, x = _seg(2, 16)
    mask = torch.zeros(16, 16)
    mask[2:6, 2:6] = 1
    e = ec.explain(
        model,
        x,
        "demo.grad_x_input",
        target=ec.Region(1, mask),
        task="segmentation",
        patches={"size": 8, "mode": "crop"},
        progress=False,
    )
    a = e.attributions
    assert a[..., 8:, :].abs().sum() == 0 and a[..., :, 8:].abs().sum() == 0
    assert a[..., :8, :8].abs().sum() > 0


def test_layer_maps_are_upsampled_per_patch(demo):
    model, x = _seg(3, 16)
    e = ec.explain(
        model,
        x,
        "demo.layer_mean",
        task="segmentation",
        layer="encoder.conv2",
        patches={"size": 8},
        progress=False,
    )
    assert e.attributions.shape == (2, 1, 16, 16, 16)


def test_small_inputs_skip_patching(demo):
    model, x = _seg(2, 8)
    a = ec.explain(
        model, x, "demo.grad_x_input", target=1, task="segmentation", patches={"size": 16}
    ).attributions
    b = ec.explain(model, x, "demo.grad_x_input", target=1, task="segmentation").attributions
    assert torch.equal(a, b)


def test_bad_patch_specs(demo):
    model, x = _seg(3, 16)
    with pytest.raises(ec.InvalidParamsError, match="even overlap"):
        ec.explain(
            model, x, "demo.grad_x_input", task="segmentation", patches={"size": 8, "overlap": 3}
        )
    with pytest.raises(ec.InvalidParamsError, match="3 values"):
        ec.explain(model, x, "demo.grad_x_input", task="segmentation", patches={"size": (8, 8)})
    with pytest.raises(ec.InvalidParamsError, match="invalid patches"):
        ec.explain(model, x, "demo.grad_x_input", task="segmentation", patches={"sise": 8})


# --- mixed precision -------------------------------------------------------------


def test_bf16_on_cpu_returns_float32_close_to_float32(demo):
    model, x = tiny_model(), tiny_input()
    ref = ec.explain(model, x, "demo.grad_x_input", target=1).attributions
    amp = ec.explain(model, x, "demo.grad_x_input", target=1, amp="bf16").attributions
    assert amp.dtype == torch.float32
    corr = torch.corrcoef(torch.stack([ref.flatten(), amp.flatten()]))[0, 1]
    assert corr > 0.95


def test_non_finite_amp_result_is_recomputed_in_float32(demo, caplog):
    model, x = tiny_model(), tiny_input()
    e = ec.explain(model, x, "demo.amp_fragile", target=1, amp="bf16")
    assert torch.isfinite(e.attributions).all()
    assert torch.allclose(e.attributions, _gxi(model, x, e.target), atol=1e-6)
    assert any("recomputing in float32" in r.getMessage() for r in caplog.records)


def test_fp16_needs_cuda(demo):
    with pytest.raises(ec.InvalidParamsError, match="CUDA"):
        ec.explain(tiny_model(), tiny_input(), "demo.grad_x_input", amp="fp16")


# --- batch sizes -----------------------------------------------------------------


def test_out_of_memory_halves_batch_params_and_retries(demo, caplog):
    e = ec.explain(tiny_model(), tiny_input(), "demo.chunky", chunk=64, oom_above=10)
    assert e.params.chunk == 8
    assert sum("out of memory" in r.getMessage() for r in caplog.records) == 3


def test_batch_params_that_decide_a_random_draw_are_left_by_auto_batch(demo, caplog):
    """``Explainer.drawn_with``: ``auto_batch`` leaves such a parameter as it is (the
    draw, and so the map, would change), and an out-of-memory retry that halves it
    says the map was drawn differently."""
    model, x = tiny_model(), tiny_input()
    with caplog.at_level("INFO"):
        auto = ec.explain(model, x, "demo.drawn_chunky", auto_batch=True)
    assert auto.params.chunk == 64
    assert any("its random draw depends on them" in r.getMessage() for r in caplog.records)
    caplog.clear()
    e = ec.explain(model, x, "demo.drawn_chunky", chunk=64, oom_above=40)
    assert e.params.chunk == 32
    warned = [r.getMessage() for r in caplog.records if "changes its random draw" in r.getMessage()]
    assert len(warned) == 1 and "chunk=64" in warned[0]


def test_out_of_memory_at_batch_one_is_reported(demo):
    with pytest.raises(ec.MethodFailedError, match="out of memory"):
        ec.explain(tiny_model(), tiny_input(), "demo.chunky", chunk=4, oom_above=0)


def test_auto_batch_fills_unset_batch_params_only(demo):
    model, x = tiny_model(), tiny_input()
    auto = ec.explain(model, x, "demo.chunky", auto_batch=True)
    assert auto.params.chunk > 64  # tiny model: the cap, far above the default
    kept = ec.explain(model, x, "demo.chunky", auto_batch=True, chunk=3)
    assert kept.params.chunk == 3

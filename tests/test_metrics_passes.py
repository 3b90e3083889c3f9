"""batch_size="auto" for the perturbation curves: measured pass size and memory layout.

The choice itself depends on the machine, so these tests pin what must hold whatever
is chosen (same curves, layouts only where they agree, the model left alone, the
measurement cached) and drive the choosing logic with a scorer whose cost per input is
known.
"""

from __future__ import annotations

import gc
import time
import weakref

import pytest
import torch
from torch import nn

from esegeta_core import InvalidParamsError
from esegeta_core.evaluation import aopc, deletion, insertion
from esegeta_core.model_state import count_hooks
from esegeta_core.runtime import passes
from esegeta_core.runtime.passes import (
    AUTO_MAX,
    CLIMB_START,
    PassPlan,
    memory_format,
    run_passes,
)
from esegeta_core.testing.plans import fresh_plans  # noqa: F401  (autouse)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


class ViewsFlat(nn.Module):
    """A LeNet-style head: ``.view`` on the conv output rejects channels-last strides."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


class WantsContiguous(ViewsFlat):
    """Refuses other layouts with its own check (a ValueError, not a torch error)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():
            raise ValueError("contiguous inputs only")
        return super().forward(x)


class ReadsMemory(nn.Module):
    """Reads its input's storage in contiguous order whatever the strides: its scores
    change with the memory layout, so channels-last must not be used for it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x[0].numel()
        return self.fc(x.as_strided((x.shape[0], n), (n, 1)))


# enough (step, image) pairs that "auto" tunes to the end: 16 images x 130 points
STEPS = 129


def long_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(16, 3, 16, 16, generator=gen), torch.rand(16, 1, 16, 16, generator=gen)


@pytest.mark.parametrize("model_fn", [small_cnn, ViewsFlat, WantsContiguous, ReadsMemory])
def test_auto_gives_the_curves_of_fixed_passes(model_fn):
    model = model_fn()
    x, a = long_case()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    auto = deletion(model, x, 1, a, steps=STEPS, perturbation="zero")
    fixed = deletion(model, x, 1, a, steps=STEPS, perturbation="zero", batch_size=64)
    assert torch.allclose(auto.curve, fixed.curve, atol=1e-6)
    # the model as found: mode, hooks, values, contiguous weights
    assert model.training and count_hooks(model) == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) and value.is_contiguous()
    ((key, plan),) = passes._plans[model].items()
    assert 4 <= plan.batch_size <= AUTO_MAX
    if model_fn is not small_cnn:  # rejected, or disagreeing (ReadsMemory)
        assert plan.channels_last is False
    else:  # whatever was chosen here: passes built channels-last give the same curves
        for forced in (PassPlan(16, True), PassPlan(40, True), PassPlan(64, False)):
            passes._plans[model][key] = forced
            again = deletion(model, x, 1, a, steps=STEPS, perturbation="zero")
            assert torch.allclose(again.curve, fixed.curve, atol=1e-6)


def test_auto_matches_fixed_for_aopc_and_insertion_in_3d():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    x, a = torch.rand(8, 2, 8, 8, 8), torch.rand(8, 1, 8, 8, 8)
    steps = 256  # 8 items x 257 points
    for metric in (aopc, insertion):
        kw = {"steps": steps} if metric is insertion else {"grid": 1, "steps": steps}
        auto = metric(model, x, 0, a, **kw)
        assert len(passes._plans) == 1  # measured
        fixed = metric(model, x, 0, a, batch_size=7, **kw)
        assert torch.allclose(auto.curve, fixed.curve, atol=1e-6)


def recorder(cost: dict[int, float] | None = None):
    """A chunk function that records its calls, returns each input's index as its score
    and (with ``cost``) sleeps ``cost[size]`` seconds per input."""
    calls = []

    def chunk(start, stop, channels_last):
        calls.append((stop - start, channels_last))
        if cost is not None:
            time.sleep(cost.get(stop - start, 0.0) * (stop - start))
        return torch.arange(start, stop, dtype=torch.float32)

    return chunk, calls


def test_every_input_is_scored_once_in_order():
    sample = torch.rand(4, 3, 8, 8)
    works = [(100, "auto"), (10, "auto"), (128, "auto"), (128 * 3 + 7, "auto")]
    for work, batch_size in [*works, (23, 5)]:
        passes.clear_plans()
        chunk, calls = recorder()
        scores = run_passes(work, chunk, batch_size, nn.Identity(), sample)
        assert torch.equal(scores, torch.arange(work, dtype=torch.float32))
        if batch_size == 5:
            assert calls == [(5, False)] * 4 + [(3, False)]
        elif work <= 16:  # shorter than the first pass
            assert calls == [(work, False)]
        else:  # short work climbs as far as it goes
            assert calls[0] == (16, False) and max(size for size, _ in calls) <= AUTO_MAX


def test_tuning_runs_on_the_work_and_is_cached():
    model, sample = nn.Identity(), torch.rand(4, 3, 8, 8)
    # 0.1 ms per input in passes of 16, either layout: no layout looks hopeless by noise
    chunk, calls = recorder({CLIMB_START: 1e-4})
    run_passes(128 * 8, chunk, "auto", model, sample)
    # a set-up pass, a few inputs computed both ways (channels-last first), then each
    # layout timed twice, once before the other and once after it
    start, few = CLIMB_START, passes.AGREE_INPUTS
    assert calls[:7] == [
        (start, False),
        (few, True),
        (few, False),
        (start, True),
        (start, False),
        (start, False),
        (start, True),
    ]
    (plan,) = passes._plans[model].values()
    calls.clear()
    run_passes(128 * 8, chunk, "auto", model, sample)
    assert set(calls) == {(plan.batch_size, plan.channels_last)}  # straight to the plan
    calls.clear()
    run_passes(128 * 8, chunk, "auto", model, sample[:, :1])  # one channel
    # no layout trial: set-up, the start timed twice, then the climb
    assert calls[:4] == [(start, False)] * 3 + [(2 * start, False)]
    assert all(not cl for _, cl in calls)
    assert len(passes._plans[model]) == 2


def test_the_fastest_pass_size_is_kept():
    # seconds per input: 2 ms in passes of 64, 1 ms in 32, 3 ms in 16, 8 and 4
    cost = {64: 2e-3, 32: 1e-3, 16: 3e-3, 8: 3e-3, 4: 3e-3}
    sample = torch.rand(3, 1, 4, 4)  # one channel: no layout trial
    chunk, calls = recorder(cost)
    model = nn.Identity()
    run_passes(128 * 4, chunk, "auto", model, sample)
    # 32 beats 16 (timed again after it), 64 loses to 32 (each timed twice): the climb
    # stops there, never over the metric's cap
    assert [size for size, _ in calls[:9]] == [16, 16, 16, 32, 32, 16, 64, 64, 32]
    assert list(passes._plans[model].values()) == [PassPlan(32)]
    assert set(size for size, _ in calls[8:-1]) == {32}
    cost.update({32: 4e-3, 8: 1e-3, 4: 5e-4, 2: 1e-3})  # smaller is faster: it halves
    chunk, calls = recorder(cost)
    model = nn.Identity()
    run_passes(128 * 4, chunk, "auto", model, sample)
    assert [size for size, _ in calls[:13]] == [16, 16, 16, 32, 32, 8, 8, 16, 4, 4, 8, 2, 2]
    assert list(passes._plans[model].values()) == [PassPlan(4)]


def test_batch_norm_in_training_mode_is_not_split_by_the_planner():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(2, 3, 16, 16))
    model.train()
    chunk, calls = recorder()
    run_passes(128 * 4, chunk, "auto", model, torch.rand(1, 3, 16, 16))
    assert set(size for size, _ in calls) == {AUTO_MAX}  # fixed passes, nothing measured
    assert model not in passes._plans


def test_plans_do_not_keep_models_alive():
    model = small_cnn()
    x, a = long_case()
    deletion(model, x, 1, a, steps=STEPS)
    assert len(passes._plans) == 1  # measured and cached
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert len(passes._plans) == 0


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "big", None])
def test_bad_batch_size(bad):
    x, a = long_case()
    with pytest.raises(InvalidParamsError, match="batch_size must be an integer >= 1 or 'auto'"):
        deletion(small_cnn(), x, 1, a, batch_size=bad)


@pytest.mark.parametrize(
    ("model_fn", "agrees"),
    [(small_cnn, True), (ViewsFlat, False), (WantsContiguous, False), (ReadsMemory, False)],
)
def test_channels_last_only_where_the_model_accepts_it_and_agrees(model_fn, agrees):
    model = model_fn()
    x, _ = long_case()

    def chunk(start, stop, channels_last):
        xs = x[start:stop].contiguous(memory_format=memory_format(channels_last, 4))
        return model(xs).max(1).values

    runner = passes._Runner(len(x), chunk, x.device)
    with torch.inference_mode():
        assert runner.layout_agrees(8) is agrees
    if model_fn in (ViewsFlat, WantsContiguous):  # refused: nothing else was run
        assert runner.done == 0
    else:  # the contiguous scores of the pass are kept
        assert runner.done == 8 and torch.equal(runner.outputs[0], chunk(0, 8, False))


class NaNUnderAutocast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out * float("nan") if torch.is_autocast_enabled("cpu") else out


def test_amp_bf16_curves_are_close_to_float32_and_planned_apart(caplog):
    model = small_cnn()
    x, a = long_case()
    full = deletion(model, x, 1, a, steps=STEPS)
    half = deletion(model, x, 1, a, steps=STEPS, amp="bf16")
    assert half.curve.dtype == torch.float32
    assert (half.curve - full.curve).abs().max() < 2e-2
    assert not torch.equal(half.curve, full.curve)  # it did run in bfloat16
    assert len(passes._plans[model]) == 2  # one plan per autocast dtype
    # a curve that is not finite under autocast is recomputed in float32
    nan_model = NaNUnderAutocast()
    with caplog.at_level("WARNING"):
        again = deletion(nan_model, x, 1, a, steps=10, amp="bf16")
    assert torch.allclose(again.curve, deletion(nan_model, x, 1, a, steps=10).curve)
    assert "recomputing in float32" in caplog.text


@pytest.mark.parametrize(
    ("amp", "match"),
    [("fp16", "Metric 'aopc': amp='fp16' needs a CUDA device"), ("fp8", "Metric 'aopc': amp must")],
)
def test_bad_amp(amp, match):
    x, a = long_case()
    with pytest.raises(InvalidParamsError, match=match):
        aopc(small_cnn(), x, 1, a, amp=amp)


def test_segmentation_wrappers_share_their_network_plan():
    from esegeta_core import ScoreModel
    from esegeta_core.targets import MultiClassScores

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    x, a = long_case()
    deletion(ScoreModel(net, MultiClassScores()), x, 1, a, steps=STEPS)
    assert list(passes._plans) == [net]  # kept with the network, not the wrapper
    (plan,) = passes._plans[net].values()
    passes._plans[net] = {k: PassPlan(8, plan.channels_last) for k in passes._plans[net]}
    calls = []
    handle = net.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        deletion(ScoreModel(net, MultiClassScores()), x, 1, a, steps=STEPS)  # a new wrapper
    finally:
        handle.remove()
    assert set(calls) == {8}  # straight to the cached plan

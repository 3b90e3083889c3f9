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
from esegeta_core.evaluate import aopc, deletion, insertion, passes
from esegeta_core.evaluate.passes import AUTO_MAX, MEASURE_FROM, PassPlan, plan_passes
from esegeta_core.model_state import count_hooks


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


# enough (step, image) pairs that "auto" measures: 16 images x 130 points > MEASURE_FROM
STEPS = MEASURE_FROM // 16 + 1


def long_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(16, 3, 16, 16, generator=gen), torch.rand(16, 1, 16, 16, generator=gen)


@pytest.fixture(autouse=True)
def fresh_plans():
    passes._plans.clear()
    yield
    passes._plans.clear()


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
    (plan,) = passes._plans[model].values()
    assert 4 <= plan.batch_size <= AUTO_MAX
    if model_fn is not small_cnn:  # rejected, or disagreeing (ReadsMemory)
        assert plan.channels_last is False


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
    steps = MEASURE_FROM // 8
    for metric in (aopc, insertion):
        kw = {"steps": steps} if metric is insertion else {"grid": 1, "steps": steps}
        auto = metric(model, x, 0, a, **kw)
        assert len(passes._plans) == 1  # measured
        fixed = metric(model, x, 0, a, batch_size=7, **kw)
        assert torch.allclose(auto.curve, fixed.curve, atol=1e-6)


def test_short_work_is_not_measured_and_plans_are_cached():
    calls = []

    def scores(x):
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0], 2)

    model, sample = nn.Identity(), torch.rand(4, 3, 8, 8)
    assert plan_passes("auto", 100, model, sample, scores) == PassPlan(64)
    assert plan_passes("auto", 10, model, sample, scores) == PassPlan(10)
    assert plan_passes(5, 10**6, model, sample, scores) == PassPlan(5)
    assert calls == []
    first = plan_passes("auto", MEASURE_FROM, model, sample, scores)
    measured = len(calls)
    assert measured > 0
    assert plan_passes("auto", MEASURE_FROM, model, sample, scores) == first
    assert len(calls) == measured  # cached: no second measurement
    plan_passes("auto", MEASURE_FROM, model, sample[:, :1], scores)  # another shape
    assert len(calls) > measured


def test_the_fastest_pass_size_is_kept():
    # seconds per input: 2 ms in passes of 64 or 32, 0.5 ms in 16, 1 ms in 8 and 4
    cost = {64: 2e-3, 32: 2e-3, 16: 5e-4, 8: 1e-3, 4: 1e-3}

    def scores(x):
        time.sleep(cost[x.shape[0]] * x.shape[0])
        return torch.zeros(x.shape[0], 2)

    plan = plan_passes("auto", MEASURE_FROM, nn.Identity(), torch.rand(3, 1, 4, 4), scores)
    # 32 is not 5% faster than 64: the halving stops there
    assert plan == PassPlan(64)
    cost[32] = 1e-3
    passes._plans.clear()
    plan = plan_passes("auto", MEASURE_FROM, nn.Identity(), torch.rand(3, 1, 4, 4), scores)
    assert plan == PassPlan(16)


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
    with torch.inference_mode():
        ok, seconds = passes._layout_agrees(model, x)
    assert ok is agrees
    assert seconds > 0 or model_fn in (ViewsFlat, WantsContiguous)  # rejected untimed
    one_channel, _ = passes._layout_agrees(small_cnn()[1:], torch.rand(2, 1, 8, 8))
    assert one_channel is False  # one channel: the layouts are the same memory


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


@pytest.mark.parametrize(("amp", "match"), [("fp16", "needs a CUDA device"), ("fp8", "amp must")])
def test_bad_amp(amp, match):
    x, a = long_case()
    with pytest.raises(InvalidParamsError, match=match):
        aopc(small_cnn(), x, 1, a, amp=amp)

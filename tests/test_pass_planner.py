"""The pass planner behind ``explain(auto_batch=True)`` for perturbation methods: passes
split into the fastest forward passes found on the method's own passes, cached per
network, maps equal to the fixed-batch computation."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import esegeta_core as ec
from esegeta_core.plugin.manager import get_registry
from esegeta_core.runtime import passes
from esegeta_core.runtime.batching import MAX_PASS_INPUTS, plan_batches
from esegeta_core.runtime.passes import PassPlan, PassSplitter, _climb, _Runner
from esegeta_core.testing import PassRecorder, tiny_input, tiny_model
from esegeta_core.testing.environment import require_method
from esegeta_core.testing.plans import fresh_plans  # noqa: F401  (autouse)


def _chunk(cost: dict[int, float], calls: list):
    def chunk(start, stop, channels_last):
        calls.append((stop - start, channels_last))
        time.sleep(cost.get(stop - start, 1e-3) * (stop - start))
        return torch.arange(start, stop, dtype=torch.float32)

    return chunk


def _setup_chunk(cost: dict[int, float], calls: list[int], cold: float = 1.0):
    """Sleeps ``cost`` per input of the largest size at most the pass's, 5x on the
    first pass of each size (its set-up) and ``cold`` times on a work's first pass."""
    seen: set[int] = set()

    def chunk(start, stop, channels_last):
        n = stop - start
        size = max([k for k in cost if k <= n], default=16)
        time.sleep(cost[size] * n * (cold if start == 0 else 1) * (1 if size in seen else 5))
        seen.add(size)
        calls.append(n)
        return torch.arange(start, stop, dtype=torch.float32)

    return chunk


def _repeated_works(
    chunk, work: int, *, reshapes: bool, limit: int
) -> tuple[list[PassPlan], passes.Search | None]:
    """Works of ``work`` inputs, each going on with the search the last one left, until
    it ends (at most ``limit``); every work returns each of its inputs once."""
    search, plans = None, []
    for _ in range(limit):
        runner = _Runner(work, chunk, torch.device("cpu"), stretch=256)
        plan, search = _climb(runner, reshapes=reshapes, cap=256, search=search)
        assert torch.equal(runner.finish(plan), torch.arange(work, dtype=torch.float32))
        plans.append(plan)
        if search is None:
            break
    return plans, search


def test_the_climb_goes_up_while_faster_and_keeps_the_best():
    # seconds per input: best in passes of 64
    cost = {16: 2e-3, 32: 1e-3, 64: 4e-4, 128: 6e-4}
    calls: list = []
    runner = _Runner(2000, _chunk(cost, calls), torch.device("cpu"))
    plan, search = _climb(runner, reshapes=False, cap=256)
    assert search is None and plan == PassPlan(64)
    # set-up, the start timed twice, the climb, each size timed twice and a winner
    # checked against the size it replaces, timed again after it
    assert [size for size, _ in calls] == [16, 16, 16, 32, 32, 16, 64, 64, 32, 128, 128]
    scores = runner.finish(plan)
    assert torch.equal(scores, torch.arange(2000, dtype=torch.float32))  # every input once


def test_the_climb_goes_down_when_bigger_is_slower_and_respects_the_cap():
    cost = {16: 1e-3, 32: 2e-3, 8: 5e-4, 4: 8e-4}
    calls: list = []
    runner = _Runner(500, _chunk(cost, calls), torch.device("cpu"))
    plan, search = _climb(runner, reshapes=False, cap=16)  # 32 is over the cap
    assert search is None and plan == PassPlan(8)
    assert [size for size, _ in calls] == [16, 16, 16, 8, 8, 16, 4, 4]


@pytest.mark.parametrize(
    ("device", "faster", "kept"),
    [("cpu", 0.96, 64), ("cpu", 0.98, 32), ("meta", 0.96, 32), ("meta", 0.94, 64)],
)
def test_a_size_is_kept_when_it_is_3_percent_faster_on_a_cpu(monkeypatch, device, faster, kept):
    """On a clock that moves only by the passes' cost (no noise): on a CPU, passes of 64
    that take 4% less time per input than 32 replace it, 2% less does not; elsewhere
    (a GPU) the bar stays at 5%."""
    now = [0.0]
    monkeypatch.setattr(passes.time, "perf_counter", lambda: now[0])
    per_input = {16: 1.1, 32: 1.0, 64: faster, 128: 1.2}

    def chunk(start, stop, channels_last):
        now[0] += per_input[stop - start] * (stop - start)
        return torch.arange(start, stop, dtype=torch.float32)

    runner = _Runner(4000, chunk, torch.device(device))
    plan, search = _climb(runner, reshapes=False, cap=256, start=32)
    assert search is None and plan == PassPlan(kept)


def test_a_call_that_speeds_up_as_it_runs_does_not_favour_the_size_timed_later():
    """The passes of a call get faster as it runs (a 3D DenseNet's took 56 ms per input
    at a call's start, 27 ms later): a size timed after the start must not win on
    that alone. Here passes of 16 are the fastest, and every pass's time falls from 2x
    to 1x over the first six; 32, timed fourth and fifth, seems 17% faster than the
    start's timings, and loses to 16 timed again after it."""
    base = {8: 1.5e-3, 16: 1e-3, 32: 1.1e-3}
    calls: list = []

    def chunk(start, stop, channels_last):
        n = stop - start
        warm = max(1.0, 2.0 - 0.2 * len(calls))
        calls.append(n)
        time.sleep(base.get(n, 1e-3) * n * warm)
        return torch.arange(start, stop, dtype=torch.float32)

    runner = _Runner(2000, chunk, torch.device("cpu"))
    plan, search = _climb(runner, reshapes=False, cap=256)
    assert search is None and plan == PassPlan(16)
    assert calls[:6] == [16, 16, 16, 32, 32, 16]
    assert torch.equal(runner.finish(plan), torch.arange(2000, dtype=torch.float32))


def test_a_start_beyond_the_work_is_cut_to_the_work_and_timed():
    """A start larger than the work (layer replay's 512 rows, a layer of 256 channels)
    starts at the work: its passes are timed over the next works, then channels-last
    is tried and the search ends, where a start the first pass swallowed whole was
    never timed and channels-last never tried."""
    calls: list = []
    search, plans = None, []
    for _ in range(8):
        runner = _Runner(40, _chunk({40: 1e-4}, calls), torch.device("cpu"), stretch=512)
        plan, search = _climb(runner, reshapes=True, cap=512, start=512, search=search)
        assert torch.equal(runner.finish(plan), torch.arange(40, dtype=torch.float32))
        plans.append(plan)
        if search is None:
            break
    assert search is None and plans[-1] == PassPlan(40)
    assert (40, False) in calls and any(cl for _, cl in calls)


def test_short_work_resumes_the_search_where_it_stopped():
    # seconds per input: best in passes of 32; each work is only 40 inputs
    cost = {16: 2e-3, 32: 1e-3, 64: 4e-4}
    calls: list = []
    runner = _Runner(40, _chunk(cost, calls), torch.device("cpu"), stretch=256)
    plan, search = _climb(runner, reshapes=False, cap=256)
    assert plan == PassPlan(16) and search is not None and search.step == 32
    runner.finish(plan)
    assert [size for size, _ in calls] == [16, 16, 8]  # set-up, timed, the rest
    calls.clear()
    runner = _Runner(40, _chunk(cost, calls), torch.device("cpu"), stretch=256)
    plan, search = _climb(runner, reshapes=False, cap=256, search=search)
    assert plan == PassPlan(16) and search is not None and search.pending is not None
    assert torch.equal(runner.finish(plan), torch.arange(40, dtype=torch.float32))
    assert [size for size, _ in calls] == [32, 8]  # no set-up again: 32 timed at once
    calls.clear()
    runner = _Runner(40, _chunk(cost, calls), torch.device("cpu"), stretch=256)
    plan, search = _climb(runner, reshapes=False, cap=256, search=search)
    assert plan == PassPlan(32) and search is not None and search.step == 64
    assert torch.equal(runner.finish(plan), torch.arange(40, dtype=torch.float32))
    assert [size for size, _ in calls] == [32, 8]  # its second timing wins
    calls.clear()
    runner = _Runner(40, _chunk(cost, calls), torch.device("cpu"), stretch=256)
    plan, search = _climb(runner, reshapes=False, cap=256, search=search)
    assert plan == PassPlan(32) and search is not None  # 64 does not fit in the work
    runner.finish(plan)
    assert [size for size, _ in calls] == [32, 8]


def test_a_size_that_seems_to_lose_on_short_work_is_timed_again_next_time():
    # the first pass of a new size pays its set-up (here 5x, far from the 2x a busy
    # machine's sleeps may stretch the timing of 16 by): one timing would reject 32
    chunk = _setup_chunk({16: 2e-3, 32: 1e-3}, [])
    search = None
    plans = []
    for _ in range(3):
        runner = _Runner(40, chunk, torch.device("cpu"), stretch=256)
        plan, search = _climb(runner, reshapes=False, cap=256, search=search)
        assert torch.equal(runner.finish(plan), torch.arange(40, dtype=torch.float32))
        plans.append(plan.batch_size)
    assert search is not None and search.pending is None
    assert plans == [16, 16, 32]  # 32 timed twice (set-up, then for real) before winning


def test_a_resumed_search_does_not_time_the_first_pass_of_a_work():
    """A work's first pass runs cold (here 3x): a resumed search runs it untimed, at the
    plan's size, so the second timing of a size left to the next work is a warm one."""
    calls: list[int] = []
    chunk = _setup_chunk({16: 2e-3, 32: 1.4e-3}, calls, cold=3)
    search = None
    plans, sizes = [], []
    for _ in range(3):
        calls.clear()
        runner = _Runner(64, chunk, torch.device("cpu"), stretch=256)
        plan, search = _climb(runner, reshapes=False, cap=256, search=search)
        assert torch.equal(runner.finish(plan), torch.arange(64, dtype=torch.float32))
        plans.append(plan.batch_size)
        sizes.append(list(calls))
    # the start's untimed pass and two timings; then the warm-up, 32's first timing
    # (its set-up); then the warm-up, 32's second timing, 16 timed again: 32 wins
    assert sizes == [[16, 16, 16, 16], [16, 32, 16], [16, 32, 16]]
    assert plans == [16, 16, 32]


def test_a_timed_pass_is_not_stretched_into_a_new_shape():
    """A timed pass keeps its size: stretched to take in a short rest (a work of 65,
    timed 32 + 33) it was a shape never run before, whose set-up made passes of 32 lose
    to 16 for a ResNet-50 at 64 px, where 32 is 16% faster."""
    cost = {16: 2e-3, 32: 1.4e-3, 64: 1.6e-3}
    seen: set[int] = set()

    def chunk(start, stop, channels_last):
        n = stop - start  # every shape's first pass pays a set-up (3x)
        size = max([k for k in cost if k <= n], default=16)
        time.sleep(cost[size] * n * (1 if n in seen else 3))
        seen.add(n)
        return torch.arange(start, stop, dtype=torch.float32)

    plans, search = _repeated_works(chunk, 65, reshapes=False, limit=8)
    assert search is None and plans[-1] == PassPlan(32)


def test_short_work_climbs_as_far_as_it_goes_and_is_not_cached():
    model = PassRecorder(nn.Linear(4, 2))
    splitter = PassSplitter(model, network=model, cap=64)
    x = torch.rand(40, 4)
    with torch.no_grad():
        out = splitter(x)
        torch.testing.assert_close(out, model.model(x))
    assert sum(model.sizes) == 40 and model.sizes[:2] == [16, 16]  # set-up, then timed
    assert splitter.plan is not None and not splitter.tuned
    assert model not in passes._plans


def test_the_splitter_equals_the_model_and_caches_its_plan_per_network_and_shape():
    model = tiny_model("classification", 2)
    counting = PassRecorder(model)
    splitter = PassSplitter(counting, network=model, cap=64)
    x = tiny_input("classification", 2, batch=300, size=16)
    with torch.no_grad():
        torch.testing.assert_close(splitter(x), model(x), rtol=1e-5, atol=1e-6)
    assert splitter.tuned and max(counting.sizes) <= 64 and sum(counting.sizes) >= 300
    ((_key, plan),) = passes._plans[model].items()
    counting.sizes.clear()
    again = PassSplitter(counting, network=model, cap=64)
    with torch.no_grad():
        again(x)
    assert not again.tuned and again.plan == plan
    assert set(counting.sizes[:-1]) == {plan.batch_size}  # straight to the plan
    # with gradients (a gradient method's passes), one input, or extra arguments: as is
    counting.sizes.clear()
    splitter(x[:40].requires_grad_(True))
    with torch.no_grad():
        splitter(x[:1])
    assert counting.sizes == [40, 1]


def test_plan_batches_gives_pass_params_everything_and_a_cap():
    captum_occlusion = get_registry().get(require_method("captum.occlusion"))
    model, x = tiny_model("classification", 2), tiny_input("classification", 2, batch=1)
    params = captum_occlusion.Params(sliding_window_shapes=(3, 4, 4))
    sized, cap = plan_batches(captum_occlusion, params, model, x)
    assert cap is not None and cap >= 1
    assert sized.perturbations_per_eval == MAX_PASS_INPUTS
    given = captum_occlusion.Params(sliding_window_shapes=(3, 4, 4), perturbations_per_eval=3)
    sized, cap = plan_batches(captum_occlusion, given, model, x)
    assert cap is None and sized.perturbations_per_eval == 3  # the user's choice is kept


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("captum.occlusion", {"sliding_window_shapes": "auto", "strides": "auto"}),
        ("captum.feature_ablation", {"grid_cell": 2}),
        ("captum.shapley_value_sampling", {"n_samples": 2, "grid_cell": 4}),
    ],
)
@pytest.mark.parametrize("rank", [2, 3])
def test_auto_batch_maps_equal_the_fixed_batch_maps(method, params, rank):
    name = require_method(method)
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=2)
    if params.get("sliding_window_shapes") == "auto":
        window = (3, 4, 4) if rank == 2 else (3, 2, 2, 2)
        params = {"sliding_window_shapes": window, "strides": window}
    planned = ec.explain(model, x, name, 1, auto_batch=True, seed=0, **params)
    # what the method saw is unchanged: the same as its fixed batch, run unsplit
    fixed = ec.explain(model, x, name, 1, perturbations_per_eval=MAX_PASS_INPUTS, seed=0, **params)
    torch.testing.assert_close(planned.attributions, fixed.attributions, rtol=1e-4, atol=1e-6)
    # and the same one input per pass (Shapley sampling draws its orders up front)
    one = ec.explain(model, x, name, 1, perturbations_per_eval=1, seed=0, **params)
    torch.testing.assert_close(planned.attributions, one.attributions, rtol=1e-4, atol=1e-6)
    plan = planned.extras["pass_plan"]
    assert plan["inputs_per_pass"] >= 1 and plan["channels_last"] in (True, False)
    # the params record the plan, not the count handed to the planner: Captum's
    # perturbations_per_eval counts copies of each of the 2 items per pass
    assert planned.params.perturbations_per_eval == max(1, plan["inputs_per_pass"] // 2)


def test_the_run_record_notes_the_plan(tmp_path):
    import json

    import numpy as np

    from esegeta_core.config import RunConfig
    from esegeta_core.runs import run

    name = require_method("captum.occlusion")
    np.save(tmp_path / "x.npy", tiny_input("classification", 2, batch=1, size=16).numpy())
    config = RunConfig.model_validate(
        {
            "output_dir": str(tmp_path / "out"),
            "model": {"factory": "esegeta_core.testing.models:tiny_model"},
            "inputs": {"paths": ["x.npy"], "rank": 2, "scale": "none", "batch_dim": True},
            "targets": [0],
            "methods": [{"method": name, "params": {"window": 2, "strides": 2}}],
            "auto_batch": True,
            "cpu_workers": 0,
            "progress": False,
            "outputs": {"figures": False, "report": False},
        }
    )
    summary = run(config, tmp_path)
    record = json.loads(
        (summary.run_dir / summary.records[0]["files"]["attribution"])
        .parent.joinpath("record.json")
        .read_text()
    )
    assert record["notes"]["pass_plan"]["inputs_per_pass"] >= 1
    assert (
        record["params"]["perturbations_per_eval"]
        == record["notes"]["pass_plan"]["inputs_per_pass"]
    )


def test_a_network_whose_outputs_depend_on_the_batch_is_never_split():
    model = tiny_model("classification", 2).train()  # batch norm on the pass's statistics
    counting = PassRecorder(model)
    splitter = PassSplitter(counting, network=model, cap=8)
    x = tiny_input("classification", 2, batch=300, size=16)
    with torch.no_grad():
        splitter(x)
    assert counting.sizes == [300] and splitter.plan is None


def test_method_passes_are_fixed_outside_the_planning_context_and_planned_inside():
    model = PassRecorder(nn.Linear(4, 2))
    x = torch.rand(600, 4)
    sample = x[:1]

    def chunk(start, stop, channels_last):
        with torch.no_grad():
            return model(x[start:stop])

    out = passes.method_passes(600, chunk, 50, sample)
    assert model.sizes == [50] * 12 and torch.allclose(out, model.model(x))
    model.sizes.clear()
    with passes.planning(model, cap=64) as state:
        planned = passes.method_passes(600, chunk, 512, sample, kind="probe")
    torch.testing.assert_close(planned, out)
    assert state.tuned and state.plan is not None and max(model.sizes) <= 64  # the cap
    assert passes._plans[model][passes._key("probe", sample)] == state.plan
    model.sizes.clear()
    with passes.planning(model, cap=64) as again:  # cached: straight to the plan
        passes.method_passes(600, chunk, 512, sample, kind="probe")
    assert not again.tuned and set(model.sizes[:-1]) == {state.plan.batch_size}
    model.sizes.clear()
    with passes.planning(model, cap=64):  # never over the method's own batch_size
        passes.method_passes(600, chunk, 8, sample, kind="other")
    assert max(model.sizes) <= 8


def test_an_out_of_memory_pass_is_split_in_halves(monkeypatch):
    sizes = []

    def chunk(start, stop, channels_last):
        sizes.append(stop - start)
        if stop - start > 10:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.arange(start, stop)

    out = passes.method_passes(40, chunk, 40, torch.rand(1, 3))
    assert torch.equal(out, torch.arange(40)) and sizes == [40, 20, 10, 10, 20, 10, 10]


def test_layer_replay_under_the_planner_equals_fixed_chunks():
    from esegeta_core.layer_replay import replaced_scores

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    x = torch.rand(2, 3, 12, 12)
    target = torch.tensor([0, 2])
    with torch.no_grad():
        seen = []
        handle = model[1].register_forward_hook(lambda m, a, o: seen.append(o))
        reference = model(x).gather(1, target.view(-1, 1)).squeeze(1)
        handle.remove()
    original = seen[0]
    rows = [(b, c) for b in range(2) for c in range(32) for _ in range(40)]  # 2,560 rows

    def build(item, chans, out):
        out.copy_(original[item].expand(len(chans), -1, -1, -1))
        out[torch.arange(len(chans)), torch.as_tensor(chans)] = 0.0

    args = (model, model[1], x, original, target, reference, rows, build)
    fixed = replaced_scores(*args, chunk=7)
    for _ in range(6):  # the search, then its deferred layout trial, over a few calls
        with passes.planning(model, cap=64) as state:  # replay may go up to its own 512
            planned = replaced_scores(*args, chunk=None)
        torch.testing.assert_close(planned, fixed, rtol=1e-5, atol=1e-6)
        if state.tuned:
            break
    assert state.tuned and state.plan is not None
    ((key, _plan),) = passes._plans[model].items()
    assert key[0] == ("replay", id(model[1]))  # the tail's own plan


def test_layer_layouts_are_probed_once_per_network_layer_and_shape():
    from esegeta_core.layouts import layer_layouts

    model = PassRecorder(tiny_model("classification", 2))
    layers = [("model.features.conv2", model.model.features.conv2)]
    x = tiny_input("classification", 2, batch=2)
    first = layer_layouts(model, model, x, layers)
    again = layer_layouts(model, model, x, layers)
    assert again == first and model.sizes == [1]  # the second call probed nothing
    layer_layouts(model, model, x[:, :, :8], layers)  # another input shape: probed
    layer_layouts(model, model, x, layers, reshape="channels_first")  # another reshape
    assert model.sizes == [1, 1, 1]
    # a module before the layer swapped for one that halves the grid: probed again
    model.model.features.conv1 = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    swapped = layer_layouts(model, model, x, layers)
    assert model.sizes == [1, 1, 1, 1]
    (layout,) = swapped.values()
    (before,) = first.values()
    assert layout.grid != before.grid


def test_short_work_repeated_continues_its_search_where_it_stopped():
    model = PassRecorder(nn.Linear(4, 2))
    x = torch.rand(70, 4)

    def chunk(start, stop, channels_last):
        return model(x[start:stop])

    cost = {16: 2e-3, 32: 1e-3, 64: 5e-4}  # bigger passes are faster per input

    def slow_chunk(start, stop, channels_last):
        n = stop - start  # a stretched pass (a short rest taken in) costs as its size
        time.sleep(cost[max([k for k in cost if k <= n], default=16)] * n)
        return chunk(start, stop, channels_last)

    with torch.no_grad(), passes.planning(model, cap=64):
        first = passes.method_passes(70, slow_chunk, 64, x[:1], kind="short")
        sizes_first = list(model.sizes)
        model.sizes.clear()
        again = passes.method_passes(70, slow_chunk, 64, x[:1], kind="short")
    torch.testing.assert_close(again, first)
    assert sizes_first[:2] == [16, 16]  # the search starts small
    # the next call warms up with one untimed pass of the plan (a work's first pass
    # runs cold), then goes on where the last one had got to
    assert model.sizes[:2] == [16, 32]
    # the first call ran out before 32; the second timed 32 once and ran out
    ((_, search),) = passes._unfinished[model].items()
    assert search.plan == PassPlan(16) and search.step == 32 and search.pending is not None
    model.sizes.clear()
    with torch.no_grad(), passes.planning(model, cap=64):
        third = passes.method_passes(70, slow_chunk, 64, x[:1], kind="short")
    torch.testing.assert_close(third, first)
    assert model.sizes[:2] == [16, 32]  # the warm-up, then 32's second timing
    # 32 won; the third call ran out before 64
    ((_, search),) = passes._unfinished[model].items()
    assert search.plan == PassPlan(32) and search.step == 64 and model not in passes._plans


def _layout_chunk(per_input: dict[bool, float], calls: list):
    """Sleeps ``per_input[channels_last]`` seconds per input (2 ms at 16 or more per
    pass the climb sees as no better)."""

    def chunk(start, stop, channels_last):
        calls.append((stop - start, channels_last))
        time.sleep(per_input[channels_last] * (stop - start))
        return torch.arange(start, stop, dtype=torch.float32)

    return chunk


@pytest.mark.parametrize(
    ("cl", "chosen", "cl_passes"),
    [(1e-3, True, 2), (1.98e-3, False, 2), (6e-3, False, 1)],
)
def test_the_layout_trial_times_both_layouts_on_the_work(cl, chosen, cl_passes):
    """Channels-last is checked on a few inputs, then each layout is timed twice at the
    starting size; it is chosen when clearly faster (not at 1% faster) and a first
    timing 1.5x slower is not repeated."""
    calls: list = []
    runner = _Runner(400, _layout_chunk({False: 2e-3, True: cl}, calls), torch.device("cpu"))
    plan, _search = _climb(runner, reshapes=True, cap=16)
    assert plan == PassPlan(16, chosen)
    few = passes.AGREE_INPUTS
    assert calls[:3] == [(16, False), (few, True), (few, False)]
    trial = calls[3 : 3 + 2 + cl_passes]
    assert sorted(trial) == sorted([(16, False)] * 2 + [(16, True)] * cl_passes)
    assert torch.equal(runner.finish(plan), torch.arange(400, dtype=torch.float32))


def test_short_work_leaves_the_layout_trial_to_the_next_works():
    """A one-off short call pays no channels-last set-up: the trial waits until the
    pass size is found, then later works of the kind check and time channels-last
    (resumed across works when they are too short for it)."""
    calls: list = []
    chunk = _layout_chunk({False: 2e-3, True: 1e-3}, calls)
    search, plans, works, firsts = None, [], 0, []
    while works < 12:  # works of 40 inputs
        firsts.append(len(calls))
        runner = _Runner(40, chunk, torch.device("cpu"), stretch=256)
        plan, search = _climb(runner, reshapes=True, cap=16, search=search)
        assert torch.equal(runner.finish(plan), torch.arange(40, dtype=torch.float32))
        plans.append(plan)
        works += 1
        if works == 1:
            assert not any(cl for _, cl in calls)  # the first call: contiguous only
        if search is None:
            break
    assert search is None and plans[-1] == PassPlan(16, True)
    assert not plans[0].channels_last
    # every work's first pass is contiguous (it may carry the work's own set-up)
    assert all(calls[i][1] is False for i in firsts)
    few = passes.AGREE_INPUTS  # the check: a few inputs channels-last, then contiguous
    checks = [i for i in range(len(calls) - 1) if calls[i : i + 2] == [(few, True), (few, False)]]
    assert len(checks) == 1


def test_a_size_beyond_the_work_lets_the_layout_trial_run():
    """Works of 40 inputs climb to 32; 64 is more than such a work holds, so the size
    search cannot go on there: rather than waiting for ever (the deferred layout trial
    never running, as a 3D Ablation-CAM whose 256 replayed rows are one pass of 256
    did), the next works check and time channels-last and the search ends."""
    calls: list = []
    per_input = {False: 2e-3, True: 1e-3}

    def chunk(start, stop, channels_last):
        n = stop - start
        calls.append((n, channels_last))
        bigger = 0.5 if n >= 32 else 1.0  # passes of 32 are faster per input
        time.sleep(per_input[channels_last] * n * bigger)
        return torch.arange(start, stop, dtype=torch.float32)

    plans, search = _repeated_works(chunk, 40, reshapes=True, limit=12)
    assert search is None and plans[-1] == PassPlan(32, True)
    assert any(cl for _, cl in calls)


def test_the_layout_trial_on_short_works_times_each_layout_twice(monkeypatch):
    """Works too short for the whole layout trial leave the rest to the next works,
    each layout timed twice: the best of two channels-last timings against a single
    contiguous one favoured channels-last (chosen where it was 20% slower)."""
    timed: list[bool] = []
    original = _Runner.run

    def run(self, size, channels_last, **kw):
        seconds = original(self, size, channels_last, **kw)
        if kw.get("timed"):
            timed.append(channels_last)
        return seconds

    monkeypatch.setattr(_Runner, "run", run)
    calls: list = []
    chunk = _layout_chunk({False: 2e-3, True: 2.4e-3}, calls)
    search = None
    for _ in range(12):  # works of 40: the climb ends at the cap, then the trial
        runner = _Runner(40, chunk, torch.device("cpu"), stretch=256)
        plan, search = _climb(runner, reshapes=True, cap=16, search=search)
        runner.finish(plan)
        if search is None:
            break
    assert search is None and plan == PassPlan(16, False)
    checked = [i for i in range(len(calls) - 1) if calls[i][1] and not calls[i + 1][1]]
    assert checked  # the agreement check ran, then the trial
    trial = timed[timed.index(True) :]  # the timings from the first channels-last on
    assert sorted(trial) == [False, False, True, True]


def test_the_layout_trial_gives_each_layout_a_first_and_a_second_place():
    """The first big pass of a work grows the heap (fresh pages faulted in) and is
    slower whatever its layout: timed channels-last first in every work, a layout 20%
    faster lost to that (a 3D DenseNet's replayed rows). Each layout is timed once
    before the other and once after it, so that the faster one is chosen."""
    calls: list = []
    per_input = {False: 2e-3, True: 1.6e-3}
    grown = [0]

    def chunk(start, stop, channels_last):
        n = stop - start
        if start == 0:
            grown[0] = 0  # a new work: its heap grows again
        slower = 1.6 if n > grown[0] else 1.0
        grown[0] = max(grown[0], n)
        calls.append((n, channels_last))
        time.sleep(per_input[channels_last] * n * slower)
        return torch.arange(start, stop, dtype=torch.float32)

    search = None
    for _ in range(12):  # works of 40: the size is the cap, then the deferred trial
        runner = _Runner(40, chunk, torch.device("cpu"), stretch=256)
        plan, search = _climb(runner, reshapes=True, cap=16, search=search)
        assert torch.equal(runner.finish(plan), torch.arange(40, dtype=torch.float32))
        if search is None:
            break
    assert search is None and plan == PassPlan(16, True)

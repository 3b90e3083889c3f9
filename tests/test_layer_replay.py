"""Scores with a layer's output replaced: the layers before it run once per item when
that is exact, whole passes otherwise, and the scores are the same either way."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import esegeta_core.layer_replay as replay
from esegeta_core.layer_replay import replaced_scores


class Skip(nn.Module):
    """A layer whose output meets a tensor from before it: added (broadcasts from one
    item to its copies) or concatenated (needs matching batches)."""

    def __init__(self, concat: bool) -> None:
        super().__init__()
        self.concat = concat
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.layer = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(8 if concat else 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.stem(x))
        b = self.layer(a)
        merged = torch.cat([a, b], 1) if self.concat else a + b
        return self.head(merged.mean((2, 3)))


def _ablate_every_channel(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.layer.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        scores = model(x)
    handle.remove()
    original = seen[0]
    reference = scores.gather(1, t[:, None]).squeeze(1)
    rows = [(b, c) for b in range(len(x)) for c in range(original.shape[1])]

    def build(item: int, chans: list[int], out: torch.Tensor) -> None:
        out.copy_(original[item].expand(len(chans), -1, -1, -1))
        out[torch.arange(len(chans)), torch.tensor(chans)] = 0

    return replaced_scores(
        model, model.layer, x, original, t, reference, rows, build, chunk=3, method="test"
    )


def _spy_on_checks(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The results of layer replay's checks of the unmodified row, in order."""
    checked: list[bool] = []
    original = replay._replay_agrees

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        checked.append(original(*args, **kwargs))
        return checked[-1]

    monkeypatch.setattr(replay, "_replay_agrees", spy)
    return checked


def _plain(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = []
    for b in range(len(x)):
        for c in range(4):

            def hook(m, a, o, c=c):  # type: ignore[no-untyped-def]
                o = o.clone()
                o[:, c] = 0
                return o

            handle = model.layer.register_forward_hook(hook)
            with torch.no_grad():
                out.append(model(x[b : b + 1])[0, t[b]])
            handle.remove()
    return torch.stack(out)


@pytest.mark.parametrize("concat", [False, True])
def test_replayed_scores_equal_whole_passes(concat: bool, monkeypatch, caplog) -> None:
    torch.manual_seed(0)
    model = Skip(concat).eval()
    x = torch.rand(2, 2, 6, 6)
    t = torch.tensor([0, 2])
    checked = _spy_on_checks(monkeypatch)
    with caplog.at_level("INFO", logger="esegeta_core.layer_replay"):
        got = _ablate_every_channel(model, x, t)
    # a concatenation fails on the first pass (whole passes follow); else the first
    # two passes of each item are checked (computed, then replayed)
    assert checked == ([] if concat else [True] * 4)
    assert ("falls back to full passes (RuntimeError" in caplog.text) == concat
    assert torch.allclose(got, _plain(model, x, t), atol=1e-6)


def test_ablation_methods_agree_with_and_without_the_fast_path(monkeypatch) -> None:
    pytest.importorskip("torchvision")
    pytest.importorskip("esegeta_cnnvis")
    from torchvision.models.resnet import BasicBlock, ResNet

    from esegeta_core import explain

    torch.manual_seed(0)
    # a one-block-per-stage ResNet: residual blocks and layer4's 512 channels as in
    # ResNet-18, at half its depth; 40 x 40 inputs keep a 2 x 2 map at layer4. The whole
    # passes (one per item and channel: 1024) are what make this test slow.
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5).eval()
    x = torch.rand(2, 3, 40, 40)
    t = [1, 3]  # one class per item: a score read for the wrong item's class differs
    checked = _spy_on_checks(monkeypatch)
    fast = explain(model, x, "cnnvis.ablation_cam", t, layer="layer4", batch_size=128).attributions
    assert checked == [True] * 4  # the fast path really ran: the comparison is not vacuous
    monkeypatch.setattr(replay, "_replay_agrees", lambda *a, **k: False)
    full = explain(model, x, "cnnvis.ablation_cam", t, layer="layer4").attributions
    assert fast.shape == (2, 1, 40, 40) and bool(fast.abs().amax() > 0)
    assert torch.allclose(fast, full, rtol=1e-4, atol=1e-6)


class Sliced(nn.Module):
    """A tail that pairs the layer's rows with the stem's by the stem's batch size
    (``b[: len(a)]``): right for any batch of inputs, but with the stem run on one
    item it silently keeps one row of the expanded batch, without any error."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.layer = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.stem(x))
        b = self.layer(a)
        return self.head((a + b[: a.shape[0]]).mean((2, 3)))


def test_a_tail_sliced_by_the_inputs_batch_falls_back_to_whole_passes(monkeypatch, caplog) -> None:
    torch.manual_seed(0)
    model = Sliced().eval()
    x = torch.rand(2, 2, 6, 6)
    t = torch.tensor([1, 0])
    checked = _spy_on_checks(monkeypatch)
    with caplog.at_level("INFO", logger="esegeta_core.layer_replay"):
        got = _ablate_every_channel(model, x, t)
    assert checked == [False]  # the unmodified row's score gave it away, on the first pass
    assert "the unmodified row's score differs" in caplog.text
    assert torch.allclose(got, _plain(model, x, t), atol=1e-6)


def _one_item_rows(
    model: nn.Module, x: torch.Tensor, target: int, count: int, layouts: set[bool] | None = None
) -> tuple:
    """``replaced_scores``' arguments for ``count`` rows of one item, each zeroing one of
    ``model.layer``'s 4 channels in turn (``layouts`` collects whether each pass of more
    than one row was built channels-last)."""
    seen: list[torch.Tensor] = []
    handle = model.layer.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        reference = model(x)[:, target]
    handle.remove()
    original = seen[0]

    def build(item: int, chans: list[int], out: torch.Tensor) -> None:
        if layouts is not None:
            layouts.add(out.is_contiguous(memory_format=torch.channels_last) and out.shape[0] > 1)
        out.copy_(original[item].expand(len(chans), -1, -1, -1))
        out[torch.arange(len(chans)), torch.tensor(chans)] = 0

    rows = [(0, c % 4) for c in range(count)]
    return (model, model.layer, x, original, torch.tensor([target]), reference, rows, build)


def test_replayed_passes_in_either_layout_equal_fixed_passes(monkeypatch) -> None:
    """The planner may lay the replaced rows out channels-last: builds write into
    either layout and the scores do not change."""
    from esegeta_core.runtime import passes

    torch.manual_seed(0)
    model = Skip(False).eval()
    x = torch.rand(1, 2, 6, 6)
    layouts: set[bool] = set()
    args = _one_item_rows(model, x, 2, 200, layouts)
    fixed = replaced_scores(*args, chunk=7)
    monkeypatch.setattr(replay, "FAST_CHUNK", 4)  # a search start of 4 rows
    passes.clear_plans()
    with passes.planning(model, cap=64):
        planned = replaced_scores(*args, chunk=None)
    assert layouts == {False, True}
    torch.testing.assert_close(planned, fixed, rtol=1e-5, atol=1e-6)


class CountingConv(nn.Conv2d):
    """Counts the passes that really compute it (a replay returns its record)."""

    computed = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).computed += 1
        return super().forward(x)


@pytest.mark.parametrize(
    ("method", "params", "where"),
    [
        ("cnnvis.ablation_cam", {"batch_size": 2}, "esegeta_cnnvis.cams"),
        (
            "captum.layer_feature_ablation",
            {"layer_mask": "channel", "perturbations_per_eval": 2},
            "esegeta_captum.layer",
        ),
    ],
)
def test_the_capture_pass_records_the_layers_before_for_the_replay(
    method, params, where, monkeypatch
) -> None:
    """On one item the plain pass the method makes anyway records the layers before
    the replaced one, and the first replayed pass (checked) replays them: one pass
    computes them less than without the record, with the same map."""
    plugin = pytest.importorskip(where)
    from esegeta_core import explain

    torch.manual_seed(0)
    model = Skip(False).eval()
    model.stem = CountingConv(2, 4, 3, padding=1)
    x = torch.rand(1, 2, 6, 6)

    def computed() -> tuple[int, torch.Tensor]:
        CountingConv.computed = 0
        # class 0 scores positive here (class 1 negative: Ablation-CAM's map of it is
        # rightly empty after the ReLU, as Grad-CAM's is mostly negative)
        out = explain(model, x, method, 0, layer="layer", **params).attributions
        return CountingConv.computed, out

    computed()  # the first call probes the layer's shape once (cached per network)
    recorded, fast = computed()

    @contextlib.contextmanager
    def nothing(*args, **kwargs):
        yield None

    monkeypatch.setattr(plugin, "recording_prefix", nothing)
    unrecorded, slow = computed()
    assert unrecorded == recorded + 1
    torch.testing.assert_close(fast, slow)
    assert fast.abs().amax() > 0


@pytest.mark.parametrize("method", ["cnnvis.ablation_cam", "captum.layer_feature_ablation"])
def test_channels_last_replay_passes_give_the_same_maps_on_a_densenet(method, monkeypatch):
    """A torchvision DenseNet (concatenating blocks after the ablated transition, where
    the planner found channels-last fastest): every replayed pass laid out
    channels-last gives the maps of contiguous fixed passes."""
    tv = pytest.importorskip("torchvision")
    pytest.importorskip(method.split(".")[0].replace("cnnvis", "esegeta_cnnvis"))
    from esegeta_core import explain
    from esegeta_core.runtime import passes

    torch.manual_seed(0)
    model = tv.models.densenet121(weights=None).eval()
    x = torch.rand(1, 3, 48, 48)
    extra = {"layer_mask": "channel"} if method.startswith("captum") else {}
    with torch.no_grad():  # the predicted class: its score is positive (Ablation-CAM's
        t = int(model(x).argmax())  # map of a negative one may rightly be empty)
    fixed = explain(model, x, method, t, layer="features.transition2", **extra).attributions
    passes.clear_plans()
    # the search skipped: every pass at once in the plan a finished search would leave
    monkeypatch.setattr(
        passes,
        "_climb",
        lambda runner, reshapes, cap, start, search: (passes.PassPlan(64, reshapes), None),
    )
    auto = explain(model, x, method, t, layer="features.transition2", auto_batch=True, **extra)
    replay = [plan for key, plan in passes._plans[model].items() if key[0][0] == "replay"]
    assert replay == [passes.PassPlan(64, True)]  # the replayed tail ran channels-last
    torch.testing.assert_close(
        auto.attributions, fixed, rtol=1e-4, atol=1e-5 * float(fixed.abs().max())
    )
    assert fixed.abs().amax() > 0
    passes.clear_plans()


class ViewTail(nn.Module):
    """A head that flattens with ``.view``: channels-last rows are rejected there."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = CountingConv(2, 4, 3, padding=1)
        self.layer = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.layer(torch.relu(self.stem(x)))
        return self.head(b.view(b.shape[0], -1))


def test_a_tail_that_rejects_channels_last_keeps_the_fast_replay(monkeypatch, caplog) -> None:
    """The planner's layout trial on replayed passes: channels-last fails in the tail;
    the layout is ruled out, the replay stays on its fast path with its record (the
    layers before the layer computed once per call) and the scores equal fixed passes."""
    from esegeta_core.runtime import passes

    torch.manual_seed(0)
    model = ViewTail().eval()
    x = torch.rand(1, 2, 6, 6)
    args = _one_item_rows(model, x, 2, 100)
    fixed = replaced_scores(*args, chunk=7)
    monkeypatch.setattr(replay, "FAST_CHUNK", 4)  # a search start of 4 rows
    monkeypatch.setattr(replay, "FAST_MOST", 4)  # and the most: the search ends in 8 calls
    passes.clear_plans()
    with caplog.at_level("INFO", logger="esegeta_core.layer_replay"):
        for _ in range(8):  # the climb, then the deferred layout trial
            CountingConv.computed = 0
            with passes.planning(model, cap=64):
                planned = replaced_scores(*args, chunk=None)
            torch.testing.assert_close(planned, fixed, rtol=1e-5, atol=1e-6)
            assert CountingConv.computed == 1  # recorded once, replayed after
    assert "falls back" not in caplog.text and "computing" not in caplog.text
    (plan,) = passes._plans[model].values()
    assert plan.channels_last is False
    passes.clear_plans()

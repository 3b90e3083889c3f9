"""Scores with a layer's output replaced: the layers before it run once per item when
that is exact, whole passes otherwise, and the scores are the same either way."""

from __future__ import annotations

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

    def build(item: int, chans: list[int]) -> torch.Tensor:
        out = original[item].unsqueeze(0).repeat(len(chans), 1, 1, 1)
        out[torch.arange(len(chans)), torch.tensor(chans)] = 0
        return out

    return replaced_scores(
        model, model.layer, x, original, t, reference, rows, build, chunk=3, method="test"
    )


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
def test_replayed_scores_equal_whole_passes(concat: bool, monkeypatch) -> None:
    torch.manual_seed(0)
    model = Skip(concat).eval()
    x = torch.rand(2, 2, 6, 6)
    t = torch.tensor([0, 2])
    checked: list[bool] = []
    original = replay._fast_is_exact

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        checked.append(original(*args, **kwargs))
        return checked[-1]

    monkeypatch.setattr(replay, "_fast_is_exact", spy)
    got = _ablate_every_channel(model, x, t)
    assert checked == [not concat]  # a concatenation falls back to whole passes
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
    checked: list[bool] = []
    original = replay._fast_is_exact

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        checked.append(original(*args, **kwargs))
        return checked[-1]

    monkeypatch.setattr(replay, "_fast_is_exact", spy)
    fast = explain(model, x, "cnnvis.ablation_cam", t, layer="layer4").attributions
    assert checked == [True]  # the fast path really ran: the comparison is not vacuous
    monkeypatch.setattr(replay, "_fast_is_exact", lambda *a, **k: False)
    full = explain(model, x, "cnnvis.ablation_cam", t, layer="layer4").attributions
    assert fast.shape == (2, 1, 40, 40) and bool(fast.abs().amax() > 0)
    assert torch.allclose(fast, full, rtol=1e-4, atol=1e-6)

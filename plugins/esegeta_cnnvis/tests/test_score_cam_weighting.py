"""Score-CAM's channel weighting on segmentation models: the softmax over channels of
summed class scores is one-hot (the map one channel's activation), so segmentation
takes the paper's increase of confidence by default, and an explicit softmax there is
refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esegeta_core import InvalidParamsError, explain
from esegeta_core.targets import MultiClassScores, ScoreModel
from esegeta_core.testing import tiny_input, tiny_model

SEG = "segmentation"


def _masked_scores(
    model: nn.Module, x: torch.Tensor, acts: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """``(B, K)`` target scores of each item masked by each of its channels (up-sampled
    with align_corners=True, min-max scaled), computed one by one."""
    scorer = ScoreModel(model, MultiClassScores())
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    out = torch.empty(acts.shape[:2])
    with torch.no_grad():
        for b in range(acts.shape[0]):
            for k in range(acts.shape[1]):
                up = F.interpolate(
                    acts[b : b + 1, k : k + 1], x.shape[2:], mode=mode, align_corners=True
                )
                scaled = (up - up.min()) / (up.max() - up.min() + 1e-8)
                out[b, k] = scorer(x[b : b + 1] * scaled)[0, target[b]]
    return out


@pytest.mark.parametrize("rank", [2, 3])
def test_segmentation_weights_channels_by_their_increase_of_confidence(rank: int) -> None:
    model, x = tiny_model(SEG, rank), tiny_input(SEG, rank)
    scorer = ScoreModel(model, MultiClassScores())
    with torch.no_grad():
        target = scorer(x).argmax(1)  # classes that win pixels
        acts = model.encoder(x)
        base = scorer(torch.zeros_like(x[:1]))[0]
    scores = _masked_scores(model, x, acts, target)
    increase = scores - base[target].view(-1, 1)
    assert bool((increase.std(1) > 0).all())  # the channels' weights differ
    want = torch.relu((increase.view(*increase.shape, *[1] * rank) * acts).sum(1))
    got = explain(model, x, "cnnvis.score_cam", target=target, task=SEG, layer="encoder",
                  upsample=False, progress=False)  # fmt: skip
    assert got.extras["weighting"] == "increase" and got.params.weighting == "auto"
    torch.testing.assert_close(got.attributions[:, 0], want, rtol=1e-4, atol=1e-3)
    explicit = explain(model, x, "cnnvis.score_cam", target=target, task=SEG, layer="encoder",
                       upsample=False, progress=False, weighting="increase")  # fmt: skip
    torch.testing.assert_close(explicit.attributions, got.attributions, rtol=0, atol=0)


def test_an_explicit_softmax_over_channels_of_a_segmentation_is_refused() -> None:
    model, x = tiny_model(SEG, 2), tiny_input(SEG, 2)
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(InvalidParamsError, match=r"cnnvis.*weighting='increase'"):
        explain(model, x, "cnnvis.score_cam", target=1, task=SEG, layer="encoder",
                weighting="softmax")  # fmt: skip
    assert len(calls) <= 1  # refused after the probe, before any masked pass


def test_a_classifier_keeps_the_softmax_over_channels() -> None:
    model, x = tiny_model("classification", 2), tiny_input("classification", 2)
    kw = {"target": [1, 3], "layer": "features.conv2", "progress": False}
    auto = explain(model, x, "cnnvis.score_cam", **kw)
    soft = explain(model, x, "cnnvis.score_cam", weighting="softmax", **kw)
    assert auto.extras["weighting"] == "softmax"
    torch.testing.assert_close(auto.attributions, soft.attributions, rtol=0, atol=0)
    increase = explain(model, x, "cnnvis.score_cam", weighting="increase", **kw)
    assert not torch.allclose(increase.attributions, auto.attributions)


def test_a_monai_unet_gets_a_map_of_many_channels() -> None:
    """A real architecture: on a MONAI U-Net the softmax over channels gives one
    channel nearly all the weight; the default's map is not any single channel's
    activation."""
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = monai.UNet(2, 1, 3, channels=(8, 16, 32), strides=(2, 2)).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        first = model.model[0](x)
    softmax = _masked_scores(model, x, first, torch.tensor([1, 1])).softmax(1)
    assert float(softmax.amax(1).min()) > 0.99  # why the softmax is refused here
    got = explain(model, x, "cnnvis.score_cam", target=1, task=SEG, layer="model.0",
                  upsample=False, progress=False)  # fmt: skip
    assert got.extras["weighting"] == "increase"
    maps = got.attributions[:, 0].flatten(1)
    assert bool(torch.isfinite(maps).all()) and bool((maps.std(1) > 0).all())
    with torch.no_grad():
        acts = torch.relu(model.model[0](x)).flatten(2)  # (B, K, pixels)
    for b in range(2):
        cos = F.cosine_similarity(acts[b], maps[b].view(1, -1), dim=1)
        assert float(cos.max()) < 0.99

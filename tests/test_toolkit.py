"""The plugin authors' toolkit: interpolation, target gathering, layer capture, params."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from esegeta_core import InvalidParamsError, MethodParams
from esegeta_core.toolkit import (
    BaselineChoice,
    Call,
    TensorParam,
    gather_target,
    interpolation_mode,
    layer_output,
    recording,
    replacing_output,
    target_pass_scores,
)


@pytest.mark.parametrize(("rank", "mode"), [(1, "linear"), (2, "bilinear"), (3, "trilinear")])
def test_interpolation_mode_resizes_every_rank(rank, mode):
    assert interpolation_mode(rank) == mode
    x = torch.rand(1, 1, *([4] * rank))
    out = F.interpolate(x, size=(8,) * rank, mode=interpolation_mode(rank), align_corners=False)
    assert tuple(out.shape[2:]) == (8,) * rank


def test_interpolation_mode_refuses_other_ranks():
    with pytest.raises(ValueError, match="1 to 3 spatial dimensions, not 4"):
        interpolation_mode(4)


def test_gather_target_picks_each_items_class():
    scores = torch.arange(12.0).view(3, 4)
    target = torch.tensor([3, 0, 2])
    assert gather_target(scores, target).tolist() == [3.0, 4.0, 10.0]
    assert gather_target(scores, target.view(3, 1)).shape == (3,)


def test_target_pass_scores_reduce_only_the_targets_classes_without_gradients():
    import esegeta_core as ec

    class Seg(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, -x, 0.5 * x], 1)  # 3 classes per voxel

    torch.manual_seed(0)
    x = torch.randn(4, 1, 5, 6, 7)
    wrapped = ec.ScoreModel(Seg(), ec.MultiClassScores())
    target = torch.tensor([0, 1, 2, 1])
    want = gather_target(wrapped(x), target)
    seen: list[torch.Tensor] = []
    original = ec.MultiClassScores.class_scores

    def spy(self, out, classes):
        seen.append(classes)
        return original(self, out, classes)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ec.MultiClassScores, "class_scores", spy)
        with torch.no_grad():
            got = target_pass_scores(wrapped, x, target)
        assert len(seen) == 1 and torch.equal(got, want)  # the one-class path
        assert torch.equal(target_pass_scores(wrapped, x, target).detach(), want.detach())
        assert len(seen) == 1  # with gradients: the whole output, as gather_target
    plain = _net()
    y = torch.rand(3, 3, 6, 6)
    t = torch.tensor([1, 0, 1])
    with torch.no_grad():
        assert torch.equal(target_pass_scores(plain, y, t), gather_target(plain(y), t))


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_recording_keeps_outputs_or_inputs_and_removes_its_hooks():
    net = _net()
    x = torch.rand(2, 3, 6, 6)
    with recording([net[0], net[1]]) as outs, recording([net[1]], inputs=True) as ins:
        net(x)
    conv = F.conv2d(x, net[0].weight, net[0].bias)
    assert torch.allclose(outs[0][0], conv) and torch.allclose(outs[1][0], conv.relu())
    assert torch.allclose(ins[0][0], conv)
    assert all(not m._forward_hooks for m in net.modules())


def test_layer_output_stops_after_the_layer_and_stays_differentiable():
    net = _net()
    x = torch.rand(2, 3, 6, 6, requires_grad=True)
    calls = []
    net[3].register_forward_pre_hook(lambda *_: calls.append(1))
    out = layer_output(net, net[1], x, method="m.x", path="1")
    assert calls == [] and torch.allclose(out, F.conv2d(x, net[0].weight, net[0].bias).relu())
    out.sum().backward()
    assert x.grad is not None
    first = layer_output(net, net[1], x, method="m.x", inputs=True)
    assert torch.allclose(first, F.conv2d(x, net[0].weight, net[0].bias))
    assert not net[1]._forward_hooks


def test_layer_output_names_an_unused_layer():
    net = _net()
    with pytest.raises(InvalidParamsError, match=r"'m\.x': layer 'spare' is not used"):
        layer_output(net, nn.ReLU(), torch.rand(1, 3, 6, 6), method="m.x", path="spare")


def test_replacing_output_within_the_block_only():
    net = _net()
    x = torch.rand(1, 3, 6, 6)
    before = net(x)
    with replacing_output(net[1], torch.zeros_like):
        zeroed = net(x)
    assert torch.allclose(zeroed, net[3].bias.expand_as(zeroed))
    assert torch.allclose(net(x), before)


def test_call_knows_its_rank_and_layers():
    net = _net()
    call = Call(model=net, inputs=torch.rand(1, 3, 6, 6), target=torch.zeros(1), method="m.x")
    assert call.rank == 2 and call.layer("0") is net[0]


class _Opts(MethodParams):
    mode: Literal["a", "b"] = Field("a", description="mode")
    width: int = Field(1, description="only with mode b")
    baseline: BaselineChoice = Field("zeros", description="a reference")

    @model_validator(mode="after")
    def _width(self) -> _Opts:
        self.only_with(["width"], self.mode == "b", "mode='b'")
        return self


def test_only_with_refuses_an_option_that_would_be_ignored():
    assert _Opts(mode="b", width=3).width == 3
    assert _Opts().width == 1  # the default is not the user's choice
    with pytest.raises(ValueError, match=r"width only applies with mode='b'; remove it"):
        _Opts(width=3)


def test_baseline_choice_takes_names_numbers_and_tensors():
    assert _Opts(baseline=0.5).baseline == 0.5
    assert isinstance(_Opts(baseline=torch.zeros(3)).baseline, torch.Tensor)
    with pytest.raises(ValueError):
        _Opts(baseline="nonsense")
    prop = _Opts.model_json_schema()["properties"]["baseline"]
    tensor = {"type": "object", "title": "Tensor", "x-python-type": "torch.Tensor"}
    assert tensor in prop["anyOf"]


class _Plain(MethodParams):
    mask: torch.Tensor | None = Field(None, description="a plain tensor field")
    typed: TensorParam | None = Field(None, description="the toolkit's")


def test_tensor_param_has_the_schema_of_a_plain_tensor_field():
    props = _Plain.model_json_schema()["properties"]
    assert props["mask"]["anyOf"] == props["typed"]["anyOf"]


def test_layer_output_refuses_a_tuple_unless_asked_for_its_first_tensor():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x

    net = nn.Sequential(Pair())
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(InvalidParamsError, match="returns tuple, not a tensor"):
        layer_output(net, net[0], x, method="m.x")
    assert torch.equal(layer_output(net, net[0], x, method="m.x", first_of_tuple=True), x * 2)

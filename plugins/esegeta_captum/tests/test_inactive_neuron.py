"""A neuron switched off by its ReLU has a zero map: the call says so and names a neuron
that is active, instead of the map coming back as if the input held no evidence."""

from __future__ import annotations

import ast

import pytest
import torch
from torch import nn

from esegeta_core import explain

NEURON_METHODS = [
    "captum.neuron_gradient",
    "captum.neuron_integrated_gradients",
    "captum.neuron_conductance",
    "captum.neuron_deep_lift",
    "captum.neuron_guided_backprop",
    "captum.neuron_feature_ablation",
]


def _model(rank: int) -> nn.Module:
    """Channel 0 of ``act`` is always off (bias -100); channel 1 follows the input's
    first channel, so it is off where that is negative; channel 2 is always on."""
    conv = (nn.Conv2d if rank == 2 else nn.Conv3d)(2, 3, 1)
    pool = nn.AdaptiveAvgPool2d(1) if rank == 2 else nn.AdaptiveAvgPool3d(1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 0] = 1.0
        conv.weight[2, 1] = 0.1
        conv.bias.copy_(torch.tensor([-100.0, 0.0, 10.0]))
    torch.manual_seed(0)
    return nn.Sequential(conv, nn.ReLU(), pool, nn.Flatten(), nn.Linear(3, 4)).eval()


def _input(rank: int) -> torch.Tensor:
    x = torch.rand(2, 2, *(6,) * rank)
    x[0, 0] = -x[0, 0]  # item 0: channel 1 off everywhere
    return x


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("method", NEURON_METHODS)
def test_a_neuron_that_is_always_off_is_named_with_an_active_one(method: str, rank: int) -> None:
    e = explain(_model(rank), _input(rank), method, 0, layer="1", neuron_selector=(0,),
                progress=False)  # fmt: skip
    assert bool((e.attributions == 0).all())
    centre = (3,) * rank
    own = [w for w in e.extras["warnings"] if "its activation switches it off" in w]
    assert len(own) == 1, e.extras["warnings"]
    assert f"the neuron {(0, *centre)} in the output of layer '1' is 0 on item(s) 0, 1" in own[0]
    assert f"neuron_selector={(2, *centre)}" in own[0]  # the channel that is always on
    assert f"'{method}' (plugin 'captum')" in own[0]


@pytest.mark.parametrize("target", [0, None])  # None: the check's pass stops at the layer
@pytest.mark.parametrize("rank", [2, 3])
def test_only_the_items_where_the_neuron_is_off_are_named(rank: int, target: int | None) -> None:
    e = explain(_model(rank), _input(rank), "captum.neuron_gradient", target, layer="1",
                neuron_selector=(1,), progress=False)  # fmt: skip
    assert bool((e.attributions[0] == 0).all())
    assert bool((e.attributions[1] != 0).any())
    (own,) = [w for w in e.extras["warnings"] if "switches it off" in w]
    assert "is 0 on item(s) 0:" in own


def test_an_active_neuron_brings_no_such_warning() -> None:
    e = explain(_model(2), _input(2), "captum.neuron_gradient", 0, layer="1",
                neuron_selector=(2,), progress=False)  # fmt: skip
    assert bool((e.attributions != 0).any())
    assert not e.extras.get("warnings")


def test_a_position_where_every_neuron_is_off_says_so() -> None:
    model = _model(2)
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every channel off
    e = explain(model, _input(2), "captum.neuron_gradient", 0, layer="1",
                neuron_selector=(1,), progress=False)  # fmt: skip
    (own,) = [w for w in e.extras["warnings"] if "switches it off" in w]
    assert "No neuron at this position is active" in own


def test_on_a_real_architecture_the_suggested_neuron_has_a_map() -> None:
    """torchvision ResNet-18 (random weights): the neuron the warning names in place of
    one that is off gives a map that is not zero."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acts: list[torch.Tensor] = []
        handle = model.layer4.register_forward_hook(lambda m, a, o: acts.append(o))
        model(x)
        handle.remove()
    centre = acts[0][:, :, 1, 1]
    off = int((centre == 0).all(0).nonzero()[0])  # a channel off on both items
    e = explain(model, x, "captum.neuron_gradient", 0, layer="layer4",
                neuron_selector=(off,), progress=False)  # fmt: skip
    (own,) = [w for w in e.extras["warnings"] if "switches it off" in w]
    suggested = ast.literal_eval(own.split("neuron_selector=")[1].split(" (value")[0])
    good = explain(model, x, "captum.neuron_gradient", 0, layer="layer4",
                   neuron_selector=suggested, progress=False)  # fmt: skip
    assert bool((good.attributions.flatten(1) != 0).any(1).all())
    assert not good.extras.get("warnings")


class _Faint(nn.Module):
    """A score that changes by about 1e-3 across the samples (the left half's mean):
    below what Captum's default Lasso penalty (alpha=0.01) lets through."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.conv(x)[..., : x.shape[-1] // 2].flatten(1).mean(1)
        return torch.stack([left, -left], 1) * self.scale


@pytest.mark.parametrize("rank", [2, 3])
def test_lime_s_lasso_that_removed_every_coefficient_says_so(rank: int) -> None:
    model = _Faint(1e-3).eval()
    if rank == 3:
        model.conv = nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.zero_()
    x = torch.rand(2, 1, *(8,) * rank)
    kw = {"feature_mask": "grid", "grid_cell": 4, "n_samples": 64, "progress": False}
    e = explain(model, x, "captum.lime", 0, seed=0, **kw)
    assert bool((e.attributions == 0).all())
    own = [w for w in e.extras["warnings"] if "Lasso surrogate" in w]
    assert len(own) == 1
    assert "alpha=0.01" in own[0] and "item(s) 0, 1" in own[0] and "alpha=0" in own[0]
    fixed = explain(model, x, "captum.lime", 0, seed=0, alpha=0.0, **kw)
    assert bool((fixed.attributions.flatten(1) != 0).any(1).all())
    assert not fixed.extras.get("warnings")
    model.scale = 1e3  # a score that changes: Lasso keeps coefficients, no warning
    loud = explain(model, x, "captum.lime", 0, seed=0, **kw)
    assert not loud.extras.get("warnings")

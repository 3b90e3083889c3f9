"""``zennit.lrp`` equals zennit's own LRP where zennit's own tools are right.

- a plain sequential CNN (no reuse, no skips, batch norm directly after each
  convolution): zennit's composite with ``SequentialMergeBatchNorm``;
- torchvision's resnet18: zennit's composite with ``ResNetCanonizer``, the hand-fixed
  copy (its forward rewritten so that the skip additions run through zennit ``Sum``
  modules, batch norms merged). esegeta reaches the same result generically: the core
  routes ``out += identity`` through a ``MergeSite`` whose ``Sum`` gets zennit's ``Norm``
  rule, splits the ReLU called twice per block into call sites, and the plugin's probe
  pass finds the same merges.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
)

from esegeta_core import explain

TARGET = torch.tensor([1, 3])
TOL = 1e-6  # relative to the largest relevance; measured differences are 0

Builder = Callable[..., nn.Module]
Inputs = Callable[..., torch.Tensor]
Reference = Callable[..., torch.Tensor]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


COMPOSITES = {
    "epsilon_plus_flat": (lambda c: EpsilonPlusFlat(canonizers=c), {}),
    "epsilon_plus": (lambda c: EpsilonPlus(epsilon=1e-3, canonizers=c), {"epsilon": 1e-3}),
    "epsilon_alpha2_beta1": (lambda c: EpsilonAlpha2Beta1(canonizers=c), {}),
    "epsilon_alpha2_beta1_flat": (
        lambda c: EpsilonAlpha2Beta1Flat(stabilizer=1e-5, canonizers=c),
        {"stabilizer": 1e-5},
    ),
    "epsilon_gamma_box": (
        lambda c: EpsilonGammaBox(low=-3.0, high=3.0, gamma=0.5, canonizers=c),
        {"low": -3.0, "high": 3.0, "gamma": 0.5},
    ),
}


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_plain_cnn_equals_zennit_sequential_merge(
    rank: int, composite: str, plain_cnn: Builder, inputs: Inputs, zennit_lrp: Reference
) -> None:
    model = plain_cnn(rank)
    x = inputs(rank)
    make, params = COMPOSITES[composite]
    ours = explain(model, x, "zennit.lrp", target=TARGET, composite=composite, **params)
    theirs = zennit_lrp(model, x, TARGET, make([SequentialMergeBatchNorm()]))
    assert ours.extras["merged_batch_norms"] == {"bn1": "conv1", "bn2": "conv2"}
    assert ours.extras["input_layers"] == ["conv1"]
    assert ours.attributions.shape == x.shape
    assert bool(theirs.abs().sum() > 0)
    assert max_diff(ours.attributions, theirs) <= TOL * float(theirs.abs().max())
    # different targets per item really give different maps
    other = explain(model, x, "zennit.lrp", target=TARGET.flip(0), composite=composite, **params)
    assert not torch.allclose(other.attributions, ours.attributions)


def test_box_rule_default_bounds_are_each_items_range(
    plain_cnn: Builder, inputs: Inputs, zennit_lrp: Reference
) -> None:
    model = plain_cnn(2)
    x = inputs(2)
    ours = explain(model, x, "zennit.lrp", target=TARGET, composite="epsilon_gamma_box")
    for i in range(2):
        low, high = float(x[i].min()), float(x[i].max())
        composite = EpsilonGammaBox(low=low, high=high, canonizers=[SequentialMergeBatchNorm()])
        theirs = zennit_lrp(model, x[i : i + 1], TARGET[i : i + 1], composite)
        assert max_diff(ours.attributions[i : i + 1], theirs) <= TOL * float(theirs.abs().max())


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_resnet18_equals_zennit_resnet_canonizer(
    composite: str, resnet18: nn.Module, inputs: Inputs, zennit_lrp: Reference
) -> None:
    from zennit.torchvision import ResNetCanonizer

    model = resnet18
    x = inputs(2, size=64)
    target = torch.tensor([2, 7])
    ours = explain(model, x, "zennit.lrp", target=target, composite=composite)
    make, _ = COMPOSITES[composite]
    theirs = zennit_lrp(model, x, target, make([ResNetCanonizer()]))
    prep = ours.extras["preparation"]
    assert prep["routed_calls"] == {"add_": 8}, "the 8 skip additions became MergeSites"
    assert all(n == 2 for n in prep["split_modules"].values())
    assert len(ours.extras["merged_batch_norms"]) == 20  # 17 + 3 downsample batch norms
    assert ours.extras["epsilon_batch_norms"] == []
    assert ours.extras["merged_batch_norms"]["layer2.0.downsample.1"] == "layer2.0.downsample.0"
    assert max_diff(ours.attributions, theirs) <= TOL * float(theirs.abs().max())


def test_layer_lrp_equals_zennit_gradient_at_the_layer(plain_cnn: Builder, inputs: Inputs) -> None:
    """Relevance at a layer's output is zennit's modified gradient there."""
    model = plain_cnn(2)
    x = inputs(2)
    ours = explain(model, x, "zennit.layer_lrp", target=TARGET, layer="conv2")
    seen: list[torch.Tensor] = []
    handle = model.conv2.register_forward_hook(lambda m, a, o: seen.append(o))
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    try:
        with composite.context(model) as modified:
            xx = x.clone().requires_grad_(True)
            scores = modified(xx)
            start = torch.nn.functional.one_hot(TARGET, scores.shape[1]) * scores.detach()
            (theirs,) = torch.autograd.grad(scores, seen[-1], grad_outputs=start)
    finally:
        handle.remove()
    assert ours.attributions.shape == theirs.shape == (2, 8, 8, 8)
    assert max_diff(ours.attributions, theirs) <= TOL * float(theirs.abs().max())

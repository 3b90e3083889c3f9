"""Relevance conservation where the rules conserve it: on networks without biases the
relevance of the input sums to the explained score (z-plus, gamma, flat and box rules,
the epsilon rule with a tiny epsilon, the proportional split at skip connections,
max pooling's gradient and average pooling's split all conserve)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from esegeta_core import explain

TARGET = torch.tensor([0, 4])


def _scores(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, target[:, None])[:, 0]


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize(
    ("composite", "params"),
    [
        ("epsilon_plus_flat", {}),
        ("epsilon_plus", {}),
        ("epsilon_gamma_box", {"low": -4.0, "high": 4.0}),
    ],
)
def test_bias_free_cnn_conserves(
    rank: int,
    composite: str,
    params: dict,
    plain_cnn: Callable[..., nn.Module],
    inputs: Callable[..., torch.Tensor],
) -> None:
    model = plain_cnn(rank, bias=False, batch_norm=False)
    x = inputs(rank)
    e = explain(model, x, "zennit.lrp", target=TARGET, composite=composite, epsilon=1e-9, **params)
    totals = e.attributions.flatten(1).sum(1)
    scores = _scores(model, x, TARGET)
    assert bool((scores.abs() > 1e-3).all()), "the test needs non-trivial scores"
    torch.testing.assert_close(totals, scores, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rank", [2, 3])
def test_bias_free_cnn_with_merged_batch_norms_conserves(
    rank: int, plain_cnn: Callable[..., nn.Module], inputs: Callable[..., torch.Tensor]
) -> None:
    """Batch norms with zero mean and shift merge into bias-free convolutions."""
    model = plain_cnn(rank, bias=False)
    for m in (model.bn1, model.bn2):
        m.running_mean.zero_()
        m.bias.data.zero_()
    x = inputs(rank)
    e = explain(model, x, "zennit.lrp", target=TARGET, epsilon=1e-9)
    assert len(e.extras["merged_batch_norms"]) == 2
    # after a merge zennit's batch norm computes x / sqrt(1 + eps): a 5e-6 change
    torch.testing.assert_close(
        e.attributions.flatten(1).sum(1), _scores(model, x, TARGET), rtol=1e-4, atol=1e-6
    )


def test_resnet18_without_biases_conserves_through_skip_connections(
    resnet18: nn.Module, inputs: Callable[..., torch.Tensor]
) -> None:
    model = resnet18
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.zero_()
            m.bias.data.zero_()
    model.fc.bias.data.zero_()
    x = inputs(2, size=64)
    target = torch.tensor([3, 8])
    e = explain(model, x, "zennit.lrp", target=target, epsilon=1e-9)
    assert len(e.extras["merged_batch_norms"]) == 20
    totals = e.attributions.flatten(1).sum(1)
    # up to 17 merged batch norms on a path, each x / sqrt(1 + 1e-5): <1e-4 relative
    torch.testing.assert_close(totals, _scores(model, x, target), rtol=2e-4, atol=1e-6)


def test_layer_relevance_conserves(
    plain_cnn: Callable[..., nn.Module], inputs: Callable[..., torch.Tensor]
) -> None:
    model = plain_cnn(2, bias=False, batch_norm=False)
    x = inputs(2)
    e = explain(model, x, "zennit.layer_lrp", target=TARGET, layer="conv2", epsilon=1e-9)
    torch.testing.assert_close(
        e.attributions.flatten(1).sum(1), _scores(model, x, TARGET), rtol=1e-4, atol=1e-6
    )

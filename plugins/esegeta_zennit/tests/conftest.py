"""Models and references shared by the plugin's tests."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tests use small models, for which one thread is as fast; on a shared 2-core
    machine several threads per process oversubscribe it (20x slower measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


CONV = {2: nn.Conv2d, 3: nn.Conv3d}
BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
GAP = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def randomise_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters (merging must matter)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model


def plain_cnn(rank: int, *, bias: bool = True, batch_norm: bool = True, classes: int = 5):
    """conv-bn-relu-maxpool-conv-bn-relu-avgpool-flatten-linear: no reuse, no skips,
    each batch norm directly after its convolution (zennit's sequential case)."""
    conv, bn = CONV[rank], BN[rank]
    layers: list[tuple[str, nn.Module]] = [("conv1", conv(3, 6, 3, padding=1, bias=bias))]
    if batch_norm:
        layers.append(("bn1", bn(6)))
    layers += [("relu1", nn.ReLU()), ("pool1", MAXPOOL[rank](2))]
    layers.append(("conv2", conv(6, 8, 3, padding=1, bias=bias)))
    if batch_norm:
        layers.append(("bn2", bn(8)))
    layers += [
        ("relu2", nn.ReLU()),
        ("gap", GAP[rank](1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(8, classes, bias=bias)),
    ]
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(layers))
    return randomise_batch_norms(model).eval()


def inputs(rank: int, batch: int = 2, size: int | None = None, seed: int = 0) -> torch.Tensor:
    size = size or (16 if rank == 2 else 8)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 3) + (size,) * rank, generator=gen)


def target_relevance(target: torch.Tensor):
    """The output relevance esegeta's zennit methods start from: the target score."""

    def fn(scores: torch.Tensor) -> torch.Tensor:
        return F.one_hot(target, scores.shape[1]).to(scores) * scores.detach()

    return fn


def zennit_lrp(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite) -> torch.Tensor:
    """zennit's own LRP, as a zennit user writes it."""
    from zennit.attribution import Gradient

    with Gradient(model, composite, attr_output=target_relevance(target)) as attributor:
        _, relevance = attributor(x.clone().requires_grad_(True))
    return relevance.detach()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())

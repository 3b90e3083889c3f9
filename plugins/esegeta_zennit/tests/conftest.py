"""Models, inputs and zennit's own LRP for the plugin's tests, offered as fixtures (each
fixture named after a helper gives that function); the conformance cases."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esegeta_core.devices import torch_threads
from esegeta_core.testing import parametrize_conformance

FAST_PARAMS: dict[str, dict[str, Any]] = {}
"""The zennit methods are fast with their defaults."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test taking ``case`` runs once per conformance case of the plugin."""
    parametrize_conformance(metafunc, plugin="zennit", params=FAST_PARAMS)


@pytest.fixture
def fast_params() -> Mapping[str, Mapping[str, Any]]:
    """Method name -> the parameters that keep it fast (none needed)."""
    return FAST_PARAMS


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tests use small models, for which one thread is as fast; on a shared 2-core
    machine several threads per process oversubscribe it (20x slower measured)."""
    with torch_threads(1):
        yield


CONV = {2: nn.Conv2d, 3: nn.Conv3d}
BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
GAP = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def _randomise_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
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


def _plain_cnn(
    rank: int, *, bias: bool = True, batch_norm: bool = True, classes: int = 5
) -> nn.Module:
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
    return _randomise_batch_norms(model).eval()


def _inputs(rank: int, batch: int = 2, size: int | None = None, seed: int = 0) -> torch.Tensor:
    size = size or (16 if rank == 2 else 8)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 3) + (size,) * rank, generator=gen)


def _target_relevance(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The output relevance esegeta's zennit methods start from: the target score."""

    def fn(scores: torch.Tensor) -> torch.Tensor:
        return F.one_hot(target, scores.shape[1]).to(scores) * scores.detach()

    return fn


def _zennit_lrp(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite: Any
) -> torch.Tensor:
    """zennit's own LRP, as a zennit user writes it."""
    from zennit.attribution import Gradient

    with Gradient(model, composite, attr_output=_target_relevance(target)) as attributor:
        _, relevance = attributor(x.clone().requires_grad_(True))
    return relevance.detach()


@pytest.fixture(scope="session")
def randomise_batch_norms() -> Callable[..., nn.Module]:
    """``(model, seed=0) -> model`` with non-trivial batch-norm statistics and affine
    parameters (merging must matter)."""
    return _randomise_batch_norms


@pytest.fixture(scope="session")
def plain_cnn() -> Callable[..., nn.Module]:
    """``(rank, *, bias=True, batch_norm=True, classes=5)``: a sequential CNN in eval
    mode, each batch norm directly after its convolution."""
    return _plain_cnn


@pytest.fixture(scope="session")
def inputs() -> Callable[..., torch.Tensor]:
    """``(rank, batch=2, size=None, seed=0)``: a seeded normal batch with 3 channels."""
    return _inputs


@pytest.fixture(scope="session")
def zennit_lrp() -> Callable[..., torch.Tensor]:
    """``(model, x, target, composite)``: zennit's own LRP, as a zennit user writes it."""
    return _zennit_lrp


@pytest.fixture
def resnet18() -> nn.Module:
    """torchvision's resnet18 (10 classes, seed 0) with randomised batch norms, in eval
    mode."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return _randomise_batch_norms(resnet18(weights=None, num_classes=10)).eval()

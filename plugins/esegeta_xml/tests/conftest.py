"""The xML tests' tiny joint model, data and training config (offered as fixtures),
one intra-op thread, and the conformance cases for every test taking ``case``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from esegeta_xml import ExplainerClassifier, SmallVGG
from esegeta_xml.data import TensorItems

from esegeta_core.testing import parametrize_conformance


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_conformance(metafunc, plugin="xml")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """One intra-op thread for the tiny models: on a busy machine, torch's thread pool
    spends more time waiting than the convolutions take."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_tiny_joint(
    rank: int = 2, in_channels: int = 3, classes: int = 2, seed: int = 0
) -> ExplainerClassifier:
    """A SmallVGG (widths 4, 8) with a 2-level explainer (widths 4, 8)."""
    torch.manual_seed(seed)
    clf = SmallVGG(in_channels, classes, spatial_dims=rank, widths=(4, 8))
    return ExplainerClassifier(clf, in_channels=in_channels, spatial_dims=rank, widths=(4, 8))


def make_blobs(n: int = 32, size: int = 16, seed: int = 0, rank: int = 2) -> TensorItems:
    """Class 1: a bright square somewhere on noise; class 0: noise only. Weak mask: the
    square (class 1) or nothing (class 0)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3) + (size,) * rank
    images = 0.2 * torch.rand(shape, generator=g)
    masks = torch.zeros((n, 1) + (size,) * rank)
    labels = torch.arange(n) % 2
    side = size // 4
    for i in range(n):
        if labels[i] == 1:
            lo = torch.randint(0, size - side, (rank,), generator=g).tolist()
            where = (i, slice(None), *(slice(a, a + side) for a in lo))
            images[where] += 0.8
            masks[(i, slice(None), *(slice(a, a + side) for a in lo))] = 1
    return TensorItems(images, labels, masks)


def blob_datasets(**kwargs: Any) -> tuple[TensorItems, TensorItems]:
    """A dataset factory for configs (``'<this file>:blob_datasets'``): ``(train, val)``."""
    return make_blobs(32, seed=0, **kwargs), make_blobs(16, seed=1, **kwargs)


def make_fast_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A training config for the tiny model and data: a few seconds on a CPU."""
    config: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"),
        "data": {"source": "factory", "factory": f"{__file__}:blob_datasets"},
        "model": {
            "classifier": "esegeta_xml.classifiers:small_vgg",
            "kwargs": {"in_channels": 3, "classes": 2, "widths": [4, 8]},
            "widths": [4, 8],
        },
        "phases": {
            "classifier": {"epochs": 4, "lr_classifier": 0.01},
            "explainer": {"epochs": 2},
            "both": {"epochs": 2},
        },
        "optimizer": "adam",
        "batch_size": 8,
        "device": "cpu",
        "progress": False,
    }
    config.update(changes)
    return config


@pytest.fixture(scope="session")
def tiny_joint() -> Callable[..., ExplainerClassifier]:
    """Builds the tiny joint model: ``tiny_joint(rank=2, in_channels=3, classes=2)``."""
    return make_tiny_joint


@pytest.fixture(scope="session")
def blobs() -> Callable[..., TensorItems]:
    """Builds the blob data: ``blobs(n=32, size=16, seed=0, rank=2)``."""
    return make_blobs


@pytest.fixture(scope="session")
def fast_config() -> Callable[..., dict[str, Any]]:
    """Builds a fast training config: ``fast_config(tmp_path, **changes)``."""
    return make_fast_config

"""Where a model runs, seeding torch's generators there for one call, and torch's
thread count for a block.

Both ``explain()`` and every metric need the model's device (to move inputs to it) and
a seeded block (stochastic methods, the metrics' noise) that leaves the global random
state as it was; one home keeps them alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's generators (CPU and ``device``) for the body only, restoring their
    state after; ``None``: no-op."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` CPU threads for torch, then restore the count: tiny
    models gain nothing from more, training on one is reproducible, and several per
    process oversubscribe a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)

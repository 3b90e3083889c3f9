"""Models for the Ray tests, shipped to the actors as a factory file (no install needed).

The first voxel of the input picks a behaviour: 777 crashes the worker process (a
segfault), 555 hangs (for time limits); any other input is explained normally, after
``delay`` seconds per forward pass (to make jobs long enough to kill a node mid-run).
"""

from __future__ import annotations

import ctypes
import time

import torch
from torch import nn

from esegeta_core.testing.models import tiny_model

CRASH, HANG = 777.0, 555.0


class Sentinel(nn.Module):
    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.net = tiny_model("classification", 3)
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = float(x.detach().reshape(-1)[0])
        if first == CRASH:
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        if first == HANG:
            time.sleep(3600)
        if self.delay:
            time.sleep(self.delay)
        return self.net(x)


def sentinel_model(delay: float = 0.0) -> nn.Module:
    return Sentinel(delay).eval()

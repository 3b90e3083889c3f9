"""A model factory for the run stress test (tests/test_run_stress.py).

Loaded by file path from the run config (``'.../run_stress_models.py:slow_segmenter'``),
so spawned workers import it too. Each process that builds the model writes its pid to
``pid_dir`` (the test checks with ``ps`` that none outlives a killed run), and every
forward pass sleeps ``delay`` seconds so that kills land in the middle of jobs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from esegeta_core.testing import tiny_model


class _Slow(nn.Module):
    def __init__(self, inner: nn.Module, delay: float) -> None:
        super().__init__()
        self.inner, self.delay = inner, delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return self.inner(x)


def slow_segmenter(pid_dir: str, delay: float = 0.05) -> nn.Module:
    """The tiny 3D segmenter, seeded, slowed down by ``delay`` per forward pass."""
    Path(pid_dir).mkdir(parents=True, exist_ok=True)
    (Path(pid_dir) / str(os.getpid())).touch()
    return _Slow(tiny_model("segmentation", 3), delay)

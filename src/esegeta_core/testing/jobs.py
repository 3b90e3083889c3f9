"""Picklable job runners for testing the scheduler (importable by spawned workers)."""

from __future__ import annotations

import os
import time
from typing import Any


def scripted_runner(job: dict[str, Any], device: str) -> dict[str, Any]:
    """Do what the job says: ``sleep`` seconds, then ``raise``, ``exit`` or return."""
    time.sleep(float(job.get("sleep", 0)))
    action = job.get("action", "ok")
    if action == "raise":
        raise RuntimeError(f"job asked to fail: {job.get('message', '')}")
    if action == "exit":
        os._exit(3)
    import torch

    return {
        "pid": os.getpid(),
        "device": device,
        "value": job.get("value"),
        "threads": torch.get_num_threads(),
    }


def busy_runner(job: dict[str, Any], device: str) -> dict[str, Any]:
    """Burn CPU for ``work`` matrix multiplications (throughput benchmarks)."""
    import torch

    a = torch.randn(256, 256)
    for _ in range(int(job.get("work", 50))):
        a = torch.tanh(a @ a)
    return {"checksum": float(a.sum())}


class DiesOnStart:
    """A runner whose unpickling kills the worker process: a worker that dies on start."""

    def __init__(self) -> None:
        self.code = 5  # pickle calls __setstate__ only for a non-empty state

    def __call__(self, job: dict[str, Any], device: str) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        os._exit(int(state.get("code", 5)))

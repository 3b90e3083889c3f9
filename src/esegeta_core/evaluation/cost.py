"""What a call costs: wall-clock seconds and peak memory.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` above what was allocated
before the call. On the CPU torch's allocations are invisible to ``tracemalloc``, so a
sampling thread reads the process's resident set size (``/proc/self/statm``, Linux)
every few milliseconds and reports the peak above the value at the start; elsewhere
the CPU peak is ``None``. The start comes after the heap's free pages went back to the
kernel (:func:`~esegeta_core.runtime.heap.give_back`): ``explain()`` keeps up to 1 GiB
freed between calls, and a call that found its memory there grew by nothing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from esegeta_core.runtime import heap

__all__ = ["Cost", "measure"]

T = TypeVar("T")
_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Cost:
    """``seconds`` of wall-clock time and ``peak_mb`` of extra memory (None: unknown)."""

    seconds: float
    peak_mb: float | None


def _rss() -> int | None:
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class _RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.start_rss = _rss()
        self.peak = self.start_rss or 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            rss = _rss()
            if rss is not None and rss > self.peak:
                self.peak = rss

    def stop(self) -> float | None:
        self._stop_event.set()
        self.join()
        rss = _rss()
        if self.start_rss is None or rss is None:
            return None
        return max(self.peak, rss) - self.start_rss


def measure(fn: Callable[[], T], device: torch.device) -> tuple[T, Cost]:
    """Run ``fn()`` and return its result with its :class:`Cost` on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return result, Cost(seconds, peak)
    heap.give_back()  # memory an earlier call left free would hide this call's
    sampler = _RssSampler()
    sampler.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        extra = sampler.stop()
    return result, Cost(seconds, None if extra is None else extra / 2**20)

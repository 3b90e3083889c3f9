"""Freed CPU memory kept for the next pass while a call runs (Linux, glibc).

glibc's ``malloc`` maps every block above its mmap threshold (dynamic, at most 32 MiB
on 64-bit) straight from the kernel and unmaps it when freed. A forward pass whose
activations outgrow that (a 3D network's passes of 16 volumes at 48^3) gets fresh pages
for them on every pass, and each page faults and is zeroed. Measured on 2 CPU threads,
217 inputs in passes of 16 (:mod:`benchmarks.bench_heap` measures it again):

- MONAI DenseNet121-3D at 48^3: 4.76-5.57 s, 360-5,150 page faults per input (the
  first passes of a process fault most, before the threshold has grown); with freed
  blocks kept, 4.39-4.57 s and none;
- a MONAI U-Net-3D at 48^3: 0.65-0.77 s with 700-830 faults per input against
  0.48-0.52 s and none, so that passes of 16 cost what passes of 4 cost.

So for the length of an ``explain()`` call on the CPU, :func:`held_heap` keeps freed
blocks in the heap (``M_MMAP_MAX`` 0, no trimming); when the last call running in the
process ends, it hands the free pages back to the kernel (``malloc_trim``) where the
process grew by more than :data:`KEEP_RESIDENT` meanwhile, and leaves
glibc with the thresholds its dynamic rule reaches in such work (32 MiB, trimming above
64 MiB), not with the small start-up ones (no call can read those back, and setting
any of them ends the dynamic rule for the process). ``ESEGETA_HOLD_HEAP=0`` turns it
off (for a process that tunes ``malloc`` itself or preloads another allocator).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
import threading
from collections.abc import Iterator
from functools import cache

import torch

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
"""glibc's ``mallopt`` parameters (``malloc.h``)."""

MMAP_THRESHOLD_AFTER = 32 * 2**20
"""The mmap threshold left after a call: the most glibc's dynamic rule reaches."""
TRIM_THRESHOLD_AFTER = 2 * MMAP_THRESHOLD_AFTER
"""The trim threshold left after a call: twice the mmap threshold, as the rule sets."""
MMAP_MAX_AFTER = 65536
"""glibc's default most mappings (``DEFAULT_MMAP_MAX``)."""
TRIM_NEVER = 2**31 - 1
"""The trim threshold during a call: the largest ``mallopt`` takes (an ``int``)."""

KEEP_RESIDENT = 256 * 2**20
"""Most bytes the process may have grown in memory over a hold before its freed pages
go back to the kernel at the end. Giving them back after every call made the next call
fault them in again: a ResNet-50 at 64 px's occlusion (65 inputs) took 6% longer per
call than under glibc's defaults; neuron feature ablation on it (17 inputs) took
0.080 s in the benchmark's process, whose heap held more than this freed from earlier
calls, and 0.068 s once the pages stayed."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_lock = threading.Lock()
_depth = 0
_resident_at_start = 0


@cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where ``malloc`` is another (macOS, Windows, musl)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def enabled() -> bool:
    """Whether calls hold freed memory here: glibc, and not turned off by
    ``ESEGETA_HOLD_HEAP=0``."""
    return os.environ.get("ESEGETA_HOLD_HEAP", "1") != "0" and _libc() is not None


def _set(libc: ctypes.CDLL, settings: tuple[tuple[int, int], ...]) -> None:
    for param, value in settings:
        if not libc.mallopt(param, value):
            log.debug("mallopt(%d, %d) refused", param, value)


def _resident() -> int:
    """Bytes of the process in memory (``/proc/self/statm``); -1 when unreadable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return -1


@contextlib.contextmanager
def held_heap(device: torch.device) -> Iterator[None]:
    """Keep freed blocks in the heap while the block runs on the CPU (see the module);
    nested and concurrent calls share one hold, ended by the last."""
    global _depth, _resident_at_start
    libc = _libc() if device.type == "cpu" and enabled() else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _resident_at_start = _resident()
            _set(libc, ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_NEVER)))
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(
                    libc,
                    (
                        (M_MMAP_MAX, MMAP_MAX_AFTER),
                        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_AFTER),
                        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_AFTER),
                    ),
                )
                now = _resident()
                if now < 0 or _resident_at_start < 0 or now - _resident_at_start > KEEP_RESIDENT:
                    libc.malloc_trim(0)

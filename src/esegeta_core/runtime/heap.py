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
process ends, it hands the free pages back to the kernel (``malloc_trim``) where they
are more than :data:`KEEP_FREE`, and leaves
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

KEEP_FREE = 256 * 2**20
"""Most freed bytes a call leaves in the heap; more go back to the kernel. Giving back
every page after each call made the next call fault them in again: a ResNet-50 at 64
px's occlusion (65 inputs) took 6% longer per call than under glibc's defaults."""

_lock = threading.Lock()
_depth = 0


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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _free_bytes(libc: ctypes.CDLL) -> int:
    """Freed bytes the heap holds (``mallinfo2().fordblks``, glibc 2.33+); where the
    call is missing, more than :data:`KEEP_FREE` (so the pages go back)."""
    info = getattr(libc, "mallinfo2", None)
    if info is None:
        return KEEP_FREE + 1
    info.restype = _MallInfo2
    return int(info().fordblks)


@contextlib.contextmanager
def held_heap(device: torch.device) -> Iterator[None]:
    """Keep freed blocks in the heap while the block runs on the CPU (see the module);
    nested and concurrent calls share one hold, ended by the last."""
    global _depth
    libc = _libc() if device.type == "cpu" and enabled() else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
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
                if _free_bytes(libc) > KEEP_FREE:
                    libc.malloc_trim(0)

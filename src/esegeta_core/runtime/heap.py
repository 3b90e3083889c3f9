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
blocks in the heap (``M_MMAP_MAX`` 0, no trimming). When the last call running in the
process ends, the process keeps up to :data:`KEEP_RESIDENT` of what it freed, for the
next call (glibc then trims the top of the heap above that, and between calls maps a
block above 32 MiB that the kept memory cannot hold from the kernel: the thresholds its
dynamic rule reaches in such work; no call can read the start-up ones back, and setting
any of them ends that rule for the process); a process that grew by more than that
over the call gives every free page back (``malloc_trim``). ``ESEGETA_HEAP_KEEP_MB``
sets how much is kept (0: none). :func:`give_back` does so on request: the CPU
cost measurement (:mod:`esegeta_core.evaluation.cost`) starts from it, so that a call
is not measured as free because an earlier one left it memory. ``ESEGETA_HOLD_HEAP=0``
turns it all off (for a process that tunes ``malloc`` itself or preloads another
allocator).
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

from esegeta_core.errors import InvalidParamsError

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
"""glibc's ``mallopt`` parameters (``malloc.h``)."""

MMAP_THRESHOLD_AFTER = 32 * 2**20
"""The mmap threshold left after a call: the most glibc's dynamic rule reaches."""
GLIBC_TRIM = 2 * MMAP_THRESHOLD_AFTER
"""The least trim threshold left after a call: what glibc's own rule sets with that
mmap threshold (a smaller kept amount is then given back by ``malloc_trim``)."""
MMAP_MAX_AFTER = 65536
"""glibc's default most mappings (``DEFAULT_MMAP_MAX``)."""
TRIM_NEVER = 2**31 - 1
"""The trim threshold during a call: the largest ``mallopt`` takes (an ``int``)."""

KEEP_RESIDENT = 2**30
"""Most freed bytes the process keeps between calls (glibc's trim threshold after a
call), and most it may have grown over a call before every free page goes back to the
kernel at its end. Pages given back are faulted in again by the next call: a MONAI
DenseNet121-3D's Ablation-CAM at 48^3 grows by about 400 MiB over a call; keeping at
most 64 MiB (glibc's own rule) made each repeated call fault 110,000-122,000 pages
and take 0.43 s, against 5-96 faults and 0.34-0.37 s with them kept. Giving them back after
every call also made a ResNet-50 at 64 px's occlusion (65 inputs) 6% slower per call
than glibc's defaults."""
KEEP_VARIABLE = "ESEGETA_HEAP_KEEP_MB"
"""Environment variable that sets the bytes kept between calls in MiB, instead of
:data:`KEEP_RESIDENT` (0: every free page back after each call, for a process that
shares the machine with others, e.g. several Ray workers)."""

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


def kept_bytes() -> int:
    """Most freed bytes the process keeps between calls: :data:`KEEP_VARIABLE` in MiB,
    else :data:`KEEP_RESIDENT`; a value that is not a whole number >= 0 is refused."""
    raw = os.environ.get(KEEP_VARIABLE)
    if raw is None or raw.strip() == "":
        return KEEP_RESIDENT
    try:
        mib = int(raw)
    except ValueError:
        mib = -1
    if mib < 0:
        raise InvalidParamsError(
            f"{KEEP_VARIABLE} must be a whole number of MiB >= 0 (0 gives freed memory back "
            f"after every call), got {raw!r}; unset it to keep up to "
            f"{KEEP_RESIDENT // 2**20} MiB."
        )
    return mib * 2**20


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
    keep = kept_bytes()  # refused before the call runs, not after it
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
                        (M_TRIM_THRESHOLD, min(max(keep, GLIBC_TRIM), TRIM_NEVER)),
                    ),
                )
                now = _resident()
                if now < 0 or _resident_at_start < 0 or now - _resident_at_start > keep:
                    libc.malloc_trim(0)


def give_back() -> None:
    """Return every free page of the heap to the kernel (glibc, unless turned off; a
    no-op elsewhere and while a call holds the heap): a measurement of a call's memory
    starts from the memory the process needs, not from what earlier calls left free."""
    libc = _libc() if enabled() else None
    if libc is None:
        return
    with _lock:
        if _depth == 0:
            libc.malloc_trim(0)

"""Interleaved timing rounds shared by the benchmarks: every variant once per round, the
round's order rotated by one each time (no variant always runs first, after the same
neighbour or on a cold machine), each variant's best kept."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any


def best_of_rounds(variants: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """The best wall time in seconds of each of ``variants`` over ``repeats`` rounds."""
    best = {key: math.inf for key in variants}
    keys = list(variants)
    for r in range(repeats):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            variants[key]()
            best[key] = min(best[key], time.perf_counter() - start)
    return best

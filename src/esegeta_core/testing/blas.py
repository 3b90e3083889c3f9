"""How many threads numpy's and scipy's BLAS libraries run, and a spy that records it on
each call of a method: tests that a method's host fits run on one BLAS thread
(:mod:`esegeta_core.runtime.host_blas`)."""

from __future__ import annotations

from typing import Any

import pytest


def blas_threads() -> list[int]:
    """The thread count of every BLAS library loaded in the process (numpy's, scipy's);
    the test is skipped without threadpoolctl."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    infos = threadpoolctl.threadpool_info()
    return [info["num_threads"] for info in infos if info["user_api"] == "blas"]


def threaded_blas() -> list[int]:
    """:func:`blas_threads` once numpy's BLAS is loaded; the test is skipped where no
    BLAS library loaded so far runs more than one thread (nothing to limit: a machine
    of one core, or ``OPENBLAS_NUM_THREADS=1``)."""
    import numpy as np

    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded
    before = blas_threads()
    if not before or max(before) < 2:
        pytest.skip("no BLAS library with more than one thread here to limit")
    return before


def spy_blas_threads(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[list[int]]:
    """Patch ``owner.name`` to record :func:`blas_threads` on each call (the list
    returned, filled as calls come); skipped as :func:`threaded_blas` says. Load the
    libraries the method uses before calling this (import scipy or scikit-learn)."""
    threaded_blas()
    seen: list[list[int]] = []
    original = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(blas_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen

"""numpy's BLAS on one thread for a method's host fits (``esegeta_core.runtime.host_blas``):
limited inside the block, as it was after it, and a no-op without threadpoolctl."""

from __future__ import annotations

import sys

import numpy as np

from esegeta_core.runtime.host_blas import one_blas_thread
from esegeta_core.testing.blas import blas_threads, threaded_blas


def test_blas_runs_on_one_thread_inside_and_as_before_after():
    before = threaded_blas()
    with one_blas_thread():
        assert blas_threads() == [1] * len(before)
        product = np.ones((64, 64)) @ np.ones((64, 64))
    assert blas_threads() == before
    assert float(product[0, 0]) == 64.0


def test_without_threadpoolctl_the_block_runs_as_is(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    ran = []
    with one_blas_thread():
        ran.append(True)
    assert ran == [True]

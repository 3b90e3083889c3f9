"""numpy's and scipy's BLAS kept to the calling thread for a method's small host fits.

A surrogate's fit (KernelSHAP's and Captum LIME's scikit-learn models, ``lime``'s ridge
regressions and distances) calls OpenBLAS, whose worker threads keep spinning for a
while after each call, waiting for more. On a CPU they then take cores from the torch
threads of the passes that follow: the next item's samples, or the next call's. On 2
cores, a ResNet-50 at 64 px ran 200 inputs in passes of 64 in 0.54 s after bare passes
and in 0.60-0.62 s right after a scikit-learn ``LinearRegression`` fit of 200 x 64 (or
a numpy product of two 300 x 300 matrices); 0.3 s later, 0.55 s. These fits are small
(hundreds of samples, tens of features) and, on one thread, leave no worker spinning:
KernelSHAP's call on that ResNet-50 (200 samples, one fit) right after another call
took 0.633 s before and 0.558 s with its fit on one thread, as long as its bare passes.
The fits themselves took no longer on one thread (2 cores, medians of 30: scikit-learn's
weighted ``LinearRegression`` of 200 x 64 1.6 ms against 2.0, of 5,000 x 200 45 against
49 ms; ``Ridge`` of 5,000 x 200 13.5 against 16.4 ms). torch's own BLAS is not limited.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Within the block, the BLAS libraries that numpy and scipy load (OpenBLAS, MKL,
    BLIS) run on the calling thread only; their thread counts are restored after it.
    A no-op where ``threadpoolctl`` (a scikit-learn dependency) is not installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without scikit-learn there is no surrogate fit to quiet
        log.debug("threadpoolctl is not installed; BLAS threads are left as they are")
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield

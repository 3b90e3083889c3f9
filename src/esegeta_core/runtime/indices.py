"""Numbers made on the host for a pass, put on the device without waiting for it.

A perturbation engine decides on the host which slot of a pass holds which item, which
steps a coalition reached, which channels an ablation sets: a list of ints per pass.
``torch.tensor(values, device=cuda)`` copies them from pageable memory, and CUDA makes
that copy wait for every kernel queued before it, so the host stops feeding the device
once per pass (with thousands of passes, what leaves a GPU idle). A Python number
written through an index (``t[idx] = 0.5``) is copied the same way. Here the values go
through pinned memory and are copied asynchronously, in the stream's order, and a fill
value is made on the device by a kernel. On the CPU both are plain tensors.

``esegeta_core.testing.syncs`` counts what still waits: tests run each engine at two
pass sizes and find no wait that grows with the passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def device_index(
    values: Sequence[int] | np.ndarray | torch.Tensor, device: torch.device
) -> torch.Tensor:
    """``values`` (ints, a NumPy array or a CPU tensor of them) as a long tensor on
    ``device``; on CUDA copied from pinned memory without blocking the host."""
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    if device.type != "cuda":
        if isinstance(values, torch.Tensor):
            return values.to(device=device, dtype=torch.long)
        return torch.tensor(values, dtype=torch.long, device=device)
    if isinstance(values, torch.Tensor):
        host = values.to(dtype=torch.long).pin_memory()
    else:
        host = torch.tensor(values, dtype=torch.long, pin_memory=True)
    return host.to(device, non_blocking=True)


def device_scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-dim tensor of ``like``'s dtype on its device, filled there (an
    indexed write of a Python number would copy it from the host)."""
    return torch.full((), value, dtype=like.dtype, device=like.device)

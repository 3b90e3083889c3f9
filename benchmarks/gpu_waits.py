"""Waits for the device per pass, for every perturbation method, on a GPU (issue 19).

Each method runs on the tiny models at 1 and at 4 inputs per pass. On CUDA the count is
CUDA's own: ``torch.cuda.set_sync_debug_mode("warn")`` warns at every synchronising
call, and the warnings are counted; elsewhere the CPU proxy of
:mod:`esegeta_core.testing.syncs` counts the operations that would wait. A count that
differs between the two pass sizes is a wait per pass. Prints a table and writes JSON
with ``--out``; exits 1 when some method waits per pass.

    python benchmarks/gpu_waits.py --device cuda --out benchmarks/results/waits_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from esegeta_core import explain
from esegeta_core.plugin.manager import get_registry
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.testing.syncs import (
    PASS_CASES,
    case_params,
    host_waits,
    scores_as_on_a_gpu,
    waits_per_pass,
)


@contextlib.contextmanager
def cuda_waits() -> Iterator[Counter[str]]:
    """CUDA's own count of synchronising calls in the block, by warning text."""
    counts: Counter[str] = Counter()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in seen:
        text = str(w.message)
        # not the notice of the first call ("Synchronization debug mode is a prototype
        # feature ..."), which counted as a wait of the first method's first size
        if "synchroniz" in text and "prototype feature" not in text:
            counts[text.splitlines()[0][:100]] += 1


def run(
    model: torch.nn.Module,
    x: torch.Tensor,
    name: str,
    task: str,
    size_param: str,
    params: dict[str, Any],
    size: int,
) -> None:
    """One call of ``name`` at ``size`` inputs per pass."""
    explain(
        model, x, name, target=[1, 0], task=task, seed=0, progress=False,
        **{size_param: size}, **params,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cuda for the first GPU, or cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    device = torch.device(args.device)
    counter = cuda_waits if device.type == "cuda" else host_waits
    registry = get_registry()
    rows = []
    for task in ("classification", "segmentation"):
        for name in PASS_CASES:
            cls = registry.get(name)
            if task not in cls.tasks:
                continue
            size_param = cls.pass_params[0]
            params = case_params(name, task)
            model = tiny_model(task).to(device)
            x = tiny_input(task, batch=2, seed=1).to(device)

            call = functools.partial(run, model, x, name, task, size_param, params)
            with scores_as_on_a_gpu() if device.type == "cpu" else contextlib.nullcontext():
                excess = waits_per_pass(call, counter=counter)
            rows.append({"method": name, "task": task, "waits_per_pass": excess})
            print(f"{name:34s} {task:15s} {excess or 'none'}")
    failing = [r for r in rows if r["waits_per_pass"]]
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "counter": "torch.cuda.set_sync_debug_mode" if device.type == "cuda" else "CPU proxy",
        "rows": rows,
        "methods_waiting_per_pass": len(failing),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())

"""Freed memory held during a call against glibc's defaults, side by side.

``explain()`` on the CPU keeps freed blocks in the heap while it runs
(:mod:`esegeta_core.runtime.heap`); glibc otherwise maps every block above its mmap
threshold from the kernel and unmaps it when freed, so passes whose activations outgrow
the threshold fault in fresh pages every time. The setting is process-wide and cannot
be undone, so each mode runs in a process of its own, on the same cases:

- **glibc**: ``ESEGETA_HOLD_HEAP=0``, the floor's passes as a user's loop runs them;
- **held**: the default, the floor's passes inside :func:`~esegeta_core.runtime.heap.held_heap`.

Per case and mode: the bare forward passes of an occlusion (its windows and one
reference input) at each pass size, two rounds, each size's best kept and its page
faults per input; and ``explain(method="captum.occlusion")`` at its defaults, the
process's first call and the best of four more. Run::

    python benchmarks/bench_heap.py --out benchmarks/results/heap_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

CASES = ("densenet3d", "unet3d", "resnet50")
MODES = ("glibc", "held")


def _case(key: str) -> tuple[str, nn.Module, torch.Tensor, list[int], int | None, str]:
    """Label, model, input, pass sizes, target, task of one case (random weights)."""
    torch.manual_seed(0)
    if key == "densenet3d":
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=3)
        x = torch.randn(1, 1, 48, 48, 48)
        return "MONAI DenseNet121-3D 48^3", net, x, [4, 8, 16, 32], None, "classification"
    if key == "unet3d":
        from monai.networks.nets import UNet

        net = UNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2))
        x = torch.randn(1, 1, 48, 48, 48)
        return "MONAI U-Net-3D 48^3, segmentation", net, x, [4, 8, 16, 32], 1, "segmentation"
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    return "ResNet-50 64 px", net, torch.randn(1, 3, 64, 64), [16, 32, 64], None, "classification"


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(fn: Callable[[], object], inputs: int) -> tuple[float, float]:
    """Seconds of ``fn`` and its page faults per input."""
    faults, start = _faults(), time.perf_counter()
    fn()
    return time.perf_counter() - start, (_faults() - faults) / inputs


def measure(key: str, mode: str) -> dict[str, Any]:
    """One case in one mode (in this process: the mode must be its first)."""
    import esegeta_core as ec
    from esegeta_core.runtime import heap

    label, net, x, sizes, target, task = _case(key)
    net.eval()
    count = 1 + int(torch.tensor([(n - 8) // 8 + 1 for n in x.shape[2:]]).prod())
    hold = mode == "held" and heap.enabled()

    def floor(size: int) -> Callable[[], None]:
        batch = x.repeat(size, *[1] * (x.ndim - 1))

        def run() -> None:
            with torch.no_grad(), heap.held_heap(x.device) if hold else nullcontext():
                for start in range(0, count, size):
                    net(batch[: min(size, count - start)])

        return run

    floors: dict[int, list[float]] = {}
    with torch.no_grad():
        for size in sizes:
            net(x.repeat(size, *[1] * (x.ndim - 1)))
    for r in range(2):
        for size in sizes if r == 0 else sizes[::-1]:
            seconds, faults = _timed(floor(size), count)
            best = floors.setdefault(size, [seconds, faults])
            if seconds < best[0]:
                floors[size] = [seconds, faults]

    def call() -> None:
        ec.explain(
            net, x, "captum.occlusion", target, task=task, progress=False, window=8, strides=8
        )

    first, first_faults = _timed(call, count)
    later = min(_timed(call, count) for _ in range(4))
    best_size = min(floors, key=lambda s: floors[s][0])
    return {
        "case": label,
        "mode": mode,
        "held": hold,
        "inputs": count,
        "floor": {
            str(s): {"seconds": round(v[0], 4), "faults_per_input": round(v[1])}
            for s, v in floors.items()
        },
        "floor_best": round(floors[best_size][0], 4),
        "floor_best_pass_size": best_size,
        "explain_first_call": round(first, 4),
        "explain_first_call_faults_per_input": round(first_faults),
        "explain_settled": round(later[0], 4),
        "explain_settled_faults_per_input": round(later[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--one", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    started, rows = time.perf_counter(), []
    for key in args.cases.split(","):
        for mode in MODES:
            env = {**os.environ, "ESEGETA_HOLD_HEAP": "1" if mode == "held" else "0"}
            done = subprocess.run(
                [sys.executable, __file__, "--one", key, mode],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for row in rows:
        if row["mode"] == "held":
            base = next(r for r in rows if r["case"] == row["case"] and r["mode"] == "glibc")
            row["held_over_glibc"] = {
                k: round(row[k] / base[k], 3)
                for k in ("floor_best", "explain_first_call", "explain_settled")
            }
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {' '.join(platform.libc_ver())}",
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

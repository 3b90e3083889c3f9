"""Where a perturbation call's time goes beyond its floor: calls at fixed pass sizes
against the bare passes at the same sizes, side by side.

``bench_perturbation.py`` times each method's call against its floor, the bare forward
passes at the best pass size of a sweep. On the cheapest model there (a MONAI U-Net-3D
at 48^3, 2.2 ms per input) ``auto_batch`` stays above 1.1x that floor. This separates
the two possible causes: a pass size the planner missed, or the method's own work per
input (making each perturbed input, reducing each output to the target's score). Per
row, interleaved, the best of ``--repeats`` rounds of:

- ``floor N``: the bare passes of N inputs, one prebuilt pass's inputs run again and
  again (``bench_perturbation.py``'s floor);
- ``distinct N``: the same passes, each on inputs of its own (as many prebuilt inputs
  as the method perturbs: no pass finds its input in the cache);
- ``call N``: ``explain()`` with its pass parameter set to N inputs per pass.

If the calls at every size are level, no plan gets closer to the floor; what is left is
the method's own work. Run::

    python benchmarks/bench_pass_sizes.py --out benchmarks/results/pass_sizes_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rounds import best_of_rounds
from torch import nn

import esegeta_core as ec
from esegeta_core.runtime import heap

SIZES = (4, 8, 16)
SIDE = 48
# method: (params for batch B, pass parameter, whether it counts copies of each item,
# passes for batch B)
ROWS: dict[str, tuple[Callable[[int], dict[str, Any]], str, bool, Callable[[int], int]]] = {
    "captum.occlusion": (
        lambda b: {"window": 8, "strides": 8},
        "perturbations_per_eval",
        True,
        lambda b: ((SIDE // 8) ** 3 + 1) * b,
    ),
    "cnnvis.rise": (
        lambda b: {"num_masks": 256 if b == 1 else 128},
        "batch_size",
        False,
        lambda b: (256 if b == 1 else 128) * b,
    ),
}


def _floor(net: nn.Module, x: torch.Tensor, count: int, size: int, distinct: bool) -> Callable:
    """The bare passes: ``count`` inputs (the batch's items in turn), ``size`` per pass."""
    b = x.shape[0]
    reps = -(-(count if distinct else size) // b)
    inputs = x.repeat(reps, *([1] * (x.ndim - 1)))[: count if distinct else size].contiguous()
    with torch.no_grad():
        net(inputs[:size])

    def run() -> None:
        with torch.no_grad(), heap.held_heap(x.device):
            for start in range(0, count, size):
                n = min(size, count - start)
                net(inputs[start : start + n] if distinct else inputs[:n])

    return run


def _call(
    net: nn.Module,
    x: torch.Tensor,
    method: str,
    params: dict[str, Any],
    name: str,
    per_item: bool,
    size: int,
) -> Callable[[], Any]:
    """``explain()`` with its pass parameter set to ``size`` inputs per pass."""
    value = max(1, size // x.shape[0]) if per_item else size
    return lambda: ec.explain(
        net, x, method, 1, task="segmentation", progress=False, seed=0, **params, **{name: value}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,4")
    args = parser.parse_args()
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2)).eval()
    rows = []
    started = time.perf_counter()
    for b in (int(v) for v in args.batches.split(",")):
        x = torch.randn(b, 1, SIDE, SIDE, SIDE)
        for method, (params_of, name, per_item, passes_of) in ROWS.items():
            params, count = params_of(b), passes_of(b)

            variants: dict[str, Callable[[], Any]] = {}
            for size in SIZES:
                variants[f"floor {size}"] = _floor(net, x, count, size, distinct=False)
                variants[f"distinct {size}"] = _floor(net, x, count, size, distinct=True)
                variants[f"call {size}"] = _call(net, x, method, params, name, per_item, size)
            for fn in variants.values():  # one untimed run each: set-up out of the timings
                fn()
            best = best_of_rounds(variants, args.repeats)
            floor = min(best[f"floor {s}"] for s in SIZES)
            calls = [best[f"call {s}"] for s in SIZES]
            row = {
                "method": method,
                "batch": b,
                "params": params,
                "passes": count,
                "seconds": {k: round(v, 4) for k, v in best.items()},
                "floor_best": round(floor, 4),
                "call_over_floor": {s: round(best[f"call {s}"] / floor, 3) for s in SIZES},
                "distinct_over_floor": {s: round(best[f"distinct {s}"] / floor, 3) for s in SIZES},
                "calls_spread": round(max(calls) / min(calls), 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "benchmark": "bench_pass_sizes",
        "case": f"MONAI UNet 3D (8, 16, 32), {SIDE}^3, segmentation, class 1, random weights",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

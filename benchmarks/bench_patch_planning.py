"""Perturbation methods in patches: ``auto_batch=True`` against the default, side by side.

With patches, ``explain(auto_batch=True)`` runs each patch batch's perturbation passes
through the pass planner, as for a whole input (issue 19). Before, it sized them for
memory alone: every input that fits per pass. This runs, on a MONAI U-Net-3D
(random weights) explained as segmentation over a 96 x 48 x 48 volume in two 48^3
patches, interleaved, the best of ``--repeats`` rounds of:

- ``floor``: the bare forward passes of the patches' perturbations, at the best pass
  size of a sweep (4, 8, 16, 32), prebuilt;
- ``default``: ``explain()`` as is (the CPU's default pass size);
- ``auto``: ``auto_batch=True``, the plan settled (its first call is in the JSON);
- ``memory_sized``: the pass parameter set to the count ``auto_batch`` hands the method
  (what it ran before the planner took patches).

Run::

    python benchmarks/bench_patch_planning.py --out benchmarks/results/patch_planning_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rounds import best_of_rounds

import esegeta_core as ec
from esegeta_core.plugin.manager import get_registry
from esegeta_core.runtime import heap, passes
from esegeta_core.runtime.batching import plan_batches
from esegeta_core.targets import score_model

PATCH = 48
PATCHES = {"size": PATCH, "overlap": 0, "mode": "average", "batch_size": 1}
ROWS: dict[str, tuple[dict[str, Any], str, int]] = {
    # method: (params, pass parameter, passes per patch)
    "captum.occlusion": ({"window": 8, "strides": 8}, "perturbations_per_eval", 6**3 + 1),
    "cnnvis.rise": ({"num_masks": 128}, "batch_size", 128),
}


def _floor(net: torch.nn.Module, count: int, size: int) -> Callable[[], None]:
    batch = torch.randn(size, 1, PATCH, PATCH, PATCH)
    with torch.no_grad():
        net(batch)

    def run() -> None:
        with torch.no_grad(), heap.held_heap(batch.device):
            for start in range(0, count, size):
                net(batch[: min(size, count - start)])

    return run


def _handed(net: torch.nn.Module, method: str, params: dict[str, Any], name: str) -> int:
    """The count ``auto_batch`` hands the method's pass parameter (memory-sized)."""
    cls = get_registry().get(method)
    probe = torch.randn(1, 1, PATCH, PATCH, PATCH)
    scored = score_model(net, "segmentation", "multi_class", None, None)
    sized, _ = plan_batches(cls, cls.Params(**params), scored, probe, network=net)
    return int(getattr(sized, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2)).eval()
    x = torch.randn(1, 1, 2 * PATCH, PATCH, PATCH)
    patches = math.prod(-(-n // PATCH) for n in x.shape[2:])
    rows = []
    for method, (params, name, per_patch) in ROWS.items():
        handed = _handed(net, method, params, name)

        def call(extra: dict[str, Any], method: str = method, params: dict = params) -> Any:
            return ec.explain(
                net, x, method, 1, task="segmentation", patches=PATCHES, progress=False,
                seed=0, **params, **extra,
            )  # fmt: skip

        passes.clear_plans()
        start = time.perf_counter()
        first = call({"auto_batch": True})
        first_seconds = time.perf_counter() - start
        count = per_patch * patches
        calls: dict[str, Callable[[], Any]] = {
            "default": lambda call=call: call({}),
            "auto": lambda call=call: call({"auto_batch": True}),
            "memory_sized": lambda call=call, name=name, handed=handed: call({name: handed}),
            **{f"floor {s}": _floor(net, count, s) for s in (4, 8, 16, 32)},
        }
        best = best_of_rounds(calls, args.repeats)
        floor_key = min((k for k in best if k.startswith("floor")), key=best.get)
        floor = best[floor_key]
        row = {
            "method": method,
            "params": params,
            "passes": count,
            "floor_seconds": round(floor, 4),
            "floor_pass_size": int(floor_key.split()[1]),
            "seconds": {k: round(v, 4) for k, v in best.items()},
            "ratio_to_floor": {
                k: round(best[k] / floor, 3) for k in ("default", "auto", "memory_sized")
            },
            "auto_vs_default": round(best["auto"] / best["default"], 3),
            "memory_sized_pass": handed,
            "auto_first_call_seconds": round(first_seconds, 4),
            "plan": first.extras.get("pass_plan"),
            "recorded": first.params.model_dump().get(name),
        }
        rows.append(row)
        print(json.dumps(row))
    result = {
        "benchmark": "bench_patch_planning",
        "case": f"MONAI UNet 3D (8, 16, 32), {tuple(x.shape[2:])} in {patches} patches of "
        f"{PATCH}^3, segmentation, class 1",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "rows": rows,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

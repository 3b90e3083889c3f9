"""Perturbation methods against their compute floor and their peers, side by side.

For each case (a model, an input size, a batch, a method with its windows or
features), in one run:

- **floor**: the bare forward passes the method needs (its perturbed inputs, no
  bookkeeping), at each pass size of a sweep; the best is the floor;
- **default**: the esegeta method with its default pass size;
- **auto**: ``auto_batch=True`` on a fresh process cache (the pass planner measures on the
  method's own first passes), and **auto, planned**: the same call again (the plan is
  cached per network);
- **peer**: what a user would otherwise call: Captum's class with its defaults
  (``perturbations_per_eval=1``), MONAI's ``OcclusionSensitivity`` (3D occlusion),
  TorchRay's ``rise`` (RISE; it scores every class per pass).

Ratios are to the best floor. Target (issue 19): every method <= 1.1x its floor on CPU
with ``auto_batch=True``, and never slower than without.

Run (about 5 minutes on 2 cores)::

    python benchmarks/bench_perturbation.py --out benchmarks/results/perturbation_cpu.json

``--device cuda`` runs on the first GPU; ``--quick`` only the 2D cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import esegeta_core as ec
from esegeta_core.runtime import passes


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _floor(model: torch.nn.Module, x: torch.Tensor, count: int, sizes: list[int], device, repeats):
    """Seconds of ``count`` forward passes of copies of ``x`` (one item), per pass size."""
    out = {}
    for size in sizes:
        batch = x[:1].expand(size, *x.shape[1:]).clone()

        def run(batch=batch, size=size) -> None:
            with torch.no_grad():
                for start in range(0, count, size):
                    model(batch[: min(size, count - start)])

        model(batch[:1])  # set-up
        out[size] = _timed(run, device, repeats)
    return out


def _occlusion_windows(shape: tuple[int, ...], window: int) -> int:
    n = 1
    for extent in shape:
        n *= (extent - window) // window + 1
    return n


def case(
    label: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    method: str,
    params: dict[str, Any],
    passes_per_item: int,
    peers: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    sizes: list[int],
) -> dict[str, Any]:
    """One method on one model and input, every timing in one process."""
    floor = _floor(model, x, passes_per_item * x.shape[0], sizes, device, repeats)
    best_size = min(floor, key=floor.get)
    best = floor[best_size]
    row: dict[str, Any] = {
        "case": label,
        "method": method,
        "passes": passes_per_item * x.shape[0],
        "floor_seconds": {str(k): round(v, 3) for k, v in floor.items()},
        "floor_best": round(best, 3),
        "floor_best_pass_size": best_size,
    }

    def explain(**extra: Any) -> Any:
        return ec.explain(model, x, method, 0, progress=False, **params, **extra)

    row["default"] = round(_timed(explain, device, repeats), 3)
    passes._plans.clear()
    start = time.perf_counter()
    first = explain(auto_batch=True)
    row["auto_first_call"] = round(time.perf_counter() - start, 3)
    row["auto_planned"] = round(_timed(lambda: explain(auto_batch=True), device, repeats), 3)
    row["plan"] = first.extras.get("pass_plan")
    for name, peer in peers.items():
        row[f"peer {name}"] = round(_timed(peer, device, repeats), 3)
    ratios = {
        k: round(v / best, 2) for k, v in row.items() if isinstance(v, float) and k != "floor_best"
    }
    row["ratio_to_floor"] = ratios
    return row


def captum_occlusion_peer(model, x, window: int) -> Callable[[], Any]:
    from captum.attr import Occlusion

    extent = (x.shape[1], *([window] * (x.ndim - 2)))

    def run() -> Any:
        return Occlusion(model).attribute(x, sliding_window_shapes=extent, strides=extent, target=0)

    return run


def monai_occlusion_peer(model, x, window: int) -> Callable[[], Any]:
    from monai.visualize import OcclusionSensitivity

    sensitivity = OcclusionSensitivity(model, mask_size=window, n_batch=16, overlap=0.0)

    def run() -> Any:
        with torch.no_grad():
            return sensitivity(x)

    return run


def torchray_rise_peer(model, x, masks: int) -> Callable[[], Any]:
    from torchray.attribution.rise import rise

    def run() -> Any:
        with torch.no_grad():
            return rise(model, x, num_masks=masks)  # its defaults: 32 masks per pass

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="the 2D cases only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    from torchvision.models import resnet50

    net2d = resnet50(weights=None).eval().to(device)
    for batch in (1, 4):
        x = torch.rand(batch, 3, 64, 64, device=device)
        windows = _occlusion_windows((64, 64), 8)
        rows.append(
            case(
                f"ResNet-50 64 px, batch {batch}",
                net2d,
                x,
                "captum.occlusion",
                {"window": 8, "strides": 8},
                windows + 1,
                {"captum Occlusion (defaults)": captum_occlusion_peer(net2d, x, 8)},
                device,
                repeats=3,
                sizes=[1, 8, 16, 32, 64],
            )
        )
        rows.append(
            case(
                f"ResNet-50 64 px, batch {batch}",
                net2d,
                x,
                "captum.feature_ablation",
                {"feature_mask": "grid", "grid_cell": 8},
                windows + 1,
                {},
                device,
                repeats=3,
                sizes=[1, 8, 16, 32, 64],
            )
        )
    x = torch.rand(1, 3, 64, 64, device=device)
    rows.append(
        case(
            "ResNet-50 64 px, batch 1",
            net2d,
            x,
            "cnnvis.rise",
            {"num_masks": 500, "mask_seed": 0},
            500,
            {"torchray rise (defaults)": torchray_rise_peer(net2d, x, 500)},
            device,
            repeats=2,
            sizes=[1, 8, 16, 32, 64],
        )
    )
    rows.append(
        case(
            "ResNet-50 64 px, batch 1",
            net2d,
            x,
            "lime.lime",
            {"num_samples": 500, "segmentation": "slic", "n_segments": 32},
            500,
            {},
            device,
            repeats=2,
            sizes=[1, 8, 16, 32, 64],
        )
    )
    if not args.quick:
        from monai.networks.nets import DenseNet121

        net3d = DenseNet121(spatial_dims=3, in_channels=1, out_channels=3).eval().to(device)
        x = torch.rand(1, 1, 48, 48, 48, device=device)
        windows = _occlusion_windows((48, 48, 48), 8)
        rows.append(
            case(
                "MONAI DenseNet121-3D 48^3, batch 1",
                net3d,
                x,
                "captum.occlusion",
                {"window": 8, "strides": 8},
                windows + 1,
                {"monai OcclusionSensitivity": monai_occlusion_peer(net3d, x, 8)},
                device,
                repeats=1,
                sizes=[1, 8, 16, 32],
            )
        )
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}",
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Runtime benchmarks: patches, auto batch size, scheduler, mixed precision.

Everything is measured side by side in one run and reported as ratios:

- patches: a 3D U-Net explained (saliency) on 64^3, 128^3 and 192^3 volumes with 64^3
  patches: peak memory per size (CUDA: max allocated; CPU: peak RSS of a fresh
  process per size), and time (best of 3) vs the sliding-window floor (one forward +
  backward per patch, nothing else);
- auto batch size vs Captum Occlusion at perturbations_per_eval=1 (the original's
  setting);
- scheduler: N CPU-bound jobs on k one-thread workers vs 1 (throughput ratio);
- AMP: bf16 and fp16 (CUDA) or bf16 (CPU) vs float32: speed and map correlation.

    python benchmarks/bench_runtime.py --quick --out runtime.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import esegeta_core as ec
import esegeta_core.testing
from esegeta_core.runtime.patches import PatchSpec, iterate_patches


class UNet3d(nn.Module):
    """A small two-level 3D U-Net (16/32 channels, 3 classes)."""

    def __init__(self, channels: int = 1, classes: int = 3, width: int = 16) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(i, o, 3, padding=1), nn.ReLU(), nn.Conv3d(o, o, 3, padding=1), nn.ReLU()
            )

        self.enc1 = block(channels, width)
        self.enc2 = block(width, 2 * width)
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.dec = block(2 * width, width)
        self.head = nn.Conv3d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        b = self.enc2(self.pool(a))
        return self.head(self.dec(torch.cat([a, self.up(b)], 1)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def patch_floor(model: nn.Module, x: torch.Tensor, spec: PatchSpec, target: int) -> None:
    """The sliding-window floor: one forward + backward per patch batch, nothing else."""
    wrapped = ec.ScoreModel(model, ec.MultiClassScores())
    for patches, _, _ in iterate_patches(x[0], spec):
        p = patches.to(x.device).requires_grad_(True)
        (g,) = torch.autograd.grad(wrapped(p)[:, target].sum(), p)
        g.abs()


def patches_child(size: int, patch: int, device: str, mode: str) -> dict:
    """Run in a fresh process: peak memory and time of one size."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = UNet3d().to(dev).eval()
    x = torch.rand(1, 1, size, size, size, device=dev)
    spec = PatchSpec(size=patch, overlap=0, batch_size=1)

    def call(inputs: torch.Tensor) -> None:
        if mode == "explain":
            ec.explain(
                model,
                inputs,
                "captum.saliency",
                1,
                task="segmentation",
                patches=spec,
                progress=False,
            )
        else:
            patch_floor(model, inputs, spec, 1)

    # warm-up on one patch: plugin discovery, imports and allocator, not the volume
    call(torch.rand(1, 1, patch, patch, patch, device=dev))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = _timed(lambda: call(x), dev, repeat=3)  # best of 3: one run is noisy
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "mode": mode, "seconds": seconds, "peak_bytes": peak}


def bench_patches(sizes: list[int], patch: int, device: str) -> list[dict]:
    rows = []
    for size in sizes:
        row = {"size": size}
        for mode in ("floor", "explain"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child-patches",
                    str(size),
                    "--patch",
                    str(patch),
                    "--device",
                    device,
                    "--mode",
                    mode,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            row[f"{mode}_seconds"] = result["seconds"]
            row[f"{mode}_peak_mb"] = result["peak_bytes"] / 2**20
        row["time_ratio"] = row["explain_seconds"] / row["floor_seconds"]
        rows.append(row)
    base = rows[0]["explain_peak_mb"]
    for row in rows:
        row["peak_vs_smallest"] = row["explain_peak_mb"] / base
    return rows


def bench_auto_batch(device: str, size: int) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    model = ec.testing.TinyClassifier(rank=2, width=16).to(dev).eval()
    x = torch.rand(1, 3, size, size, device=dev)
    params = {"window": 4, "strides": 2}
    one = _timed(
        lambda: ec.explain(model, x, "captum.occlusion", 0, perturbations_per_eval=1, **params), dev
    )
    auto = ec.explain(model, x, "captum.occlusion", 0, auto_batch=True, **params)
    auto_s = _timed(
        lambda: ec.explain(model, x, "captum.occlusion", 0, auto_batch=True, **params), dev
    )
    return {
        "image": size,
        "ppe1_seconds": one,
        "auto_seconds": auto_s,
        "auto_batch": auto.params.perturbations_per_eval,
        "speedup": one / auto_s,
    }


def bench_scheduler(jobs: int, work: int) -> dict:
    """Throughput of k one-thread CPU workers vs one one-thread worker (same per-worker
    resources, so the ratio is the scheduler's scaling), plus one worker given every
    core (the default for a single CPU worker) for reference. Wall times include
    spawning the workers (a fresh Python importing torch, about a second); the start-up
    is also measured alone (k trivial jobs on k workers) and the steady-state ratio
    leaves it out."""
    from esegeta_core.runtime.scheduler import run_jobs
    from esegeta_core.testing.jobs import busy_runner, scripted_runner

    todo = [(f"j{i}", {"work": work}) for i in range(jobs)]
    out: dict = {"jobs": jobs}
    cores = os.cpu_count() or 1
    for key, k, threads in (("k1", 1, 1), ("k2", 2, 1), ("k1_all_cores", 1, cores)):
        devices = ["cpu"] * k
        start = time.perf_counter()
        run_jobs(
            [(f"s{i}", {}) for i in range(k)], scripted_runner, devices=devices, progress=False
        )
        out[f"{key}_startup_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        results = run_jobs(
            todo, busy_runner, devices=devices, progress=False, threads_per_worker=threads
        )
        out[f"{key}_seconds"] = time.perf_counter() - start
        if not all(r.status == "ok" for r in results):
            raise RuntimeError(f"bench_scheduler: a job failed: {results}")

    def steady(key: str) -> float:
        return out[f"{key}_seconds"] - out[f"{key}_startup_seconds"]

    out["throughput_ratio_k2"] = out["k1_seconds"] / out["k2_seconds"]
    out["steady_throughput_ratio_k2"] = steady("k1") / steady("k2")
    out["k2_vs_one_worker_all_cores"] = out["k1_all_cores_seconds"] / out["k2_seconds"]
    return out


def bench_amp(device: str, size: int = 96, precisions: tuple[str, ...] = ("bf16", "fp16")) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    model = UNet3d().to(dev).eval()
    x = torch.rand(1, 1, size, size, size, device=dev)
    out = {}
    with torch.no_grad():  # the class that wins most voxels: its map is not all zeros
        target = int(model(x).argmax(1).flatten().mode().values)

    def run(amp: str | None = None) -> ec.Explanation:
        return ec.explain(model, x, "captum.saliency", target, task="segmentation", amp=amp)

    ref = run().attributions
    if not ref.abs().sum() > 0:
        raise RuntimeError("bench_amp: the float32 map is all zeros; nothing to compare")
    t32 = _timed(run, dev, 3)
    for amp in precisions:
        e = run(amp)
        t = _timed(lambda amp=amp: run(amp), dev, 3)
        corr = torch.corrcoef(torch.stack([ref.flatten(), e.attributions.flatten()]))[0, 1]
        out[amp] = {"speedup": t32 / t, "correlation": float(corr)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (CPU, CI-sized)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--child-patches", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--patch", type=int, default=64, help="patch size (voxels per side)")
    parser.add_argument("--mode", default="explain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_patches:
        print(json.dumps(patches_child(args.child_patches, args.patch, args.device, args.mode)))
        return
    sizes = [32, 64, 96] if args.quick else [64, 128, 192]
    patch = 32 if args.quick else args.patch
    results = {"device": args.device, "quick": args.quick}
    results["patches"] = bench_patches(sizes, patch, args.device)
    print(f"patches ({patch}^3), saliency on a 3D U-Net, {args.device}")
    print(
        f"{'volume':>8} {'floor s':>9} {'explain s':>10} {'ratio':>6} "
        f"{'peak MB':>9} {'vs smallest':>12}"
    )
    for r in results["patches"]:
        print(
            f"{r['size']:>7}^3 {r['floor_seconds']:9.2f} {r['explain_seconds']:10.2f} "
            f"{r['time_ratio']:6.2f} {r['explain_peak_mb']:9.0f} {r['peak_vs_smallest']:12.2f}"
        )
    results["auto_batch"] = bench_auto_batch(args.device, 32 if args.quick else 64)
    a = results["auto_batch"]
    print(
        f"\nCaptum occlusion, {a['image']}^2 image: "
        f"perturbations_per_eval=1 {a['ppe1_seconds']:.2f} s, "
        f"auto ({a['auto_batch']}) {a['auto_seconds']:.2f} s: {a['speedup']:.1f}x"
    )
    results["scheduler"] = bench_scheduler(16, 1500 if args.quick else 3000)
    s = results["scheduler"]
    print(
        f"\nscheduler, {s['jobs']} CPU jobs, one thread per worker: 1 worker "
        f"{s['k1_seconds']:.1f} s, 2 workers {s['k2_seconds']:.1f} s: throughput "
        f"x{s['throughput_ratio_k2']:.2f} (target >= 1.6), without the workers' start-up "
        f"x{s['steady_throughput_ratio_k2']:.2f}; 1 worker with all "
        f"{os.cpu_count()} cores {s['k1_all_cores_seconds']:.1f} s"
    )
    if args.device.startswith("cuda"):
        results["amp"] = bench_amp(args.device)
    else:  # CPU autocast supports bf16 only; whether it pays depends on the CPU
        results["amp"] = bench_amp(args.device, 32 if args.quick else 64, ("bf16",))
    for amp, r in results["amp"].items():
        print(
            f"\nAMP {amp} ({args.device}): {r['speedup']:.2f}x vs float32, "
            f"map correlation {r['correlation']:.4f}"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

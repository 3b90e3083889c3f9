"""The Ray executor against the local scheduler, and what limits a big cluster run.

1. **Overhead**: the same 200 small jobs (the tiny 2D classifier, ``captum.saliency``,
   50 inputs x 4 targets, maps written, no figures) on 2 CPU slots, run by the local
   scheduler (2 worker processes) and by the Ray executor (2 actors on a Ray instance
   started beforehand in this process, as a cluster is). Both timings include starting
   the workers and loading the model; the figure is Ray's throughput over local's
   (target >= 0.8). The model is loaded once per actor: the records name 2 workers.
2. **What a job costs the driver** on a 3D job (MONAI-sized volume, ``--size`` voxels a
   side): bytes sent to the driver (the compressed map), bytes of the input put once
   in the object store, the driver's write of one job (``RunWorker.store``) and a Ray
   actor round trip. From those, the driver's ceiling in jobs per second, and the
   throughput of a 8 nodes x 8 GPUs cluster on a 10,000-volume, 10-method run for a
   range of per-job GPU times: where the driver, not the GPUs, becomes the limit.

Run::

    python benchmarks/bench_ray.py --out benchmarks/results/ray_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _config(name: str, folder: Path, executor: dict[str, Any] | None = None, **extra: Any):
    from esegeta_core.config import RunConfig

    data: dict[str, Any] = {
        "name": name,
        "output_dir": str(folder / "out"),
        "model": {"factory": "esegeta_core.testing.models:tiny_model"},
        "inputs": {"paths": ["x*.npy"], "rank": 2, "scale": "none", "batch_dim": True},
        "targets": [0, 1, 2, 3],
        "methods": [{"method": "captum.saliency"}],
        "cpu_workers": 2,
        "progress": False,
        "outputs": {"figures": False, "report": False},
    }
    if executor:
        data["executor"] = executor
    data.update(extra)
    return RunConfig.model_validate(data)


def overhead(folder: Path, inputs: int) -> dict[str, Any]:
    import ray

    from esegeta_core.runs import run
    from esegeta_core.testing import tiny_input

    for i in range(inputs):
        np.save(folder / f"x{i:03d}.npy", tiny_input("classification", 2, batch=1, seed=i).numpy())
    start = time.perf_counter()
    local = run(_config("local", folder), folder)
    local_s = time.perf_counter() - start
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        start = time.perf_counter()
        remote = run(_config("ray", folder, {"name": "ray"}), folder)
        ray_s = time.perf_counter() - start
    finally:
        ray.shutdown()
    jobs = len(local.records)
    workers = {
        json.loads(p.read_text())["worker"] for p in (remote.run_dir / "jobs").glob("*/record.json")
    }
    return {
        "jobs": jobs,
        "local_seconds": round(local_s, 2),
        "ray_seconds": round(ray_s, 2),
        "local_jobs_per_s": round(jobs / local_s, 1),
        "ray_jobs_per_s": round(jobs / ray_s, 1),
        "ray_over_local_throughput": round(local_s / ray_s, 3),
        "ray_workers_that_ran_jobs": len(workers),
        "all_ok": all(r["status"] == "ok" for r in local.records + remote.records),
    }


def driver_costs(folder: Path, size: int) -> dict[str, Any]:
    import ray
    import torch

    from esegeta_core.config import RunConfig
    from esegeta_core.runs import RunWorker, build_model, plan_jobs

    x = torch.rand(1, 1, size, size, size)
    np.save(folder / "vol.npy", x.numpy())
    config = RunConfig.model_validate(
        {
            "name": "costs",
            "output_dir": str(folder / "out"),
            "model": {
                "factory": "esegeta_core.testing.models:tiny_model",
                "kwargs": {"task": "segmentation", "rank": 3},
            },
            "inputs": {"paths": ["vol.npy"], "rank": 3, "scale": "none", "batch_dim": True},
            "task": "segmentation",
            "targets": [1],
            "methods": [{"method": "captum.saliency"}],
            "progress": False,
            "outputs": {"figures": True, "report": False},
        }
    )
    worker = RunWorker(config, folder, config.run_dir(folder))
    job = plan_jobs(config, folder)[0]
    files = worker.compute(job, "cpu")
    stores = []
    for _ in range(10):
        start = time.perf_counter()
        worker.store(job, files)
        stores.append(time.perf_counter() - start)
    start = time.perf_counter()
    build_model(config, folder)
    build_s = time.perf_counter() - start

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:

        @ray.remote
        class Echo:
            def echo(self, payload: Any) -> Any:
                return payload

        actor = Echo.remote()
        ray.get(actor.echo.remote(b""))
        trips = []
        for _ in range(30):
            start = time.perf_counter()
            ray.get(actor.echo.remote(files))  # the job's files travel back to the driver
            trips.append(time.perf_counter() - start)
    finally:
        ray.shutdown()
    sent = sum(len(b) for b in files.files.values()) + len(json.dumps(files.record))
    store_s, trip_s = statistics.median(stores), statistics.median(trips)
    ceiling = 1.0 / (store_s + trip_s)
    shared_ceiling = 1.0 / trip_s
    slots = 64
    jobs = 10_000 * 10
    rows = []
    for gpu_s in (0.25, 0.5, 1.0, 2.0, 5.0, 20.0):
        cluster = slots / gpu_s
        rate = min(cluster, ceiling)
        rows.append(
            {
                "gpu_seconds_per_job": gpu_s,
                "gpu_limit_jobs_per_s": round(cluster, 1),
                "driver_limit_jobs_per_s": round(ceiling, 1),
                "jobs_per_s": round(rate, 1),
                "limited_by": "driver" if ceiling < cluster else "gpus",
                "hours_for_100k_jobs": round(jobs / rate / 3600, 2),
                "with_shared_storage_hours": round(jobs / min(cluster, shared_ceiling) / 3600, 2),
                "driver_ingress_mb_per_s": round(rate * sent / 1e6, 1),
            }
        )
    return {
        "volume": f"{size}^3 float32, {x.numel() * 4 / 1e6:.1f} MB put once per input",
        "map_and_figure_bytes_per_job": sent,
        "driver_store_seconds_per_job": round(store_s, 5),
        "ray_round_trip_seconds_per_job": round(trip_s, 5),
        "model_build_seconds_saved_per_job_by_long_lived_actors": round(build_s, 4),
        "driver_ceiling_jobs_per_s": round(ceiling, 1),
        "driver_ceiling_with_shared_storage_jobs_per_s": round(shared_ceiling, 1),
        "cluster": "8 nodes x 8 GPUs = 64 slots (jobs_per_gpu 1); 10,000 volumes x 10 methods",
        "estimate": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=50, help="inputs (x 4 targets = jobs)")
    parser.add_argument("--size", type=int, default=96, help="3D volume side for the costs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "overhead"
        first.mkdir()
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "overhead": overhead(first, args.inputs),
        }
        second = Path(tmp) / "costs"
        second.mkdir()
        result["driver"] = driver_costs(second, args.size)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

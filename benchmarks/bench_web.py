"""Render times of ``esegeta serve``'s pages with a large workspace.

Workspace (built in a temporary folder, or ``--workspace DIR`` to keep it):

- 1,000 finished run folders under ``esegeta-out/`` (``config.json`` and a
  ``summary.json`` of 12 job records each), the shape ``esegeta run`` leaves;
- one finished 10,000-job run (``big``: 100 inputs x 10 methods x 10 targets, in its
  ``summary.json``) whose first input's 100 maps exist as 64 x 64 ``.npz`` files, so
  the results grid it shows reads real maps;
- the same 10,000 jobs as a stopped, incomplete run (``big-live``: one
  ``jobs/*/record.json`` per job and no summary), the worst case for counting progress:
  its records are listed once, then cached until its folder changes;
- the same again as a running run (``big-running``: also a ``progress.json`` as
  ``esegeta run`` writes it, and the app told the run is going), followed from that
  one file;
- one input with 100 methods x 100 targets (``wide``: 10,000 cells of one input's
  grid), the maps of the first grid page's 100 cells as 64 x 64 ``.npz`` files (the
  others have none): the grid is shown a page (5 methods x 20 targets) at a time.

Each page is requested through FastAPI's TestClient (the whole app: middleware,
routing, templates; no network), once cold (the app's record caches empty) and then
``--repeats`` times warm; the median of the warm requests is the figure. Target:
under 200 ms per page.

Run::

    python benchmarks/bench_web.py --out benchmarks/results/web_cpu.json
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

TARGET_MS = 200.0
RUNS = 1000
BIG_INPUTS, BIG_METHODS, BIG_TARGETS = 100, 10, 10
WIDE_METHODS, WIDE_TARGETS = 100, 100


def _record(i: int, method: int, target: int, *, files: dict[str, str] | None = None) -> dict:
    status = "ok" if (i + method + target) % 17 else "error"
    return {
        "job_id": f"in{i:03d}__m{method}__t{target}",
        "status": status,
        "input": f"data/in{i:03d}.png",
        "item": 0,
        "method": f"captum.m{method}",
        "title": f"method {method}",
        "target_requested": str(target),
        "target": target,
        "params": {"n_steps": 32},
        "seconds": 0.05,
        "device": "cpu",
        "error": "" if status == "ok" else "ValueError: example",
        "files": files or {},
    }


def build_workspace(root: Path) -> None:
    """The 1,000 runs, the 10,000-job run and its running twin (see the module doc)."""
    out = root / "esegeta-out"
    for n in range(RUNS):
        run = out / f"run{n:04d}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"name": run.name}))
        records = [_record(i, m, 0) for i in range(3) for m in range(4)]
        (run / "summary.json").write_text(json.dumps(records))
    big, live = out / "big", out / "big-live"
    records = []
    rng = np.random.default_rng(0)
    for i in range(BIG_INPUTS):
        for m in range(BIG_METHODS):
            for t in range(BIG_TARGETS):
                files = None
                if i == 0:  # the input the results page shows first: real maps
                    name = f"jobs/in000__m{m}__t{t}/attribution.npz"
                    (big / name).parent.mkdir(parents=True, exist_ok=True)
                    np.savez(big / name, attribution=rng.normal(size=(1, 64, 64)))
                    files = {"attribution": name}
                records.append(_record(i, m, t, files=files))
    (big / "config.json").write_text(json.dumps({"name": "big"}))
    time.sleep(0.01)  # the summary is newer than the config: the run finished
    (big / "summary.json").write_text(json.dumps(records))
    running = out / "big-running"
    for run in (live, running):
        (run / "jobs").mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps({"name": run.name}))
        for r in records:
            folder = run / "jobs" / r["job_id"]
            folder.mkdir()
            (folder / "record.json").write_text(json.dumps({**r, "files": {}}))
    busy = {records[-i]["job_id"]: "cpu" for i in (1, 2)}
    progress = {"total": len(records), "ok": len(records) - 2, "failed": 0, "running": busy}
    (running / "progress.json").write_text(json.dumps({**progress, "state": "running"}))
    wide = out / "wide"
    wide.mkdir()
    records = []
    for m in range(WIDE_METHODS):
        for t in range(WIDE_TARGETS):
            files = None
            if m < 5 and t < 20:  # the first grid page: real maps
                name = f"jobs/in000__m{m}__t{t}/attribution.npz"
                (wide / name).parent.mkdir(parents=True, exist_ok=True)
                np.savez(wide / name, attribution=rng.normal(size=(1, 64, 64)))
                files = {"attribution": name}
            records.append({**_record(0, m, t, files=files), "status": "ok"})
    (wide / "config.json").write_text(json.dumps({"name": "wide"}))
    time.sleep(0.01)
    (wide / "summary.json").write_text(json.dumps(records))


def measure(root: Path, repeats: int) -> list[dict[str, Any]]:
    from esegeta_web import jobs
    from esegeta_web.app import create_app
    from fastapi.testclient import TestClient

    going = jobs.JobManager.is_running  # big-running is going (nothing else is)
    jobs.JobManager.is_running = lambda self, d: d.name == "big-running" or going(self, d)
    client = TestClient(create_app(root, models={}))
    pages = [
        ("runs list (1,000 runs, page 1 of 50 rows)", "/runs"),
        ("runs list, live refresh (rows only)", "/runs/table"),
        ("runs list, last page", "/runs?page=21"),
        ("10,000-job run: results grid (100 maps), jobs page 1", "/runs/esegeta-out/big"),
        ("10,000-job run: jobs page 50", "/runs/esegeta-out/big?jobs=50"),
        ("stopped 10,000-job run (10,000 record.json)", "/runs/esegeta-out/big-live"),
        ("stopped 10,000-job run: status (JSON)", "/runs/esegeta-out/big-live/status"),
        ("running 10,000-job run (progress.json)", "/runs/esegeta-out/big-running"),
        ("running 10,000-job run: status (JSON)", "/runs/esegeta-out/big-running/status"),
        ("1 input x 100 methods x 100 targets: grid page 1 (100 maps)", "/runs/esegeta-out/wide"),
        ("1 input x 100 methods x 100 targets: grid page 100", "/runs/esegeta-out/wide?grid=100"),
    ]
    rows = []
    for label, url in pages:
        start = time.perf_counter()
        response = client.get(url)
        cold = time.perf_counter() - start
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code}: {response.text[:500]}")
        warm = []
        for _ in range(repeats):
            start = time.perf_counter()
            client.get(url)
            warm.append(time.perf_counter() - start)
        median = statistics.median(warm) * 1000
        rows.append(
            {
                "page": label,
                "url": url,
                "cold_ms": round(cold * 1000, 1),
                "median_ms": round(median, 1),
                "max_ms": round(max(warm) * 1000, 1),
                "bytes": len(response.content),
                "under_target": median < TARGET_MS,
            }
        )
        print(f"{label:55s} cold {cold * 1000:7.1f} ms  median {median:6.1f} ms")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    parser.add_argument("--repeats", type=int, default=15, help="warm requests per page")
    parser.add_argument("--workspace", type=Path, help="build the workspace here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workspace or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        build_workspace(root)
        print(f"workspace built in {time.perf_counter() - start:.1f} s: {root}")
        rows = measure(root.resolve(), args.repeats)
    result = {
        "meta": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "runs": RUNS + 4,
            "big_run_jobs": BIG_INPUTS * BIG_METHODS * BIG_TARGETS,
            "wide_run_cells": WIDE_METHODS * WIDE_TARGETS,
            "repeats": args.repeats,
            "target_ms": TARGET_MS,
            "client": "fastapi.testclient.TestClient (in-process, no network)",
        },
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

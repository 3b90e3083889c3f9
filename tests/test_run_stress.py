"""A run that must be trusted: killed three times with SIGKILL, resumed each time.

A 3D run of 30 jobs (5 volumes x 3 methods x 2 targets) on two CPU worker processes,
driven through the command line as a user would, is killed with SIGKILL at three random
moments (seeded) and resumed each time; one input file is truncated and one job folder
cannot be written (a file stands where the folder must be: tests run as root, so a
read-only mode would not stop them). At the end every good job is ok exactly once (a
record, once written, is never rewritten), the truncated file's jobs failed naming it,
the unwritable job failed naming its folder, ``ps`` shows no worker left alive, no
temporary file is left, and the summary lists every job.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from esegeta_core.config import RunConfig
from esegeta_core.runs import plan_jobs
from esegeta_core.testing import tiny_input

HERE = Path(__file__).parent
FACTORY = f"{HERE / 'run_stress_models.py'}:slow_segmenter"
GOOD = 4
METHODS = 3
TARGETS = (1, 2)
KILLS = 3  # each kill costs a launch (Python, torch, two spawned workers): a few seconds


def _volumes(folder: Path) -> None:
    import nibabel as nib

    folder.mkdir()
    for i in range(GOOD + 1):
        x = tiny_input("segmentation", 3, batch=1, size=12, seed=i)[0, 0].numpy()
        nib.save(nib.Nifti1Image(x, np.diag([2.0, 2.0, 3.0, 1.0])), folder / f"v{i}.nii.gz")
    bad = folder / f"v{GOOD}.nii.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated: half of a valid file


def _alive(pids: set[int]) -> set[int]:
    """Of ``pids``, those ``ps`` lists as live processes (zombies count as gone)."""
    if not pids:
        return set()
    out = subprocess.run(
        ["ps", "-o", "pid=,stat=", "-p", ",".join(map(str, sorted(pids)))],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return {
        int(pid) for pid, stat in (line.split()[:2] for line in out.splitlines()) if "Z" not in stat
    }


def _count_ok(jobs: Path, seen: set[Path]) -> int:
    """How many jobs have an ok record, reading only records not yet in ``seen`` (the
    polling loop's cheap count; :func:`_records` reads them all)."""
    for path in jobs.glob("*/record.json"):
        if path not in seen and json.loads(path.read_text())["status"] == "ok":
            seen.add(path)
    return len(seen)


def _records(jobs: Path) -> dict[str, str]:
    found = {}
    for path in jobs.glob("*/record.json"):
        text = path.read_text()
        if json.loads(text)["status"] == "ok":
            found[path.parent.name] = text
    return found


def test_a_run_killed_three_times_ends_complete_and_clean(tmp_path):
    pytest.importorskip("nibabel")
    _volumes(tmp_path / "vols")
    pid_dir = tmp_path / "pids"
    config = {
        "name": "stress",
        "output_dir": str(tmp_path / "out"),
        "model": {"factory": FACTORY, "kwargs": {"pid_dir": str(pid_dir), "delay": 0.05}},
        "inputs": {"paths": ["vols/*.nii.gz"], "rank": 3, "scale": "none"},
        "task": "segmentation",
        "targets": list(TARGETS),
        "methods": [
            {"method": "acme.times_input", "params": {"scale": float(s)}}
            for s in range(1, METHODS + 1)
        ],
        "cpu_workers": 2,
        "progress": False,
        "outputs": {"figures": False, "report": False},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "out" / "stress"
    jobs = run_dir / "jobs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    command = [sys.executable, "-m", "esegeta_core.cli", "run", str(path)]

    rng = random.Random(15)
    kept: dict[str, str] = {}  # ok records seen so far: never to be rewritten
    kills = 0
    blocked: Path | None = None
    while kills < KILLS:
        before = len(_records(jobs)) if jobs.exists() else 0
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            if blocked is None:  # once the planner named the folders, block one of them
                deadline = time.time() + 120
                while time.time() < deadline and not list(jobs.glob("*/record.json")):
                    time.sleep(0.02)
            wanted = before + rng.randint(1, 4)
            deadline = time.time() + 120
            seen: set[Path] = set()
            while time.time() < deadline and proc.poll() is None:
                if jobs.exists() and _count_ok(jobs, seen) >= wanted:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment, often inside a job
            if proc.poll() is not None:
                break  # finished before the kill: nothing left to interrupt
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        # workers die with their parent: none is left, as ps sees it
        pids = {int(p.name) for p in pid_dir.iterdir()} if pid_dir.exists() else set()
        deadline = time.time() + 15
        while _alive(pids) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(pids), f"workers outlived the killed run: {_alive(pids)}"
        now = _records(jobs)
        for job_id, text in kept.items():
            assert now.get(job_id) == text, f"{job_id} was recomputed or lost after a kill"
        kept = now
        if blocked is None:  # an unfinished job of a good input: its folder is blocked
            planned = plan_jobs(RunConfig.model_validate(config), tmp_path)
            blocked = next(jobs / j.job_id for j in planned if j.job_id not in now and not j.error)
            if blocked.exists():
                for child in blocked.iterdir():
                    child.unlink()
                blocked.rmdir()
            blocked.write_text("a file where the job's folder must be")
    assert kills == KILLS, f"the run finished after {kills} kills; make the jobs slower"
    assert len(kept) < GOOD * METHODS * len(TARGETS), "the kills should leave work to resume"

    # a kill in the middle of an atomic write leaves its temporary file: planted here,
    # since the random moments above may or may not have landed inside one
    stale = next(jobs.glob("*/record.json")).parent / ".record.json.x1y2z3w4.tmp"
    stale.write_text('{"status": "o')
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0  # some jobs failed, and the exit code says so
    assert "Traceback" not in done.stderr, done.stderr
    records = json.loads((run_dir / "summary.json").read_text())
    ids = [r["job_id"] for r in records]
    assert len(ids) == len(set(ids)) == (GOOD + 1) * METHODS * len(TARGETS)
    by_input: dict[str, list[dict]] = {}
    for r in records:
        by_input.setdefault(Path(r["input"]).name, []).append(r)
    bad = by_input.pop(f"v{GOOD}.nii.gz")
    assert all(r["status"] != "ok" and f"v{GOOD}.nii.gz" in r["error"] for r in bad), bad
    failed_good = [r for rs in by_input.values() for r in rs if r["status"] != "ok"]
    assert [r["job_id"] for r in failed_good] == [blocked.name], failed_good
    assert blocked.name in failed_good[0]["error"] or str(blocked) in failed_good[0]["error"]
    final = _records(jobs)
    assert len(final) == GOOD * METHODS * len(TARGETS) - 1
    for job_id, text in kept.items():
        assert final[job_id] == text  # every finished job ran exactly once
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not leftovers, leftovers
    pids = {int(p.name) for p in pid_dir.iterdir()}
    assert not _alive(pids)

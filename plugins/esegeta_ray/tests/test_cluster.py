"""The Ray executor on a real two-node cluster (no mocks). The tests run in file order:
the last one kills the second node, and the very last stops the cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from esegeta_core.config import load_config
from esegeta_core.runs import run
from esegeta_core.testing.environment import require_method

TIMING = {"seconds", "wall_seconds", "worker"}


@pytest.fixture
def methods():
    return [
        require_method("captum.saliency"),
        require_method("captum.input_x_gradient"),
        require_method("captum.guided_backprop"),
        require_method("captum.deconvolution"),
    ]


def _records(run_dir: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text()) for p in (run_dir / "jobs").glob("*/record.json")
    }


def _ray(config_path: Path, cluster, **options):
    config = load_config(config_path)
    spec = {"name": "ray", "options": {"address": cluster.address, **options}}
    return config.model_copy(update={"executor": config.executor.model_validate(spec)})


def _driver(config_path: Path, cluster, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "esegeta_core.cli",
            "run",
            str(config_path),
            "--executor",
            "ray",
            "--address",
            cluster.address,
            *extra,
        ],
        cwd=config_path.parent,
        env=cluster.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for_records(run_dir: Path, count: int, proc: subprocess.Popen, timeout=180) -> None:
    deadline = time.monotonic() + timeout
    while len(list(run_dir.glob("jobs/*/record.json"))) < count:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the driver made no progress"
        time.sleep(0.1)


def _wait_no_actors(actor_processes, timeout=60) -> None:
    deadline = time.monotonic() + timeout
    while actor_processes():
        assert time.monotonic() < deadline, f"actors left running: {actor_processes()}"
        time.sleep(0.25)


def test_a_3d_run_spreads_over_two_nodes_and_equals_the_local_run(
    tmp_path, cluster, methods, write_inputs, write_config, actor_processes
):
    write_inputs(tmp_path, [None] * 5)
    path = write_config(
        tmp_path,
        "spread",
        methods,
        outputs={"figures": False, "report": False},
        model={"factory": "ray_models.py:sentinel_model", "kwargs": {"delay": 0.1}},
        cpu_workers=2,
    )
    local = run(load_config(path).model_copy(update={"name": "local", "cpu_workers": 0}), tmp_path)
    # 2 cores per slot, 2 per node: one slot on each node
    remote = run(_ray(path, cluster, cpus_per_slot=2), tmp_path)
    assert len(remote.records) == 40 and all(r["status"] == "ok" for r in remote.records)
    workers = {r["worker"] for r in _records(remote.run_dir).values()}
    nodes = {w.split(" node ")[1].split()[0] for w in workers}
    assert len(nodes) == 2, workers  # the jobs really ran on two raylets
    assert len(workers) == 2  # one long-lived actor per slot, not one per job
    ray_records, local_records = _records(remote.run_dir), _records(local.run_dir)
    assert ray_records.keys() == local_records.keys()
    for job_id, record in ray_records.items():
        other = local_records[job_id]
        assert {k: v for k, v in record.items() if k not in TIMING} == {
            k: v for k, v in other.items() if k not in TIMING
        }
        for name in ("attribution.nii.gz",):
            a = np.asarray(nib.load(remote.run_dir / "jobs" / job_id / name).dataobj)
            b = np.asarray(nib.load(local.run_dir / "jobs" / job_id / name).dataobj)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # interchangeable: the local executor resumes the Ray run folder, and the other way
    again = run(load_config(path), tmp_path)
    assert again.skipped == 40
    assert run(_ray(path, cluster).model_copy(update={"name": "local"}), tmp_path).skipped == 40
    _wait_no_actors(
        actor_processes, timeout=30
    )  # ray.kill is asynchronous: the processes go soon after


def test_time_limit_and_a_segfault_fail_only_their_jobs(
    tmp_path, cluster, write_inputs, write_config, actor_processes
):
    from ray_models import CRASH, HANG

    write_inputs(tmp_path, [None, HANG, CRASH, None, None])
    path = write_config(
        tmp_path, "limits", [require_method("captum.saliency")], targets=[0], time_limit=8
    )
    summary = run(_ray(path, cluster, max_retries=1), tmp_path)
    status = {Path(r["input"]).name: r["status"] for r in summary.records}
    assert status == {
        "v0.npy": "ok",
        "v1.npy": "timeout",
        "v2.npy": "crashed",
        "v3.npy": "ok",
        "v4.npy": "ok",
    }
    by_input = {Path(r["input"]).name: r for r in summary.records}
    assert "killed after the time limit of 8 s" in by_input["v1.npy"]["error"]
    assert (
        "worker lost 2 time(s), last because its worker process died"
        in (by_input["v2.npy"]["error"])
    )
    log = (summary.run_dir / "run.log").read_text()
    assert "retry 1 of 1 on another slot" in log
    ok = [r for r in summary.records if r["status"] == "ok"]
    for record in ok:  # the figure came back as bytes from the actor, written by the driver
        figure = summary.run_dir / record["files"]["figure"]
        assert figure.read_bytes()[:4] == b"\x89PNG"
    _wait_no_actors(
        actor_processes, timeout=30
    )  # ray.kill is asynchronous: the processes go soon after


def test_sigterm_then_sigkill_of_the_driver_then_resume(
    tmp_path, cluster, methods, write_inputs, write_config, actor_processes
):
    write_inputs(tmp_path, [None] * 3)  # 24 jobs
    path = write_config(
        tmp_path,
        "killed",
        methods,
        model={"factory": "ray_models.py:sentinel_model", "kwargs": {"delay": 0.2}},
        cpu_workers=2,
        executor={"name": "ray", "options": {"cpus_per_slot": 2}},  # one slot per node
    )
    run_dir = tmp_path / "out" / "killed"
    proc = _driver(path, cluster)
    _wait_for_records(run_dir, 3, proc)
    proc.send_signal(signal.SIGTERM)  # Ctrl-C's path: stops between jobs, resumable
    assert proc.wait(timeout=60) != 0
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["state"] == "interrupted"
    _wait_no_actors(actor_processes)
    proc = _driver(path, cluster)
    _wait_for_records(run_dir, len(_records(run_dir)) + 3, proc)
    proc.kill()  # SIGKILL: no clean-up at all; Ray kills the actors of a dead driver
    proc.wait(timeout=30)
    _wait_no_actors(actor_processes)
    finished = {
        job_id: (run_dir / "jobs" / job_id / "record.json").stat().st_mtime_ns
        for job_id, r in _records(run_dir).items()
        if r["status"] == "ok"
    }
    assert 6 <= len(finished) < 24
    summary = run(_ray(path, cluster), tmp_path)
    assert summary.skipped == len(finished)
    assert all(r["status"] == "ok" for r in summary.records) and len(summary.records) == 24
    for job_id, mtime in finished.items():  # nothing finished was recomputed
        assert (run_dir / "jobs" / job_id / "record.json").stat().st_mtime_ns == mtime


def test_killing_the_second_node_mid_run_finishes_every_job_once_on_the_survivor(
    tmp_path, cluster, methods, write_inputs, write_config
):
    write_inputs(tmp_path, [None] * 3)  # 24 jobs
    path = write_config(
        tmp_path,
        "nodekill",
        methods,
        model={"factory": "ray_models.py:sentinel_model", "kwargs": {"delay": 0.2}},
        log_level="DEBUG",
        cpu_workers=2,
        executor={"name": "ray", "options": {"cpus_per_slot": 2}},  # one slot per node
    )
    run_dir = tmp_path / "out" / "nodekill"
    proc = _driver(path, cluster)
    _wait_for_records(run_dir, 6, proc)
    cluster.kill_node("second")
    killed = time.time()
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err.decode()[-3000:]
    records = _records(run_dir)
    assert len(records) == 24 and all(r["status"] == "ok" for r in records.values())
    log = (run_dir / "run.log").read_text()
    for job_id in records:  # stored exactly once
        assert log.count(f"job {job_id} ok on") == 1, job_id
    nodes_before = {r["worker"].split(" node ")[1].split()[0] for r in records.values()}
    assert len(nodes_before) == 2
    late = [
        r["worker"].split(" node ")[1].split()[0]
        for job_id, r in records.items()
        if (run_dir / "jobs" / job_id / "record.json").stat().st_mtime > killed + 1
    ]
    assert late and len(set(late)) == 1  # after the kill, only the survivor
    assert "its node died" in log and "is not replaced" in log


def test_no_ray_process_is_left_after_ray_stop(cluster, ray_processes):
    cluster.stop()
    deadline = time.monotonic() + 30
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert ray_processes() == []
    assert os.environ.get("RAY_ADDRESS") is None

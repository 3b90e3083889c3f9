"""The device scheduler on CPU workers: results, errors, crashes and real timeouts."""

from __future__ import annotations

import os

import pytest

from esegeta_core.errors import EsegetaError, WorkerStartError
from esegeta_core.runtime.scheduler import default_devices, run_jobs
from esegeta_core.testing.jobs import DiesOnStart, scripted_runner


def test_jobs_run_on_several_workers_and_failures_are_isolated():
    jobs = [
        ("a", {"value": 1}),
        ("boom", {"action": "raise", "message": "kaput"}),
        ("b", {"value": 2, "sleep": 0.2}),
        ("crash", {"action": "exit"}),
        ("hang", {"sleep": 60}),
        ("c", {"value": 3}),
        ("d", {"value": 4}),
    ]
    seen = []
    results = run_jobs(
        jobs,
        scripted_runner,
        devices=["cpu", "cpu"],
        time_limit=6,
        progress=False,
        on_result=lambda r: seen.append(r.job_id),
    )
    by_id = {r.job_id: r for r in results}
    assert [r.job_id for r in results] == [j for j, _ in jobs]
    assert sorted(seen) == sorted(by_id)
    for ok, value in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        assert by_id[ok].status == "ok" and by_id[ok].result["value"] == value
    assert by_id["boom"].status == "error" and "kaput" in by_id["boom"].error
    assert by_id["crash"].status == "crashed" and "exit code 3" in by_id["crash"].error
    assert by_id["hang"].status == "timeout" and by_id["hang"].seconds < 20
    pids = {by_id[k].result["pid"] for k in "abcd"}
    assert len(pids) >= 2, "jobs should spread over both workers"


def test_default_devices_without_gpu():
    assert default_devices(cpu_workers=3) == ["cpu"] * 3


def test_threads_per_worker_default_shares_the_cores_and_can_be_set():
    jobs = [("a", {}), ("b", {})]
    shared = run_jobs(jobs, scripted_runner, devices=["cpu", "cpu"], progress=False)
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert {r.result["threads"] for r in shared} == {expected}
    one = run_jobs(
        jobs, scripted_runner, devices=["cpu", "cpu"], progress=False, threads_per_worker=3
    )
    assert {r.result["threads"] for r in one} == {3}


def test_bad_scheduler_arguments_raise_clear_errors():
    with pytest.raises(EsegetaError, match="threads_per_worker must be >= 1") as info:
        run_jobs([("a", {})], scripted_runner, devices=["cpu"], threads_per_worker=0)
    assert isinstance(info.value, ValueError)
    with pytest.raises(EsegetaError, match="unique"):
        run_jobs([("a", {}), ("a", {})], scripted_runner, devices=["cpu"])


def test_a_worker_that_dies_on_start_is_a_clear_error():
    with pytest.raises(WorkerStartError, match="died on start") as info:
        run_jobs([("a", {})], DiesOnStart(), devices=["cpu"], progress=False)
    assert isinstance(info.value, RuntimeError)

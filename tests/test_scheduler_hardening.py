"""Scheduler hardening: workers die with their parent, SIGTERM and Ctrl-C stop a run
cleanly, devices are checked before any worker starts, start failures say why."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from scheduler_jobs import FailsToLoad, marked_job

from esegeta_core.errors import (
    DeviceUnavailableError,
    EsegetaError,
    InvalidParamsError,
    WorkerStartError,
)
from esegeta_core.runtime import scheduler
from esegeta_core.runtime.scheduler import check_devices, run_jobs
from esegeta_core.testing.jobs import scripted_runner

TESTS = Path(__file__).resolve().parent
START_TIMEOUT = 120  # seconds for a parent to import torch and spawn its worker (slow CI)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def _started_pid(folder: Path, name: str) -> int:
    return int((folder / f"{name}.started").read_text())


def _delivered(folder: Path) -> list[str]:
    path = folder / "delivered"
    return path.read_text().splitlines() if path.exists() else []


@contextlib.contextmanager
def _parent(folder: Path, first_sleep: float, in_thread: bool) -> Iterator[subprocess.Popen]:
    """A parent process running scheduler_jobs.parent_main in its own session; whatever
    the test does, the parent and every process of its group are killed at the end."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    code = (
        "import scheduler_jobs; "
        f"scheduler_jobs.parent_main({str(folder)!r}, {first_sleep!r}, {in_thread!r})"
    )
    with open(folder / "parent.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the parent's group: itself and its workers
        proc.wait(timeout=30)
        for marker in folder.glob("*.started"):  # a worker that left the group
            pid = int(marker.read_text())
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _log(folder: Path) -> str:
    return (folder / "parent.log").read_text()


@pytest.mark.parametrize(
    ("signum", "in_thread"),
    [(signal.SIGKILL, False), (signal.SIGTERM, True)],
    ids=["sigkill", "sigterm-default-action"],
)
def test_a_busy_worker_dies_with_its_killed_parent(tmp_path, signum, in_thread):
    # SIGKILL: nothing in the parent runs. SIGTERM with run_jobs off the main thread: no
    # handler is installed, so the default action kills the parent just as abruptly.
    with _parent(tmp_path, first_sleep=60, in_thread=in_thread) as proc:
        _wait_for(lambda: (tmp_path / "j0.started").exists(), START_TIMEOUT, "the job to start")
        worker = _started_pid(tmp_path, "j0")
        assert _alive(worker)
        proc.send_signal(signum)
        proc.wait(timeout=30)
        _wait_for(lambda: not _alive(worker), 10, f"worker {worker} to die with its parent")
        assert not (tmp_path / "j0.finished").exists()


@pytest.mark.parametrize("how", ["sigterm-to-parent", "ctrl-c-to-group"])
def test_sigterm_and_ctrl_c_stop_the_run_cleanly(tmp_path, how):
    with _parent(tmp_path, first_sleep=0, in_thread=False) as proc:
        _wait_for(
            lambda: _delivered(tmp_path) and (tmp_path / "j1.started").exists(),
            START_TIMEOUT,
            "the first result and the second job's start",
        )
        worker = _started_pid(tmp_path, "j1")
        if how == "sigterm-to-parent":
            proc.send_signal(signal.SIGTERM)
        else:  # what a terminal does on Ctrl-C: SIGINT to the whole foreground group
            os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        code = proc.wait(timeout=30)
        assert time.monotonic() - sent < 15, "the parent must not wait for the busy job"
        assert code == 130, _log(tmp_path)
        name = "SIGTERM" if how == "sigterm-to-parent" else "SIGINT"
        assert name in (tmp_path / "interrupted").read_text()
        # only the finished job was delivered: the killed one got no "crashed"/"error" record
        assert _delivered(tmp_path) == ["j0 ok"]
        assert not (tmp_path / "j1.finished").exists()
        assert not _alive(worker), "the busy worker must be killed, not left behind"


def test_a_signal_waits_for_on_result_and_the_handlers_come_back(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen: list[tuple[str, bool]] = []

    def on_result(result):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the result is being saved
        time.sleep(0.2)
        seen.append((result.job_id, signal.getsignal(signal.SIGTERM) != signal.SIG_DFL))

    jobs = [(n, {"dir": str(tmp_path), "name": n, "sleep": 60 * (n != "j0")}) for n in ("j0", "j1")]
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        run_jobs(jobs, marked_job, devices=["cpu"], progress=False, on_result=on_result)
    assert time.monotonic() - start < 60
    assert seen == [("j0", True)], "on_result must finish; SIGTERM is handled during the run"
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_watchdog_exits_a_worker_whose_parent_is_gone():
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    other_reader, other_writer = ctx.Pipe(duplex=False)
    # one child sees the lifeline close; the other is told a parent pid it does not have
    closed = ctx.Process(target=scheduler._watch_parent, args=(os.getpid(), reader))
    moved = ctx.Process(target=scheduler._watch_parent, args=(-1, other_reader))
    children = [closed, moved]
    try:
        for child in children:
            child.start()
        reader.close()
        other_reader.close()
        time.sleep(1.0)
        assert closed.is_alive(), "the watchdog must wait while the lifeline is open"
        writer.close()
        for child in children:
            child.join(timeout=60)
            assert child.exitcode == scheduler._ORPHAN_EXIT
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
        other_writer.close()


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "CUDA", "cuda:-1", "cuda:01", "", "cuda0", 0])
def test_check_devices_rejects_strings_that_are_not_devices(device):
    with pytest.raises(InvalidParamsError, match="'cuda:N'") as info:
        check_devices(["cpu", device])
    assert repr(device) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_check_devices_wants_a_list():
    with pytest.raises(InvalidParamsError, match="list of device strings"):
        check_devices("cpu")


def test_check_devices_knows_what_this_host_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda:0", "cuda"):
        with pytest.raises(DeviceUnavailableError, match="set devices to auto or cpu") as info:
            check_devices(["cpu", device])
        assert repr(device) in str(info.value) and "is_available() is False" in str(info.value)
        assert isinstance(info.value, EsegetaError) and isinstance(info.value, RuntimeError)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    slots = ["cuda:0", "cuda:0", "cuda", "cpu"]
    assert check_devices(slots) == slots
    with pytest.raises(
        DeviceUnavailableError, match=r"'cuda:1'.*1 visible CUDA GPU\(s\) \(cuda:0\)"
    ):
        check_devices(["cuda:0", "cuda:1"])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="'mps'"):
        check_devices(["mps"])
    assert check_devices([]) == []


def test_run_jobs_checks_devices_before_any_worker_starts(monkeypatch):
    def no_start(self, slot):
        raise AssertionError("a worker started despite a bad device")

    monkeypatch.setattr(scheduler._Pool, "start", no_start)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="'cuda:0'"):
        run_jobs([("a", {})], scripted_runner, devices=["cpu", "cuda:0"], progress=False)
    with pytest.raises(InvalidParamsError, match="'gpu0'"):
        run_jobs([("a", {})], scripted_runner, devices=["gpu0"], progress=False)


def test_a_runner_the_worker_cannot_load_is_reported_with_its_error():
    with pytest.raises(WorkerStartError, match="loading the runner") as info:
        run_jobs([("a", {})], FailsToLoad(), devices=["cpu"], progress=False)
    message = str(info.value)
    assert "ImportError: No module named 'secret_model'" in message
    assert "__setstate__" in message  # the last lines of the worker's traceback


def test_a_runner_that_cannot_be_pickled_is_a_clear_error():
    with pytest.raises(InvalidParamsError, match="cannot be sent to the worker processes"):
        run_jobs([("a", {})], lambda job, device: {}, devices=["cpu"], progress=False)


def test_results_already_sent_are_delivered_on_an_interrupt(caplog):
    waiting, sent = mp.Pipe()
    dead, gone = mp.Pipe()
    busy, working = mp.Pipe()  # that worker is still at its job
    gone.close()  # that worker died mid-job: EOF, nothing finished
    sent.send(("a", "ok", 0.1, {"value": 1}, ""))
    slots = [
        scheduler._Slot("cpu", conn=waiting, job_id="a", ready=True),
        scheduler._Slot("cpu", conn=dead, job_id="b", ready=True),
        scheduler._Slot("cpu", conn=busy, job_id="c", ready=True),
    ]
    pool = SimpleNamespace(slots=slots)
    delivered: list[scheduler.JobResult] = []
    scheduler._deliver_finished(pool, delivered.append)
    assert [(r.job_id, r.status, r.result) for r in delivered] == [("a", "ok", {"value": 1})]
    assert [s.job_id for s in slots] == [None, "b", "c"]

    def broken(result):
        raise OSError("disk full")

    slots[0].job_id = "a"
    sent.send(("a", "ok", 0.1, {}, ""))
    scheduler._deliver_finished(pool, broken)  # the interrupt wins over on_result's error
    assert "on_result failed for job a" in caplog.text
    for conn in (waiting, sent, dead, busy, working):
        conn.close()


def test_a_sigterm_python_drops_in_a_callback_still_stops_the_in_process_run():
    """A signal handled while Python runs a ``__del__`` or a weakref callback (a cache
    entry of a collected module) raises there and Python drops the exception: the
    in-process loop raises it again before the next job instead of running to the end."""
    from esegeta_core.runtime.executor import Submission, _run_in_process
    from esegeta_core.runtime.scheduler import JobResult

    class Dropper:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # handled inside __del__: dropped
            sum(range(1000))  # bytecode, so the handler runs here

    ran: list[str] = []
    results: list[JobResult] = []

    def worker(job: str, device: str) -> str:
        ran.append(job)
        if job == "b":
            Dropper()  # collected at once
        return job

    submission = Submission(
        jobs=[(j, j) for j in "abcd"], worker=worker, config=None,  # type: ignore[arg-type]
        slots=None, on_result=results.append, on_start=lambda *a: None, progress=False,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        _run_in_process(submission)
    assert ran == ["a", "b"] and [r.job_id for r in results] == ["a", "b"]

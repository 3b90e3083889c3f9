"""Running many explanation jobs across devices in worker processes.

:func:`run_jobs` spreads jobs (inputs x methods x targets) over slots: several per GPU,
or CPU workers when there is no GPU. Each slot is a worker process (``spawn``) with its
own task queue, so the parent always knows which job a worker holds. A job that passes
its time limit gets its worker killed and replaced (a real timeout, unlike SIGALRM,
which never reaches worker threads); a crash of the worker (segfault, ``os._exit``) or
an exception in the job is recorded, and the other jobs go on. A progress bar counts
finished jobs.

The ``runner`` is a picklable callable ``runner(job, device) -> dict`` (a module-level
function or an instance of a module-level class); it may cache heavy state such as a
loaded model in the worker process between jobs.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Literal

import torch

from esegeta_core.errors import InvalidParamsError, WorkerStartError
from esegeta_core.progress import progress_bar

log = logging.getLogger(__name__)

Status = Literal["ok", "error", "timeout", "crashed"]
Runner = Callable[[Any, str], dict[str, Any]]


@dataclass
class JobResult:
    """What became of one job."""

    job_id: str
    status: Status
    device: str
    seconds: float
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def default_devices(cpu_workers: int = 1, jobs_per_gpu: int = 1) -> list[str]:
    """One slot per GPU times ``jobs_per_gpu``, or ``cpu_workers`` CPU slots."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count()) for _ in range(jobs_per_gpu)]
    return ["cpu"] * max(1, cpu_workers)


def _worker(runner: Runner, device: str, threads: int, conn: Any) -> None:
    """The worker process loop: take a job, run it, report, until told to stop."""
    torch.set_num_threads(max(1, threads))
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    conn.send(_READY)  # time limits count from here, not from the process start
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        job_id, job = item
        start = time.perf_counter()
        try:
            out = runner(job, device)
            message = (job_id, "ok", time.perf_counter() - start, out or {}, "")
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a record
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            message = (job_id, "error", time.perf_counter() - start, {}, detail)
        conn.send(message)


_READY = "__ready__"


@dataclass
class _Slot:
    device: str
    process: Any = None
    conn: Any = None
    job_id: str | None = None
    started: float = 0.0
    ready: bool = False


class _Pool:
    """One worker process per slot, each with its own pipe: killing a worker can never
    corrupt another worker's channel."""

    def __init__(
        self, runner: Runner, devices: Sequence[str], ctx: Any, threads: int | None = None
    ) -> None:
        self.runner, self.ctx = runner, ctx
        cpu_slots = sum(1 for d in devices if d == "cpu")
        if threads is None:  # share the cores among the CPU workers
            threads = (os.cpu_count() or 1) // max(1, cpu_slots)
        self.threads = max(1, threads)
        self.slots = [_Slot(d) for d in devices]
        for slot in self.slots:
            self.start(slot)

    def start(self, slot: _Slot) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        threads = self.threads if slot.device == "cpu" else 1
        slot.process = self.ctx.Process(
            target=_worker, args=(self.runner, slot.device, threads, child), daemon=True
        )
        slot.process.start()
        child.close()
        slot.conn, slot.job_id, slot.ready = parent, None, False

    def replace(self, slot: _Slot) -> None:
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join(timeout=10)
        slot.conn.close()
        self.start(slot)

    def close(self) -> None:
        for slot in self.slots:
            if slot.process.is_alive() and slot.job_id is None:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
                slot.process.join(timeout=5)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5)
            slot.conn.close()


def run_jobs(
    jobs: Iterable[tuple[str, Any]],
    runner: Runner,
    *,
    devices: Sequence[str] | None = None,
    time_limit: float | None = None,
    progress: bool = True,
    on_result: Callable[[JobResult], None] | None = None,
    poll: float = 0.05,
    threads_per_worker: int | None = None,
) -> list[JobResult]:
    """Run ``(job_id, job)`` pairs with ``runner`` in worker processes, one per device slot.

    ``devices`` lists the slots (``["cuda:0", "cuda:0", "cuda:1"]`` runs two jobs at a time
    on GPU 0; ``["cpu"] * 4`` four CPU workers); default :func:`default_devices`.
    ``time_limit`` is in seconds per job. Returns one :class:`JobResult` per job, in the
    order given; ``on_result`` is called as each finishes (for writing records).
    ``threads_per_worker`` sets torch's intra-op threads in each CPU worker (default:
    the machine's cores divided among the CPU workers, so workers do not oversubscribe).
    """
    if threads_per_worker is not None and threads_per_worker < 1:
        raise InvalidParamsError(
            f"run_jobs: threads_per_worker must be >= 1, got {threads_per_worker}; "
            "pass None to share the cores among the CPU workers"
        )
    pending = list(jobs)
    if not pending:
        return []
    ids = [job_id for job_id, _ in pending]
    if len(set(ids)) != len(ids):
        raise InvalidParamsError("run_jobs: job ids must be unique; rename the repeated ones")
    slots_for = list(devices or default_devices())
    pool = _Pool(runner, slots_for, mp.get_context("spawn"), threads_per_worker)
    done: dict[str, JobResult] = {}
    bar = progress_bar(len(pending), "jobs", enabled=progress)
    todo = list(reversed(pending))

    def finish(result: JobResult) -> None:
        done[result.job_id] = result
        bar.update(1)
        if result.status != "ok":
            log.warning(
                "job %s %s: %s",
                result.job_id,
                result.status,
                result.error.splitlines()[0] if result.error else "",
            )
        if on_result is not None:
            on_result(result)

    def crashed(slot: _Slot) -> None:
        job_id, elapsed = slot.job_id, time.monotonic() - slot.started
        slot.process.join(timeout=5)
        code = slot.process.exitcode
        pool.replace(slot)
        if job_id is None:  # died before taking a job: the runner cannot even start
            raise WorkerStartError(
                f"A {slot.device} worker died on start (exit code {code}) before taking a "
                "job. Most often the runner cannot be loaded in a fresh process: make it a "
                "module-level function or class (picklable), and call run_jobs under "
                "`if __name__ == '__main__':` in scripts (workers are spawned)."
            )
        finish(
            JobResult(
                str(job_id),
                "crashed",
                slot.device,
                elapsed,
                error=f"worker process died (exit code {code})",
            )
        )

    try:
        while len(done) < len(pending):
            for slot in pool.slots:
                if slot.ready and slot.job_id is None and todo:
                    job_id, job = todo.pop()
                    slot.job_id, slot.started = job_id, time.monotonic()
                    slot.conn.send((job_id, job))
            busy = {s.conn: s for s in pool.slots if s.job_id is not None or not s.ready}
            for conn in wait(list(busy), timeout=poll):
                slot = busy[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    crashed(slot)
                    continue
                if message == _READY:
                    slot.ready = True
                    continue
                job_id, status, seconds, out, error = message
                slot.job_id = None
                finish(JobResult(job_id, status, slot.device, seconds, out, error))
            now = time.monotonic()
            for slot in pool.slots:
                if slot.job_id is None:
                    continue
                elapsed = now - slot.started
                if time_limit is not None and elapsed > time_limit:
                    job_id = slot.job_id
                    pool.replace(slot)
                    finish(
                        JobResult(
                            job_id,
                            "timeout",
                            slot.device,
                            elapsed,
                            error=f"killed after the time limit of {time_limit:g} s",
                        )
                    )
                elif not slot.process.is_alive() and not slot.conn.poll():
                    crashed(slot)
    finally:
        bar.close()
        pool.close()
    return [done[job_id] for job_id in ids]

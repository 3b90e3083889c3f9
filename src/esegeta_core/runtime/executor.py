"""Executors: where a run's jobs are computed.

``esegeta run`` plans the jobs and writes the run folder; an executor only computes
them. The contract is small: :meth:`Executor.run` takes a :class:`Submission` (the
jobs, the picklable :class:`JobWorker`, the config), calls ``on_start`` as each job
starts and ``on_result`` as each finishes (results as they finish, in the calling
thread), kills a job past ``time_limit`` (status ``timeout``), and cancels on
``KeyboardInterrupt`` (Ctrl-C, SIGTERM) or :meth:`Executor.cancel`: no new job starts,
work in flight is dropped, nothing is left running, the results that already arrived
are delivered, and ``KeyboardInterrupt`` reaches the caller so the run can be resumed.

A worker either writes its job's files itself (``worker(job, device)``: the local
executor, or a cluster with a shared file system) or computes them where it runs and
returns their bytes (``worker.compute(job, device)``), which the driver writes with
``worker.store(job, files)``: the same files, the same record, so runs made by
different executors are interchangeable and resume each other.

Executors are discovered like methods (:mod:`esegeta_core.plugin.executors`): the
built-in ``local`` one (the process scheduler of :mod:`esegeta_core.runtime.scheduler`)
plus any class a plugin returns from its ``esegeta_register_executors`` hook
(entry-point group ``esegeta``), e.g. the Ray executor of ``esegeta-ray``. Each declares
its options as a pydantic model, validated from the config's ``executor.options``
before any job starts. This module is the contract only: it imports nothing of the
plugin layer.
"""

from __future__ import annotations

import logging
import threading
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from esegeta_core.config import RunConfig
    from esegeta_core.runtime.scheduler import JobResult

log = logging.getLogger(__name__)

DEFAULT_EXECUTOR = "local"


@dataclass
class JobFiles:
    """What a job computed away from the run folder: its record and its files' bytes
    (``{"attribution.npz": b"...", "figure.png": b"..."}``), for the driver to write."""

    record: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


class JobWorker(Protocol):
    """The picklable object that runs one job (:class:`esegeta_core.runs.RunWorker`)."""

    def __call__(self, job: Any, device: str) -> dict[str, Any]:
        """Compute the job and write its files and record into the run folder."""
        ...

    def compute(self, job: Any, device: str) -> JobFiles:
        """Compute the job and return its files' bytes and record, writing nothing."""
        ...

    def store(self, job: Any, files: JobFiles) -> dict[str, Any]:
        """Write what :meth:`compute` returned into the run folder; return the record."""
        ...


@dataclass
class Submission:
    """Everything an executor needs for one run.

    ``jobs`` are ``(job_id, job)`` pairs (job: :class:`esegeta_core.runs.Job`, with its
    ``input_path`` and ``target``). ``slots`` are the local device slots the config
    asks for (``None``: in this process); a cluster executor reads ``config.devices``,
    ``jobs_per_gpu`` and ``cpu_workers`` instead. ``on_start(job_id, device)`` and
    ``on_result(result)`` must be called from the thread that called ``run``.
    """

    jobs: list[tuple[str, Any]]
    worker: JobWorker
    config: RunConfig
    slots: list[str] | None
    on_result: Callable[[JobResult], None]
    on_start: Callable[[str, str], None]
    time_limit: float | None = None
    progress: bool = True
    cancelled: threading.Event = field(default_factory=threading.Event)


class NoOptions(BaseModel):
    """An executor without options."""

    model_config = ConfigDict(extra="forbid")


class Executor(ABC):
    """Runs a :class:`Submission`'s jobs somewhere and reports each result as it finishes."""

    name: ClassVar[str]
    """The name ``--executor`` and the config's ``executor.name`` use."""
    summary: ClassVar[str] = ""
    """One line for ``esegeta executors``."""
    Options: ClassVar[type[BaseModel]] = NoOptions
    """The executor's options (the config's ``executor.options``), validated up front."""

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()
        self._submission: Submission | None = None

    @abstractmethod
    def run(self, submission: Submission) -> None:
        """Compute every job of ``submission`` (see the module's contract)."""

    def cancel(self) -> None:
        """Ask a running :meth:`run` (in another thread) to stop as on Ctrl-C."""
        if self._submission is not None:
            self._submission.cancelled.set()


class LocalExecutor(Executor):
    """The process scheduler on this machine: one worker process per device slot (or
    this process when the config asks for none), real time limits, crash isolation."""

    name = "local"
    summary = "worker processes on this machine, one per device slot (the default)"

    def run(self, submission: Submission) -> None:
        from esegeta_core.runtime.scheduler import run_jobs

        self._submission = submission
        if submission.slots is None:
            _run_in_process(submission)
            return
        run_jobs(
            submission.jobs,
            submission.worker,
            devices=submission.slots,
            time_limit=submission.time_limit,
            progress=submission.progress,
            on_result=submission.on_result,
            on_start=submission.on_start,
            cancel=submission.cancelled,
        )


def _run_in_process(submission: Submission) -> None:
    """Every job in this process, one after the other (no time limit: nothing to kill)."""
    import time

    from esegeta_core.errors import EsegetaError
    from esegeta_core.progress import progress_bar
    from esegeta_core.runtime.scheduler import Interrupts, JobResult

    bar = progress_bar(len(submission.jobs), "jobs", enabled=submission.progress)
    # SIGTERM stops the loop like Ctrl-C, never in the middle of writing a record
    with Interrupts() as interrupts:
        try:
            for job_id, job in submission.jobs:
                interrupts.raise_swallowed()
                if submission.cancelled.is_set():
                    raise KeyboardInterrupt("run cancelled")
                submission.on_start(job_id, "cpu")
                start = time.perf_counter()
                try:
                    out = submission.worker(job, "cpu")
                    result = JobResult(job_id, "ok", "cpu", time.perf_counter() - start, out)
                except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the run
                    detail = f"{type(exc).__name__}: {exc}"
                    if not isinstance(exc, EsegetaError):
                        detail += "\n" + traceback.format_exc()
                    log.warning("job %s failed: %s", job_id, detail.splitlines()[0])
                    elapsed = time.perf_counter() - start
                    result = JobResult(job_id, "error", "cpu", elapsed, error=detail)
                with interrupts.held():
                    submission.on_result(result)
                bar.update(1)
        finally:
            bar.close()

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

Executors are discovered like methods: the built-in ``local`` one (the process
scheduler of :mod:`esegeta_core.runtime.scheduler`) plus any class a plugin returns from
its ``esegeta_register_executors`` hook (entry-point group ``esegeta``), e.g. the Ray
executor of ``esegeta-ray``. Each declares its options as a pydantic model, validated
from the config's ``executor.options`` before any job starts.
"""

from __future__ import annotations

import logging
import threading
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from esegeta_core.errors import InvalidParamsError, PluginConflictError

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


def _plugin_executors() -> dict[str, tuple[type[Executor], str]]:
    """``{name: (class, source)}`` from every plugin's ``esegeta_register_executors``."""
    import pluggy

    from esegeta_core.plugin import PROJECT
    from esegeta_core.plugin import spec as hookspecs
    from esegeta_core.plugin.manager import DISABLE_ENV, _disabled, _entry_points

    found: dict[str, tuple[type[Executor], str]] = {}
    disabled = set(_disabled())
    for ep in _entry_points():
        if ep.name in disabled:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - the methods registry reports broken plugins
            log.debug("plugin %s failed to load (%s); its executors are skipped", ep.name, exc)
            continue
        if not hasattr(obj, "esegeta_register_executors"):
            continue
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(obj, name=ep.name)
        for batch in pm.hook.esegeta_register_executors():
            for cls in batch or ():
                source = f"plugin {ep.name}"
                if not (isinstance(cls, type) and issubclass(cls, Executor)):
                    raise PluginConflictError(
                        f"{source}: esegeta_register_executors returned {cls!r}, not an "
                        "esegeta_core.runtime.executor.Executor subclass; return the classes."
                    )
                if cls.name == DEFAULT_EXECUTOR or cls.name in found:
                    other = "the core" if cls.name == DEFAULT_EXECUTOR else found[cls.name][1]
                    raise PluginConflictError(
                        f"{source} registers the executor {cls.name!r}, which {other} "
                        f"registers too; rename it (or disable one plugin with {DISABLE_ENV})."
                    )
                found[cls.name] = (cls, source)
    return found


_CACHE: dict[str, type[Executor]] | None = None


def executors(*, refresh: bool = False) -> dict[str, type[Executor]]:
    """Every executor by name: ``local`` first, then the plugins' (cached)."""
    global _CACHE
    if _CACHE is None or refresh:
        _CACHE = {DEFAULT_EXECUTOR: LocalExecutor}
        _CACHE.update({name: cls for name, (cls, _) in sorted(_plugin_executors().items())})
    return dict(_CACHE)


def executor_sources() -> dict[str, str]:
    """``{executor name: entry-point name of its plugin}`` (``core`` for ``local``)."""
    found = {DEFAULT_EXECUTOR: "core"}
    found.update(
        {name: source.removeprefix("plugin ") for name, (_, source) in _plugin_executors().items()}
    )
    return found


def get_executor(name: str, options: dict[str, Any] | None = None) -> Executor:
    """The executor ``name`` with its options validated.

    Raises :class:`InvalidParamsError` naming the executor and the fix for an unknown
    name (with the plugin that provides it when known) or invalid options."""
    known = executors()
    if name not in known:
        missing_ray = name == "ray" and not _installed("esegeta-ray")
        hint = " (pip install esegeta-ray)" if missing_ray else ""
        raise InvalidParamsError(
            f"executor: unknown executor {name!r}{hint}; installed: {', '.join(known)}. "
            "Executors come from plugins (entry-point group 'esegeta', hook "
            "esegeta_register_executors)."
        )
    cls = known[name]
    try:
        parsed = cls.Options.model_validate(options or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(options)'}: {err['msg']}" for err in exc.errors()
        )
        fields = ", ".join(cls.Options.model_fields) or "none"
        raise InvalidParamsError(
            f"executor {name!r}: invalid options: {problems}. Its options: {fields} "
            "(`esegeta executors` lists them)."
        ) from None
    return cls(parsed)


def executor_options(cls: type[Executor]) -> Sequence[tuple[str, str, str]]:
    """``(option, type and default, description)`` rows for ``esegeta executors``."""
    rows = []
    for option, info in cls.Options.model_fields.items():
        kind = getattr(info.annotation, "__name__", str(info.annotation))
        default = "required" if info.is_required() else f"default {info.default!r}"
        rows.append((option, f"{kind}, {default}", info.description or ""))
    return rows


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True

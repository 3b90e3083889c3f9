"""Running many explanation jobs across devices in worker processes.

:func:`run_jobs` spreads jobs (inputs x methods x targets) over slots: several per GPU,
or CPU workers when there is no GPU. Each slot is a worker process (``spawn``) with its
own task queue, so the parent always knows which job a worker holds. A job that passes
its time limit gets its worker killed and replaced (a real timeout, unlike SIGALRM,
which never reaches worker threads); a crash of the worker (segfault, ``os._exit``) or
an exception in the job is recorded, and the other jobs go on. A progress bar counts
finished jobs.

Workers never outlive the parent, however it dies: on Linux the kernel kills them
(``PR_SET_PDEATHSIG``), and everywhere a watchdog thread in each worker exits it when
the parent's end of a dedicated "lifeline" pipe closes or the worker gets a new parent.
Ctrl-C and SIGTERM stop a run cleanly: no more jobs are handed out, busy workers are
killed, idle ones stopped, and ``KeyboardInterrupt`` reaches the caller after every
result that arrived has gone through ``on_result``, so a run can be resumed.

The ``runner`` is a picklable callable ``runner(job, device) -> dict`` (a module-level
function or an instance of a module-level class); it may cache heavy state such as a
loaded model in the worker process between jobs.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import multiprocessing as mp
import os
import pickle
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler
from typing import Any, Literal, Protocol, cast

import torch

from esegeta_core.errors import DeviceUnavailableError, InvalidParamsError, WorkerStartError
from esegeta_core.progress import progress_bar

log = logging.getLogger(__name__)

Status = Literal["ok", "error", "timeout", "crashed"]
Runner = Callable[[Any, str], dict[str, Any]]

#: The device strings :func:`check_devices` accepts ("cuda:N": GPU number N).
DEVICE_FORMS = ("cpu", "cuda", "cuda:N", "mps")
DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(?::(0|[1-9][0-9]*))?")
"""A device string: ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (no leading zeros)."""

_READY = "__ready__"
_START_FAILED = "__start_failed__"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_WATCH_INTERVAL = 0.5  # seconds between the watchdog's parent checks
_ORPHAN_EXIT = 70  # exit code of a worker that outlived its parent
_TAIL_LINES = 12  # lines of a worker's start-up traceback shown in WorkerStartError


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


def check_devices(devices: Sequence[str]) -> list[str]:
    """Check that every device slot names a device this host has, before any worker starts.

    Accepts the forms in :data:`DEVICE_FORMS`. Raises :class:`InvalidParamsError` for a
    string that is not a device and :class:`DeviceUnavailableError` for a device this host
    lacks (no usable CUDA, a GPU index past the last GPU, no MPS), each naming the device
    and the fix; returns the slots as a list, unchanged.
    """
    if isinstance(devices, str):
        raise InvalidParamsError(
            f"devices: expected a list of device strings such as ['cpu'], got the string "
            f"{devices!r}; wrap it in a list"
        )
    checked: list[str] = []
    for device in devices:
        match = DEVICE_PATTERN.fullmatch(device) if isinstance(device, str) else None
        if match is None:
            raise InvalidParamsError(
                f"devices: {device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' "
                "(N = GPU number, from 0) or 'mps'"
            )
        if device.startswith("cuda"):
            _check_cuda(device, None if match.group(1) is None else int(match.group(1)))
        elif device == "mps":
            _check_mps()
        checked.append(device)
    return checked


def _check_cuda(device: str, index: int | None) -> None:
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none"
        raise DeviceUnavailableError(
            f"devices: {device!r} needs a CUDA GPU, but this host has none usable "
            f"(torch {torch.__version__}, CUDA build {build}, torch.cuda.is_available() is "
            "False); set devices to auto or cpu"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        have = ", ".join(f"cuda:{i}" for i in range(count))
        raise DeviceUnavailableError(
            f"devices: {device!r} does not exist: this host has {count} visible CUDA "
            f"GPU(s) ({have}); use one of those, or set devices to auto"
        )


def _check_mps() -> None:
    backend = getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_available():
        raise DeviceUnavailableError(
            "devices: 'mps' needs an Apple GPU, but this host has none usable "
            "(torch.backends.mps.is_available() is False); set devices to auto or cpu"
        )


class _PackedRunner:
    """The runner, pickled while a worker is spawned but unpickled by the worker's own code,
    so that a runner the worker cannot load is reported with its error, not a bare exit."""

    def __init__(self, runner: Runner | None = None, data: bytes | None = None) -> None:
        self.runner, self.data = runner, data

    def __reduce__(self) -> tuple[Any, tuple[None, bytes]]:
        buffer = io.BytesIO()
        try:  # ForkingPickler, inside the spawn: tensors and handles travel as usual
            ForkingPickler(buffer).dump(self.runner)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            name = getattr(self.runner, "__qualname__", type(self.runner).__qualname__)
            raise InvalidParamsError(
                f"run_jobs: the runner {name} cannot be sent to the worker processes "
                f"({type(exc).__name__}: {exc}); make it a module-level function or an "
                "instance of a module-level class (picklable)"
            ) from exc
        return (_PackedRunner, (None, buffer.getvalue()))

    def load(self) -> Runner:
        """The runner, unpickled in this process."""
        if self.data is None:  # never went through pickle (same process)
            return cast(Runner, self.runner)
        return cast(Runner, pickle.loads(self.data))


def _die_with_parent(parent_pid: int, lifeline: Any) -> None:
    """Make this worker exit when the parent process dies, whatever kills the parent."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:  # no libc prctl: the watchdog remains
            log.debug("no prctl(PR_SET_PDEATHSIG): %s", exc)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(_ORPHAN_EXIT)
    threading.Thread(
        target=_watch_parent, args=(parent_pid, lifeline), name="esegeta-lifeline", daemon=True
    ).start()


def _watch_parent(parent_pid: int, lifeline: Any) -> None:
    """Exit the worker, even in the middle of a job, once the parent is gone: the parent
    never writes to the lifeline, so it turns readable only at EOF (the parent's end
    closed); a changed parent pid means the worker was re-parented."""
    while True:
        try:
            closed = bool(wait([lifeline], timeout=_WATCH_INTERVAL))
        except OSError:
            closed = True
        if closed or os.getppid() != parent_pid:
            os._exit(_ORPHAN_EXIT)


def _worker(
    packed: _PackedRunner, device: str, threads: int, conn: Any, lifeline: Any, parent_pid: int
) -> None:
    """The worker process loop: take a job, run it, report, until told to stop."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what it
    # stops, and a job must not fail of it (a recorded failure would not be rerun).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid, lifeline)
    stage = "loading the runner"
    try:
        runner = packed.load()
        stage = f"setting up {device}"
        torch.set_num_threads(max(1, threads))
        index = torch.device(device).index
        if device.startswith("cuda") and index is not None:
            torch.cuda.set_device(index)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as a start failure
        detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        conn.send((_START_FAILED, stage, detail))
        return
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


@dataclass
class _Slot:
    device: str
    process: Any = None
    conn: Any = None
    lifeline: Any = None  # the parent's write end; never written, closed to stop the worker
    job_id: str | None = None
    started: float = 0.0
    ready: bool = False


def _close_quietly(*conns: Any) -> None:
    for conn in conns:
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()


class _Pool:
    """One worker process per slot, each with its own pipe: killing a worker can never
    corrupt another worker's channel. Workers start with :meth:`start`."""

    def __init__(
        self, runner: Runner, devices: Sequence[str], ctx: Any, threads: int | None = None
    ) -> None:
        self.packed, self.ctx = _PackedRunner(runner), ctx
        cpu_slots = sum(1 for d in devices if d == "cpu")
        if threads is None:  # share the cores among the CPU workers
            threads = (os.cpu_count() or 1) // max(1, cpu_slots)
        self.threads = max(1, threads)
        self.slots = [_Slot(d) for d in devices]

    def start(self, slot: _Slot) -> None:
        conn, child = self.ctx.Pipe(duplex=True)
        lifeline_child, lifeline = self.ctx.Pipe(duplex=False)  # (read end, write end)
        threads = self.threads if slot.device == "cpu" else 1
        process = self.ctx.Process(
            target=_worker,
            args=(self.packed, slot.device, threads, child, lifeline_child, os.getpid()),
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            _close_quietly(conn, lifeline)
            raise
        finally:
            _close_quietly(child, lifeline_child)
        slot.process, slot.conn, slot.lifeline = process, conn, lifeline
        slot.job_id, slot.ready = None, False

    def retire(self, slot: _Slot) -> None:
        """Kill the slot's worker (if alive) and release its pipes."""
        if slot.process is not None:
            slot.process.kill()
            slot.process.join(timeout=10)
        _close_quietly(slot.conn, slot.lifeline)
        slot.process = slot.conn = slot.lifeline = None
        slot.job_id, slot.ready = None, False

    def replace(self, slot: _Slot) -> None:
        self.retire(slot)
        self.start(slot)

    def close(self, grace: float = 5.0) -> None:
        """Stop every worker: an idle one is told to exit, a busy or still starting one is
        killed; all are joined, and one still alive after ``grace`` seconds is killed."""
        live = [slot for slot in self.slots if slot.process is not None]
        for slot in live:
            if slot.ready and slot.job_id is None:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
            else:
                slot.process.kill()
        deadline = time.monotonic() + grace
        for slot in live:
            slot.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if slot.process.exitcode is None:
                slot.process.kill()
                slot.process.join(timeout=grace)
            _close_quietly(slot.conn, slot.lifeline)
            slot.process = slot.conn = slot.lifeline = None


class Interrupts:
    """While :func:`run_jobs` runs in the main thread, SIGTERM takes the path of Ctrl-C, and
    both wait for the end of a :meth:`held` block (handing out a job, taking in a result,
    calling ``on_result``), so a run always stops between jobs; they raise
    ``KeyboardInterrupt``. Only default handlers are replaced: a handler the caller set
    (or SIG_IGN) stays in place. The previous handlers come back on exit."""

    _DEFAULTS = ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.pending: int | None = None
        self.received: int | None = None
        """The last signal handled, whether or not its ``KeyboardInterrupt`` got out."""
        self.depth = 0
        self.closing = False

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum, default in self._DEFAULTS:
                if signal.getsignal(signum) == default:
                    self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self.closing = True
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if self.pending is not None and not interrupted:
            self.raise_pending()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if self.depth or self.closing:
            if self.pending is None:
                self.pending = signum
            return
        raise _interrupt(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Defer SIGINT/SIGTERM to the end of the block."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and not self.closing:
            self.raise_pending()

    def raise_pending(self) -> None:
        """Raise ``KeyboardInterrupt`` now if a signal is waiting."""
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise _interrupt(signum)

    def raise_swallowed(self) -> None:
        """Where an interrupt raised earlier must have stopped the caller (the top of a
        job loop): raise it again. A signal handled while Python runs a weakref
        callback or a ``__del__`` (a cache entry of a collected module) raises there,
        and Python prints and drops that exception: the run would go on to the end."""
        if self.received is not None:
            signum, self.received = self.received, None
            raise _interrupt(signum)

    def defer_all(self) -> None:
        """From now on (the pool is closing) signals only wait; ``__exit__`` raises them."""
        self.closing = True


def _interrupt(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt(f"run_jobs stopped by {signal.Signals(signum).name}")


def _start_error(slot: _Slot, message: Any) -> WorkerStartError:
    """The error for a worker that reported a failure instead of being ready."""
    if not (isinstance(message, tuple) and len(message) == 3 and message[0] == _START_FAILED):
        return WorkerStartError(f"A {slot.device} worker sent {message!r} instead of starting")
    _, stage, detail = message
    lines = detail.rstrip().splitlines()
    tail = "\n".join("    " + line for line in lines[1:][-_TAIL_LINES:])
    hint = (
        " Make the runner a module-level function or class that the worker can import, and "
        "call run_jobs under `if __name__ == '__main__':` in scripts (workers are spawned)."
        if stage == "loading the runner"
        else ""
    )
    return WorkerStartError(
        f"A {slot.device} worker failed while {stage}: {lines[0]}.{hint}\n"
        f"The worker's traceback ends with:\n{tail}"
    )


def run_jobs(
    jobs: Iterable[tuple[str, Any]],
    runner: Runner,
    *,
    devices: Sequence[str] | None = None,
    time_limit: float | None = None,
    progress: bool = True,
    on_result: Callable[[JobResult], None] | None = None,
    on_start: Callable[[str, str], None] | None = None,
    poll: float = 0.05,
    threads_per_worker: int | None = None,
    cancel: threading.Event | None = None,
) -> list[JobResult]:
    """Run ``(job_id, job)`` pairs with ``runner`` in worker processes, one per device slot.

    ``devices`` lists the slots (``["cuda:0", "cuda:0", "cuda:1"]`` runs two jobs at a time
    on GPU 0; ``["cpu"] * 4`` four CPU workers); default :func:`default_devices`. They are
    checked with :func:`check_devices` before any worker starts.
    ``time_limit`` is in seconds per job. Returns one :class:`JobResult` per job, in the
    order given; ``on_result`` is called as each finishes (for writing records), and
    ``on_start(job_id, device)`` as each is handed to a worker (for live progress).
    ``threads_per_worker`` sets torch's intra-op threads in each CPU worker (default:
    the machine's cores divided among the CPU workers, so workers do not oversubscribe).
    Setting ``cancel`` (from another thread) stops the run as Ctrl-C does.

    Ctrl-C or SIGTERM (when called from the main thread) stops the run between jobs: busy
    workers are killed, none is left behind, and ``KeyboardInterrupt`` is raised once every
    result that arrived has gone through ``on_result``; interrupted jobs get no result.
    """
    pending = _checked_jobs(jobs, threads_per_worker)
    if not pending:
        return []
    slots_for = check_devices(list(devices or default_devices()))
    pool = _Pool(runner, slots_for, mp.get_context("spawn"), threads_per_worker)
    with Interrupts() as interrupts:
        bar = progress_bar(len(pending), "jobs", enabled=progress)
        state = _Run(pool, pending, interrupts, bar, time_limit, on_result, on_start)
        try:
            state.start_workers()
            state.until_done(poll, cancel)
        except KeyboardInterrupt:
            interrupts.defer_all()
            _deliver_finished(pool, state.finish)
            raise
        finally:
            interrupts.defer_all()  # a second Ctrl-C must not cut the clean-up short
            bar.close()
            pool.close()
    return [state.done[job_id] for job_id, _ in pending]


def _checked_jobs(
    jobs: Iterable[tuple[str, Any]], threads_per_worker: int | None
) -> list[tuple[str, Any]]:
    """The jobs as a list; :class:`InvalidParamsError` for a thread count below one or a
    job id given twice."""
    if threads_per_worker is not None and threads_per_worker < 1:
        raise InvalidParamsError(
            f"run_jobs: threads_per_worker must be >= 1, got {threads_per_worker}; "
            "pass None to share the cores among the CPU workers"
        )
    pending = list(jobs)
    ids = [job_id for job_id, _ in pending]
    if len(set(ids)) != len(ids):
        raise InvalidParamsError("run_jobs: job ids must be unique; rename the repeated ones")
    return pending


class _Bar(Protocol):
    """The part of a progress bar that :class:`_Run` uses."""

    def update(self, n: int, /) -> object: ...


class _Run:
    """One :func:`run_jobs` call: the jobs left, the results so far, and its steps (hand
    jobs to idle workers, take in what workers send, stop a job past the time limit,
    replace a worker that died)."""

    def __init__(
        self,
        pool: _Pool,
        jobs: list[tuple[str, Any]],
        interrupts: Interrupts,
        bar: _Bar,
        time_limit: float | None,
        on_result: Callable[[JobResult], None] | None,
        on_start: Callable[[str, str], None] | None,
    ) -> None:
        self.pool, self.interrupts, self.bar = pool, interrupts, bar
        self.todo = list(reversed(jobs))  # popped from the end: the order given
        self.total = len(jobs)
        self.done: dict[str, JobResult] = {}
        self.time_limit, self.on_result, self.on_start = time_limit, on_result, on_start

    def start_workers(self) -> None:
        """Start a worker in every slot (an interrupt waits for each start to end)."""
        for slot in self.pool.slots:
            with self.interrupts.held():
                self.pool.start(slot)

    def until_done(self, poll: float, cancel: threading.Event | None) -> None:
        """Hand out jobs and take in results until every job has one; ``cancel`` set
        from another thread stops the run as Ctrl-C does."""
        while len(self.done) < self.total:
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt("run_jobs cancelled")
            with self.interrupts.held():
                self.hand_out()
            busy = {s.conn: s for s in self.pool.slots if s.job_id is not None or not s.ready}
            ready = wait(list(busy), timeout=poll)  # where a signal usually lands
            with self.interrupts.held():
                for conn in ready:
                    self.receive(busy[conn])
                self.check_busy()

    def hand_out(self) -> None:
        """Give the next job to every worker that is ready and idle."""
        for slot in self.pool.slots:
            if slot.ready and slot.job_id is None and self.todo:
                job_id, job = self.todo.pop()
                slot.job_id, slot.started = job_id, time.monotonic()
                slot.conn.send((job_id, job))
                if self.on_start is not None:
                    self.on_start(job_id, slot.device)

    def receive(self, slot: _Slot) -> None:
        """Take in what a worker sent: that it is ready, or a job's result."""
        try:
            message = slot.conn.recv()
        except (EOFError, OSError):
            self.crashed(slot)
            return
        if not slot.ready:
            if message != _READY:
                raise _start_error(slot, message)
            slot.ready = True
            return
        job_id, status, seconds, out, error = message
        slot.job_id = None
        self.finish(JobResult(job_id, status, slot.device, seconds, out, error))

    def check_busy(self) -> None:
        """Stop the jobs past the time limit and record those whose worker died."""
        now = time.monotonic()
        for slot in self.pool.slots:
            if slot.job_id is None:
                continue
            elapsed = now - slot.started
            if self.time_limit is not None and elapsed > self.time_limit:
                self.timed_out(slot, slot.job_id, elapsed, self.time_limit)
            elif not slot.process.is_alive() and not slot.conn.poll():
                self.crashed(slot)

    def timed_out(self, slot: _Slot, job_id: str, elapsed: float, limit: float) -> None:
        """Kill the slot's worker (a fresh one takes its place) and record the timeout."""
        self.pool.replace(slot)
        self.finish(
            JobResult(
                job_id,
                "timeout",
                slot.device,
                elapsed,
                error=f"killed after the time limit of {limit:g} s",
            )
        )

    def crashed(self, slot: _Slot) -> None:
        """Record the job of a worker that died, and replace the worker; a worker that
        died before taking any job is a :class:`WorkerStartError`."""
        self.interrupts.raise_pending()  # a worker killed along with us did not crash
        job_id, elapsed = slot.job_id, time.monotonic() - slot.started
        slot.process.join(timeout=5)
        code = slot.process.exitcode
        if job_id is None:  # died before taking a job: the runner cannot even start
            raise WorkerStartError(
                f"A {slot.device} worker died on start (exit code {code}) before taking "
                "a job (its own error, if any, went to stderr). Most often the runner cannot "
                "be loaded in a fresh process: make it a module-level function or class "
                "(picklable), and call run_jobs under `if __name__ == '__main__':` in "
                "scripts (workers are spawned)."
            )
        self.pool.replace(slot)
        self.finish(
            JobResult(
                str(job_id),
                "crashed",
                slot.device,
                elapsed,
                error=f"worker process died (exit code {code})",
            )
        )

    def finish(self, result: JobResult) -> None:
        """Record a result: the progress bar, a warning for a failed job, ``on_result``."""
        self.done[result.job_id] = result
        self.bar.update(1)
        if result.status != "ok":
            log.warning(
                "job %s %s: %s",
                result.job_id,
                result.status,
                result.error.splitlines()[0] if result.error else "",
            )
        if self.on_result is not None:
            self.on_result(result)


def _deliver_finished(pool: _Pool, finish: Callable[[JobResult], None]) -> None:
    """On an interrupt, hand over the results that busy workers already sent."""
    for slot in pool.slots:
        if slot.job_id is None or not slot.ready or slot.conn is None:
            continue
        try:
            if not slot.conn.poll():
                continue
            job_id, status, seconds, out, error = slot.conn.recv()
        except (EOFError, OSError):  # the worker died: it finished nothing
            continue
        slot.job_id = None
        try:
            finish(JobResult(job_id, status, slot.device, seconds, out, error))
        except Exception:  # the interrupt matters more than a late result
            log.warning("on_result failed for job %s after the interrupt", job_id, exc_info=True)

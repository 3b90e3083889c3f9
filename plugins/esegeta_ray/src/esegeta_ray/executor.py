"""The Ray executor: a run's jobs on a Ray cluster, the run folder written by the driver.

One long-lived actor per device slot (:mod:`esegeta_ray.slots`) keeps the model loaded
between jobs. Each input and mask is read once by the driver and put once in the object
store, shared by all its jobs and released after its last one. Each actor holds one job
at a time, so at most one job per slot is in flight whatever the run's size (the
backpressure that keeps the object store and the driver's memory bounded). The actor
returns the job's files as bytes and the driver writes them as a local run does (atomic
files, the record last, with its fingerprint), so Ray and local runs resume each other;
``shared_storage`` lets the actors write straight into a run folder every node mounts.

A job past ``time_limit`` gets its actor killed (``ray.kill``) and replaced, and is
recorded as ``timeout``. A job whose actor or node is lost is retried on another slot
up to ``max_retries`` times, then recorded as ``crashed``; a slot whose node died is not
replaced. Ctrl-C or SIGTERM kills every actor of the run, delivers the results that
arrived, and raises ``KeyboardInterrupt``: the run is resumable and nothing is left
running on the cluster (actors die with their driver even when it is SIGKILLed).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from esegeta_core.errors import EsegetaError, WorkerStartError
from esegeta_core.progress import progress_bar
from esegeta_core.runtime.executor import Executor, Submission
from esegeta_core.runtime.scheduler import Interrupts, JobResult
from esegeta_ray.actor import SlotActor, model_files
from esegeta_ray.options import RayOptions
from esegeta_ray.slots import SlotSpec, plan_slots

log = logging.getLogger(__name__)

_POLL = 0.05  # seconds between checks of time limits and cancellation
_TAIL_LINES = 12


class RayExecutor(Executor):
    """``esegeta run --executor ray``: jobs on long-lived actors of a Ray cluster."""

    name = "ray"
    summary = "a Ray cluster: one long-lived actor per device slot (esegeta-ray)"
    Options = RayOptions
    options: RayOptions

    def run(self, submission: Submission) -> None:
        import ray

        self._submission = submission
        joined = not ray.is_initialized()
        if joined:
            kwargs: dict[str, Any] = {
                "address": self.options.address,
                "namespace": self.options.namespace,
                "log_to_driver": False,
                "logging_level": logging.WARNING,
            }
            if self.options.address is None and not os.environ.get("RAY_ADDRESS"):
                kwargs["include_dashboard"] = False
            main = threading.current_thread() is threading.main_thread()
            before = signal.getsignal(signal.SIGTERM) if main else None
            ray.init(**kwargs)
            if main:  # ray.init makes SIGTERM a sys.exit; it must stop the run as Ctrl-C does
                signal.signal(signal.SIGTERM, before)
        try:
            _Driver(submission, self.options).run()
        finally:
            if joined:
                ray.shutdown()


@dataclass
class _Slot:
    spec: SlotSpec
    handle: Any
    ready_ref: Any
    created: float
    node: str = ""
    ready: bool = False
    job_id: str | None = None
    job: Any = None
    future: Any = None
    started: float = 0.0


class _Driver:
    """One run's loop: start actors, hand out jobs, take results, enforce limits."""

    def __init__(self, submission: Submission, options: RayOptions) -> None:
        import ray

        self.ray, self.sub, self.options = ray, submission, options
        self.todo: deque[tuple[str, Any]] = deque(submission.jobs)
        worker = submission.worker
        self.files = {job_id: worker.files_of(job) for job_id, job in submission.jobs}
        self.uses = Counter(f for files in self.files.values() for f in files)
        self.refs: dict[tuple[str, str], Any] = {}
        self.attempts: Counter[str] = Counter()
        self.start_failures = 0
        self.slots: list[_Slot] = []
        config = submission.config
        shipped = model_files(config, submission.worker.base)  # type: ignore[attr-defined]
        self.shipped_ref = ray.put(shipped)
        self.actor_class = ray.remote(SlotActor)
        self.specs = plan_slots(config, options, ray.cluster_resources())
        self.bar: Any = None

    # -- slots ---------------------------------------------------------------
    def start(self, spec: SlotSpec) -> None:
        actor = self.actor_class.options(
            num_cpus=spec.num_cpus,
            num_gpus=spec.num_gpus,
            max_restarts=0,
            max_concurrency=1,
            scheduling_strategy="SPREAD",
            runtime_env=self.options.runtime_env,
        ).remote(self.sub.worker, spec.device, spec.threads, self.shipped_ref)
        self.slots.append(_Slot(spec, actor, actor.ready.remote(), time.monotonic()))

    def retire(self, slot: _Slot) -> None:
        self.slots.remove(slot)
        try:
            self.ray.kill(slot.handle, no_restart=True)
        except Exception:
            log.debug("actor of a %s slot was already gone", slot.spec.kind, exc_info=True)

    def alive_nodes(self) -> set[str]:
        return {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}

    def took_ready(self, slot: _Slot) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            info = self.ray.get(slot.ready_ref)
        except RayTaskError as exc:  # the model cannot be built there: as locally, stop
            raise _start_error(slot, exc) from None
        except RayActorError as exc:  # it died while starting (its node died, a crash)
            self.start_failures += 1
            log.warning("a %s slot was lost while starting (%s)", slot.spec.kind, _first(exc))
            self.retire(slot)
            if self.start_failures > 2 * len(self.specs):
                raise _start_error(slot, exc) from None
            self.start(slot.spec)
            return
        slot.ready, slot.node = True, info["node"]
        log.info("ray slot ready: %s on %s (pid %s)", slot.spec.device, info["ip"], info["pid"])

    # -- jobs ----------------------------------------------------------------
    def dispatch(self) -> None:
        for slot in self.slots:
            if not (slot.ready and slot.job_id is None and self.todo):
                continue
            job_id, job = self.todo.popleft()
            boxed = []
            for kind, key in self.files[job_id]:
                if (kind, key) not in self.refs:
                    self.refs[kind, key] = self.ray.put(self.sub.worker.read(kind, key))
                boxed.append((kind, key, [self.refs[kind, key]]))
            write = self.options.shared_storage
            slot.job_id, slot.job, slot.started = job_id, job, time.monotonic()
            slot.future = slot.handle.run.remote(job, boxed, write)
            self.sub.on_start(job_id, slot.spec.device)

    def release(self, job_id: str) -> None:
        """The job is settled: drop the object-store copies no other job needs."""
        for key in self.files[job_id]:
            self.uses[key] -= 1
            if self.uses[key] <= 0:
                self.refs.pop(key, None)

    def finish(self, result: JobResult) -> None:
        self.release(result.job_id)
        self.bar.update(1)
        if result.status != "ok":
            log.warning(
                "job %s %s: %s",
                result.job_id,
                result.status,
                result.error.splitlines()[0] if result.error else "",
            )
        self.sub.on_result(result)

    def took_result(self, slot: _Slot) -> None:
        from ray.exceptions import RayActorError

        job_id, job, future = slot.job_id, slot.job, slot.future
        if job_id is None:  # only busy slots get here
            return
        try:
            status, out, seconds, error = self.ray.get(future)
        except RayActorError as exc:
            self.lost(slot, exc)
            return
        slot.job_id = slot.job = slot.future = None
        record: dict[str, Any] = {}
        if status == "ok":
            try:
                record = out if self.options.shared_storage else self.sub.worker.store(job, out)
            except (EsegetaError, OSError) as exc:
                status, error = "error", f"{type(exc).__name__}: {exc}"
        log.debug("job %s %s on %s", job_id, status, slot.node[:12])
        self.finish(JobResult(job_id, status, slot.spec.device, seconds, record, error))

    def lost(self, slot: _Slot, exc: BaseException) -> None:
        """The slot's actor died mid-job: retry the job elsewhere (bounded), replace the
        actor unless its node is gone."""
        job_id, job = slot.job_id, slot.job
        if job_id is None:  # only busy slots get here
            return
        elapsed = time.monotonic() - slot.started
        node_alive = slot.node in self.alive_nodes()
        self.retire(slot)
        if node_alive:
            self.start(slot.spec)
        else:
            log.warning("node %s is gone: its %s slot is not replaced", slot.node[:12], slot.spec)
        self.attempts[job_id] += 1
        why = "its node died" if not node_alive else "its worker process died"
        if self.attempts[job_id] <= self.options.max_retries:
            log.warning(
                "job %s: %s (%s); retry %d of %d on another slot",
                job_id,
                why,
                _first(exc),
                self.attempts[job_id],
                self.options.max_retries,
            )
            self.todo.appendleft((job_id, job))
            return
        error = f"worker lost {self.attempts[job_id]} time(s), last because {why}: {_first(exc)}"
        self.finish(JobResult(job_id, "crashed", slot.spec.device, elapsed, error=error))

    def check_limits(self) -> None:
        now = time.monotonic()
        limit = self.sub.time_limit
        for slot in list(self.slots):
            if slot.job_id is not None and limit is not None and now - slot.started > limit:
                job_id, elapsed = slot.job_id, now - slot.started
                self.retire(slot)  # kill the actor with force: the job cannot be stopped else
                self.start(slot.spec)
                self.finish(
                    JobResult(
                        job_id,
                        "timeout",
                        slot.spec.device,
                        elapsed,
                        error=f"killed after the time limit of {limit:g} s",
                    )
                )
            elif not slot.ready and now - slot.created > self.options.start_timeout:
                log.warning(
                    "a %s slot did not start within %g s (no node with %g CPU / %g GPU free?); "
                    "given up",
                    slot.spec.kind,
                    self.options.start_timeout,
                    slot.spec.num_cpus,
                    slot.spec.num_gpus,
                )
                self.retire(slot)

    # -- the loop ------------------------------------------------------------
    def run(self) -> None:
        for spec in self.specs:
            self.start(spec)
        log.info("ray: %d jobs on %d slots (%s)", len(self.todo), len(self.specs), _count(self))
        self.bar = progress_bar(len(self.todo), "jobs (ray)", enabled=self.sub.progress)
        with Interrupts() as interrupts:
            try:
                self.loop(interrupts)
            except KeyboardInterrupt:
                interrupts.defer_all()
                self.deliver_finished()
                raise
            finally:
                interrupts.defer_all()  # a second Ctrl-C must not cut the clean-up short
                self.bar.close()
                for slot in list(self.slots):
                    self.retire(slot)
                self.refs.clear()

    def loop(self, interrupts: Interrupts) -> None:
        while self.todo or any(s.job_id is not None for s in self.slots):
            if self.sub.cancelled.is_set():
                raise KeyboardInterrupt("run cancelled")
            if not self.slots:
                raise WorkerStartError(
                    f"executor ray: no slot is left ({len(self.todo)} jobs not run: nodes died "
                    "or no node could hold a slot); the finished jobs are saved, run again to "
                    "resume once the cluster has room"
                )
            with interrupts.held():
                self.dispatch()
            waiting = {s.future if s.ready else s.ready_ref: s for s in self.slots}
            waiting.pop(None, None)
            if waiting:
                done, _ = self.ray.wait(list(waiting), num_returns=1, timeout=_POLL)
                if done:
                    done, _ = self.ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
            else:
                done = []
            with interrupts.held():
                for ref in done:
                    slot = waiting[ref]
                    if slot.ready:
                        self.took_result(slot)
                    else:
                        self.took_ready(slot)
                self.check_limits()

    def deliver_finished(self) -> None:
        """On an interrupt, store the results that already arrived."""
        busy = [s for s in self.slots if s.future is not None]
        if not busy:
            return
        done, _ = self.ray.wait([s.future for s in busy], num_returns=len(busy), timeout=0)
        for slot in busy:
            if slot.future in done:
                try:
                    self.took_result(slot)
                except Exception:
                    log.warning("job %s: late result not stored", slot.job_id, exc_info=True)


def _count(driver: _Driver) -> str:
    kinds = Counter(spec.kind for spec in driver.specs)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


def _first(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "died because" in line or "Error" in line:
            return line
    return lines[0] if lines else type(exc).__name__


def _start_error(slot: _Slot, exc: BaseException) -> WorkerStartError:
    lines = str(exc).rstrip().splitlines()
    tail = "\n".join("    " + line for line in lines[-_TAIL_LINES:])
    return WorkerStartError(
        f"executor ray: a {slot.spec.device} slot failed while loading the model; check "
        "that every node has esegeta and the model's packages installed (or give them in "
        f"executor.options.runtime_env). The actor's error ends with:\n{tail}"
    )

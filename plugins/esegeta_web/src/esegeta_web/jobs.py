"""Run folders seen from the web app: finding them, their progress, and launching,
stopping and resuming runs.

A run is launched exactly as ``esegeta run CONFIG`` (``python -m esegeta_core.cli run``)
in its own process group, its output in ``RUN_DIR/serve.log``; "Stop" sends SIGTERM,
which the CLI turns into a clean, resumable stop; "Resume" starts it again. Runs
started from a terminal are stopped the same way once the process holding the run
folder's lock is verified (:func:`verified_lock_holder`), and resumed from their own
``config.json`` (:meth:`JobManager.resume`). Progress is read from the run folder (one
``record.json`` per finished job), cached per file modification time so a 10,000-job
run is counted in milliseconds after the first time.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from esegeta_core.errors import EsegetaError, InvalidParamsError, RunConflictError
from esegeta_core.runs import LOCK, PROGRESS

log = logging.getLogger(__name__)

STATE_DIR = ".esegeta-web"
"""Folder in the workspace where the app keeps submitted configs and launch notes."""
SERVE_LOG = "serve.log"
SHUTDOWN_WAIT = 10.0
"""Seconds the server waits, when it exits, for the runs it started to stop."""
MAX_DEPTH = 3
"""How deep under the workspace run folders are looked for (output_dir/name)."""


@dataclass
class Progress:
    """What a run folder says about its jobs now."""

    ok: int
    failed: int
    planned: int | None
    state: str  # running, finished, stopped (incomplete and not running)
    started: float
    updated: float
    workers: dict[str, str] = field(default_factory=dict)
    """While running: the job each worker slot is running, with its device."""

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def as_dict(self) -> dict[str, Any]:
        busy = len(self.workers)
        pending = None if self.planned is None else max(self.planned - self.done - busy, 0)
        return {
            "ok": self.ok,
            "failed": self.failed,
            "planned": self.planned,
            "pending": pending,
            "running": busy,
            "workers": self.workers,
            "state": self.state,
            "started": self.started,
            "duration": round(self.updated - self.started, 1),
        }


def find_runs(workspace: Path) -> list[Path]:
    """Every run folder (holding ``config.json``) under ``workspace``, newest first.
    Hidden folders and the inside of run folders are not searched."""
    found: list[tuple[float, Path]] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                found.append((os.stat(Path(entry.path) / "config.json").st_mtime, Path(entry.path)))
                continue
            except OSError:
                pass
            if depth < MAX_DEPTH:
                walk(Path(entry.path), depth + 1)

    walk(workspace, 1)
    found.sort(key=lambda item: (-item[0], str(item[1])))
    return [path for _, path in found]


class RecordIndex:
    """Records of run folders, cached by file modification time (records are written
    atomically, so an unchanged mtime means an unchanged record)."""

    def __init__(self) -> None:
        self._records: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._summaries: dict[Path, tuple[int, list[dict[str, Any]]]] = {}
        self._settled: dict[Path, tuple[tuple[int, ...], list[dict[str, Any]]]] = {}

    def records(self, run_dir: Path) -> list[dict[str, Any]]:
        """Every job record of ``run_dir``: ``summary.json`` when it is newer than the
        config (the run finished), else each ``jobs/*/record.json``. The listing of a run
        that no process is writing (its ``.lock`` free) is kept until its folder changes:
        a stopped 10,000-job run is listed once, not on every request."""
        summary = self.summary(run_dir)
        if summary is not None:
            return summary
        key = _settled_key(run_dir)
        cached = self._settled.get(run_dir)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        out = self._listed(run_dir)
        if key is not None and key == _settled_key(run_dir):
            self._settled[run_dir] = (key, out)
        return out

    def _listed(self, run_dir: Path) -> list[dict[str, Any]]:
        out = []
        try:
            entries = sorted(os.scandir(run_dir / "jobs"), key=lambda e: e.name)
        except OSError:
            return []
        for entry in entries:
            path = Path(entry.path) / "record.json"
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            cached = self._records.get(path)
            if cached is None or cached[0] != mtime:
                try:
                    cached = (mtime, json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
                self._records[path] = cached
            out.append(cached[1])
        return out

    def summary(self, run_dir: Path) -> list[dict[str, Any]] | None:
        """The records of ``summary.json`` when it is as new as ``config.json`` (the
        last run of the folder finished), else None."""
        try:
            mtime = os.stat(run_dir / "summary.json").st_mtime_ns
            if mtime < os.stat(run_dir / "config.json").st_mtime_ns:
                return None
        except OSError:
            return None
        cached = self._summaries.get(run_dir)
        if cached is None or cached[0] != mtime:
            try:
                data = json.loads((run_dir / "summary.json").read_text())
            except (OSError, ValueError):
                return None
            cached = (mtime, data if isinstance(data, list) else [])
            self._summaries[run_dir] = cached
        return cached[1]


def spawn_cli(args: list[str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m esegeta_core.cli ARGS`` in its own session (a signal to the server
    never reaches it, and SIGTERM to it stops it cleanly), output appended to
    ``log_path``: runs and evaluations launched from the app take the CLI's code path."""
    command = [sys.executable, "-m", "esegeta_core.cli", *args]
    with open(log_path, "ab") as output:
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _settled_key(run_dir: Path) -> tuple[int, ...] | None:
    """What changes when a run writes (config.json, the jobs folder, progress.json), or
    None while a process holds the run folder's lock (its records are still coming)."""
    if _lock_holder_alive(run_dir):
        return None
    try:
        return tuple(
            (run_dir / name).stat().st_mtime_ns
            for name in ("config.json", "jobs", PROGRESS)
            if (run_dir / name).exists()
        )
    except OSError:
        return None


def _started(run_dir: Path, note: dict[str, Any]) -> float:
    """When the run (or the resumed one) started: config.json is written then."""
    try:
        return (run_dir / "config.json").stat().st_mtime
    except OSError:
        return float(note.get("started", time.time()))


def _live_progress(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``progress.json`` (esegeta_core.runs.LiveProgress) when it belongs to
    the run now going (as new as config.json, state running), else None."""
    path = run_dir / PROGRESS
    try:
        if path.stat().st_mtime_ns < (run_dir / "config.json").stat().st_mtime_ns:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keys = ("ok", "failed", "total", "running", "state")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        return None
    if data["state"] != "running" or not isinstance(data["running"], dict):
        return None
    return data


def _lock_holder_alive(run_dir: Path) -> bool:
    """Whether the process named in the run folder's lock file still runs esegeta (read
    only: probing the lock itself could make a starting run fail)."""
    pid = _lock_pid(run_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return b"esegeta" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _lock_pid(run_dir: Path) -> int | None:
    """The pid the run folder's lock file names ("esegeta run, pid N"), or None."""
    try:
        text = (run_dir / LOCK).read_text()
        return int(text.rsplit("pid", 1)[1].split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _lock_is_held(run_dir: Path) -> bool:
    """Whether some process holds the run folder's flock now: a non-blocking try on a
    separate handle, released at once when it succeeds (the folder was free)."""
    import fcntl

    try:
        handle = open(run_dir / LOCK, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
    finally:
        handle.close()


def verified_lock_holder(run_dir: Path) -> int:
    """The pid of the ``esegeta run`` process that holds ``run_dir``'s lock, verified
    before any signal is sent: the folder's lock is held now, the pid of its lock file
    runs a command line with "esegeta" and "run" (``/proc/PID/cmdline``), and that
    process has this folder's lock file open (``/proc/PID/fd``). Raises
    :class:`RunStopError` saying which check failed."""
    where = f"Run folder {run_dir.name!r}"
    pid = _lock_pid(run_dir)
    if pid is None:
        raise RunStopError(f"{where} has no lock file naming a process: it is not running.")
    if not _lock_is_held(run_dir):
        raise RunStopError(
            f"{where}: its lock is free (pid {pid} of the lock file no longer runs it): "
            "it is not running."
        )
    proc = Path(f"/proc/{pid}")
    try:
        args = [a.decode("utf-8", "replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
    except OSError as exc:
        raise RunStopError(
            f"{where}: cannot read the command line of pid {pid} ({exc}); stop the run "
            "where it was started (Ctrl-C)."
        ) from exc
    if not any("esegeta" in a for a in args) or "run" not in args:
        raise RunStopError(
            f"{where}: pid {pid} of its lock file is not an `esegeta run` process "
            f"({' '.join(args)[:120]!r}); nothing was stopped. Stop the run where it was "
            "started (Ctrl-C)."
        )
    lock = str((run_dir / LOCK).resolve())
    try:
        fds = [os.readlink(entry.path) for entry in os.scandir(proc / "fd")]
    except OSError as exc:
        raise RunStopError(
            f"{where}: cannot check that pid {pid} holds this folder ({exc}); stop the run "
            "where it was started (Ctrl-C)."
        ) from exc
    if lock not in fds:
        raise RunStopError(
            f"{where}: pid {pid} runs esegeta but does not hold this folder's lock file; "
            "nothing was stopped. Stop the run where it was started (Ctrl-C)."
        )
    return pid


RESUME_BASES = (
    "the config's folder (the run folder less output_dir/name), the workspace, then the run "
    "folder's parent"
)


def resume_bases(run_dir: Path, stored: dict[str, Any], workspace: Path) -> list[Path]:
    """Where the relative paths of ``run_dir``'s config.json may start (see
    :data:`RESUME_BASES`): first the folder of the config file ``esegeta run`` read, known
    when its relative ``output_dir`` is the end of the run folder's parent (a config in
    ``exp/`` with ``output_dir: out`` ran into ``exp/out/NAME``)."""
    bases = [workspace, run_dir.parent]
    output_dir = stored.get("output_dir", "esegeta-out")
    if isinstance(output_dir, str) and output_dir and not Path(output_dir).is_absolute():
        parts = Path(os.path.normpath(output_dir)).parts
        parent = run_dir.parent
        if ".." not in parts and parent.parts[-len(parts) :] == parts:
            folder = Path(*parent.parts[: -len(parts)]) if len(parts) < len(parent.parts) else None
            if folder is not None and folder.is_relative_to(workspace):
                bases.insert(0, folder)
    return list(dict.fromkeys(bases))


def _path_fields(data: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(where, container, key) of every path a run config names: inputs, region masks,
    the model's checkpoint, evaluation masks and the evaluation models' checkpoints."""
    out: list[tuple[str, Any, Any]] = []
    inputs = data.get("inputs")
    if isinstance(inputs, dict) and isinstance(inputs.get("paths"), list):
        out += [(f"inputs.paths[{i}]", inputs["paths"], i) for i in range(len(inputs["paths"]))]
    for i, target in enumerate(data.get("targets") or []):
        if isinstance(target, dict) and isinstance(target.get("mask"), str):
            out.append((f"targets[{i}].mask", target, "mask"))
    model = data.get("model")
    if isinstance(model, dict) and model.get("checkpoint"):
        out.append(("model.checkpoint", model, "checkpoint"))
    evaluation = data.get("evaluation")
    if isinstance(evaluation, dict):
        masks = evaluation.get("masks")
        if isinstance(masks, list):
            out += [(f"evaluation.masks[{i}]", masks, i) for i in range(len(masks))]
        for name, spec in (evaluation.get("models") or {}).items():
            if isinstance(spec, dict) and spec.get("checkpoint"):
                out.append((f"evaluation.models.{name}.checkpoint", spec, "checkpoint"))
    return out


def rebase_paths(data: dict[str, Any], bases: list[Path], workspace: Path) -> dict[str, Any]:
    """``data`` (a run folder's config.json) with every relative path resolved against
    the first of ``bases`` where it exists (a glob pattern: where it matches), then
    written relative to ``workspace`` as the app's configs are (a path outside stays
    absolute, for :func:`~esegeta_web.security.confine` to refuse). ``esegeta run``
    resolves them against its config file's folder, which config.json does not record,
    hence the guesses. Raises
    :class:`InvalidParamsError` naming a path found under none of them."""
    data = json.loads(json.dumps(data))  # a deep copy
    for where, container, key in _path_fields(data):
        value = str(container[key])
        found: Path | None = Path(value) if Path(value).is_absolute() else None
        for base in [] if found else bases:
            candidate = base / value
            if glob.glob(str(candidate)) if glob.has_magic(value) else candidate.exists():
                found = candidate
                break
        if found is None:
            raise InvalidParamsError(
                f"Cannot resume: {where} {value!r} of config.json is relative to the folder "
                "of the config file `esegeta run` read, and exists under none of "
                f"{RESUME_BASES} ({', '.join(str(b) for b in bases)}). Resume it with "
                "`esegeta run CONFIG` on the command line."
            )
        absolute = Path(os.path.normpath(found))
        inside = absolute.is_relative_to(workspace)
        container[key] = absolute.relative_to(workspace).as_posix() if inside else str(absolute)
    return data


class JobManager:
    """Launches, stops and resumes runs of one workspace, and reports their progress."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.index = RecordIndex()
        self.processes: dict[Path, subprocess.Popen[bytes]] = {}

    # -- state ----------------------------------------------------------------------
    def _note_path(self, run_dir: Path) -> Path:
        rel = run_dir.relative_to(self.workspace).as_posix().replace("/", "__")
        return self.workspace / STATE_DIR / "runs" / f"{rel}.json"

    def note(self, run_dir: Path) -> dict[str, Any]:
        """What the app noted when it launched ``run_dir`` (config file, planned jobs)."""
        try:
            return json.loads(self._note_path(run_dir).read_text())
        except (OSError, ValueError):
            return {}

    def is_running(self, run_dir: Path) -> bool:
        """Whether a run of ``run_dir`` is in progress (started here or elsewhere)."""
        process = self.processes.get(run_dir)
        if process is not None:
            return process.poll() is None
        return _lock_holder_alive(run_dir)

    def progress(self, run_dir: Path) -> Progress:
        """The run's job counts and state (running, finished, or stopped: incomplete
        and not running) from its folder."""
        note = self.note(run_dir)
        running = self.is_running(run_dir)
        live = _live_progress(run_dir) if running else None
        if live is not None:  # one small file, however many jobs the run has
            started = _started(run_dir, note)
            return Progress(
                int(live["ok"]),
                int(live["failed"]),
                int(live["total"]),
                "running",
                started,
                max(time.time(), started),
                {str(k): str(v) for k, v in live["running"].items()},
            )
        records = self.index.records(run_dir)
        ok = sum(1 for r in records if r.get("status") == "ok")
        planned = note.get("planned")
        summary_done = self.index.summary(run_dir) is not None
        if running:
            state = "running"
        elif summary_done and (planned is None or len(records) >= planned):
            state = "finished"
        else:
            state = "stopped"
        if planned is None and summary_done:
            planned = len(records)
        started = _started(run_dir, note)
        updated = time.time()
        if not running:
            try:
                updated = max(
                    (run_dir / name).stat().st_mtime
                    for name in ("config.json", "summary.json", "run.log")
                    if (run_dir / name).exists()
                )
            except ValueError:
                updated = started
        return Progress(ok, len(records) - ok, planned, state, started, max(updated, started))

    # -- launching ------------------------------------------------------------------
    def launch(self, config_data: dict[str, Any]) -> Path:
        """Validate a (sanitised) config, write it under the workspace and start it as
        ``esegeta run``; returns the run folder. Refuses a run folder in use."""
        from pydantic import ValidationError

        from esegeta_core.config import RunConfig
        from esegeta_core.config_checks import check_config
        from esegeta_core.runs import plan_jobs

        try:
            config = RunConfig.model_validate(config_data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidParamsError(f"The config is invalid: {problems}") from exc
        problems = check_config(config, self.workspace)
        if problems:
            raise InvalidParamsError("The config cannot run: " + "; ".join(problems))
        run_dir = config.run_dir(self.workspace)
        if self.is_running(run_dir):
            raise RunConflictError(
                f"Run folder {run_dir.relative_to(self.workspace)} is running; stop it first "
                "or choose another name."
            )
        planned = len(plan_jobs(config, self.workspace))
        rel = run_dir.relative_to(self.workspace).as_posix().replace("/", "__")
        config_path = self.workspace / STATE_DIR / "configs" / f"{rel}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config_data, sort_keys=False))
        self._start(run_dir, config_path, planned)
        return run_dir

    def resume(self, run_dir: Path, models: dict[str, Any] | None = None) -> None:
        """Start a stopped run again: from the config the app launched it with, or, for
        a run started with ``esegeta run`` elsewhere, from the run folder's own
        ``config.json`` (see :meth:`cli_resume_config`; ``models`` is the allowlist)."""
        if self.is_running(run_dir):
            raise RunConflictError(f"Run {run_dir.relative_to(self.workspace)} is running.")
        config_path = self.note(run_dir).get("config")
        if config_path and Path(config_path).is_file():
            self._start(run_dir, Path(config_path), self.note(run_dir).get("planned"))
            return
        config_path, planned, force = self.cli_resume_config(run_dir, models or {})
        self._start(run_dir, config_path, planned, force=force)

    def cli_resume_config(self, run_dir: Path, models: dict[str, Any]) -> tuple[Path, int, bool]:
        """A config to resume a run folder the app did not launch, written under the
        workspace's state folder: its ``config.json`` with relative paths resolved
        (:func:`rebase_paths`, against :func:`resume_bases`), the
        run folder as output, the model checked against the allowlist and every path
        confined (:func:`esegeta_web.models.sanitise_config`). Returns the config's path,
        the planned job count, and whether ``--force`` is needed (the paths written
        differ from config.json's text; job fingerprints hash the files, so finished
        jobs are kept)."""
        from pydantic import ValidationError

        from esegeta_core.config import RunConfig
        from esegeta_core.config_checks import check_config
        from esegeta_core.runs import config_changes, plan_jobs
        from esegeta_web.models import sanitise_config

        rel = run_dir.relative_to(self.workspace).as_posix()
        try:
            stored = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidParamsError(
                f"Run {rel} cannot be resumed: its config.json is unreadable ({exc})."
            ) from exc
        if not isinstance(stored, dict):
            raise InvalidParamsError(f"Run {rel} cannot be resumed: config.json is not a mapping.")
        data = rebase_paths(stored, resume_bases(run_dir, stored, self.workspace), self.workspace)
        data["output_dir"] = run_dir.parent.relative_to(self.workspace).as_posix()
        data["name"] = run_dir.name
        data = sanitise_config(data, models, self.workspace)
        try:
            config = RunConfig.model_validate(data)
        except ValidationError as exc:
            raise InvalidParamsError(f"Run {rel}: its config.json is invalid: {exc}") from exc
        problems = check_config(config, self.workspace)
        if problems:
            raise InvalidParamsError(f"Run {rel} cannot resume: " + "; ".join(problems))
        if config.run_dir(self.workspace) != run_dir:
            raise InvalidParamsError(f"Run {rel}: its config.json does not name this folder.")
        force = bool(config_changes(stored, config.model_dump(mode="json")))
        config_path = self.workspace / STATE_DIR / "configs" / f"{rel.replace('/', '__')}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        return config_path, len(plan_jobs(config, self.workspace)), force

    def _start(
        self, run_dir: Path, config_path: Path, planned: int | None, *, force: bool = False
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        note = {"config": str(config_path), "planned": planned, "started": time.time()}
        note_path = self._note_path(run_dir)
        note_path.parent.mkdir(parents=True, exist_ok=True)
        note_path.write_text(json.dumps(note))
        args = ["run", str(config_path), *(["--force"] if force else [])]
        self.processes[run_dir] = spawn_cli(args, self.workspace, run_dir / SERVE_LOG)
        log.info("launched %s (pid %d)", run_dir, self.processes[run_dir].pid)

    def log_tail(self, run_dir: Path, size: int = 4096) -> str:
        """The end of the run's ``serve.log`` (what the launched command printed)."""
        try:
            with open(run_dir / SERVE_LOG, "rb") as handle:
                handle.seek(max(handle.seek(0, os.SEEK_END) - size, 0))
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, run_dir: Path) -> bool:
        """SIGTERM to the run's process (the CLI stops between jobs, resumable): one this
        app started, or an ``esegeta run`` started elsewhere once
        :func:`verified_lock_holder` has checked it (else :class:`RunStopError`)."""
        process = self.processes.get(run_dir)
        if process is None or process.poll() is not None:
            pid = verified_lock_holder(run_dir)
            os.kill(pid, signal.SIGTERM)
            log.info("sent SIGTERM to esegeta run pid %d of %s", pid, run_dir)
            return True
        os.kill(process.pid, signal.SIGTERM)
        return True

    def shutdown(self) -> None:
        """Stop every run this app started (the server is exiting): SIGTERM, then wait
        up to ``SHUTDOWN_WAIT`` seconds for their clean stops (they stay resumable)."""
        live = [p for p in self.processes.values() if p.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        end = time.monotonic() + SHUTDOWN_WAIT
        for process in live:
            try:
                process.wait(timeout=max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("run process %d still stopping after %ss", process.pid, SHUTDOWN_WAIT)


class RunStopError(EsegetaError, RuntimeError):
    """A run cannot be stopped from the app: the process holding its folder cannot be
    verified as the ``esegeta run`` of that folder."""

"""The "Evaluate" button of a run: ``esegeta evaluate`` on a finished run, in the
background, with its status.

The evaluation runs as ``python -m esegeta_core.cli evaluate CONFIG`` in its own process
group (as runs do), its output in ``RUN_DIR/evaluate.log``. CONFIG is the config the app
launched the run with (already checked against the models allowlist), or the run
folder's ``config.json`` checked now, with the chosen metrics written into its
``evaluation`` section; it is kept in ``.esegeta-web/configs/``. The evaluation writes
``RUN_DIR/evaluation/leaderboard.csv``, which the run page shows as a sortable table.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response

from esegeta_core.errors import EsegetaError, InvalidParamsError, RunConflictError
from esegeta_web.jobs import STATE_DIR, JobManager, rebase_paths, resume_bases, spawn_cli
from esegeta_web.models import check_models, sanitise_config
from esegeta_web.security import confine

log = logging.getLogger(__name__)

router = APIRouter()

EVALUATE_LOG = "evaluate.log"


class EvaluationNotFoundError(EsegetaError, LookupError):
    """No run folder to evaluate at that path of the workspace."""


class Evaluations:
    """Starts ``esegeta evaluate`` on run folders of one workspace and tells their state."""

    def __init__(self, workspace: Path, jobs: JobManager) -> None:
        self.workspace = workspace
        self.jobs = jobs
        self.processes: dict[Path, subprocess.Popen[bytes]] = {}
        atexit.register(self.shutdown)

    def _key(self, run_dir: Path) -> str:
        return run_dir.relative_to(self.workspace).as_posix().replace("/", "__")

    def _note_path(self, run_dir: Path) -> Path:
        return self.workspace / STATE_DIR / "evaluations" / f"{self._key(run_dir)}.json"

    def note(self, run_dir: Path) -> dict[str, Any]:
        """What the app noted when it started the run's last evaluation."""
        try:
            return json.loads(self._note_path(run_dir).read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def _config(self, run_dir: Path, models: dict[str, Any]) -> dict[str, Any]:
        """The run's config: the one the app launched it with, else its config.json
        checked against the models allowlist and the workspace."""
        launched = self.jobs.note(run_dir).get("config")
        if launched and Path(launched).is_file():
            data = yaml.safe_load(Path(launched).read_text())
            if isinstance(data, dict):
                return data
        try:
            data = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise EvaluationNotFoundError(
                f"Run {self._key(run_dir)} has no readable config.json ({exc}); run it first."
            ) from exc
        if not isinstance(data, dict):
            raise InvalidParamsError(f"Run {self._key(run_dir)}: config.json is not a mapping.")
        check_models(data, models, self.workspace)  # code first, paths next
        # its relative paths are relative to the config file `esegeta run` read, which the
        # config written under .esegeta-web/configs/ is not: resolve them as Resume does
        bases = resume_bases(run_dir, data, self.workspace)
        data = rebase_paths(data, bases, self.workspace)
        data["output_dir"] = run_dir.parent.relative_to(self.workspace).as_posix()
        data["name"] = run_dir.name
        return sanitise_config(data, models, self.workspace)

    def start(self, run_dir: Path, models: dict[str, Any], metrics: list[str]) -> None:
        """Start ``esegeta evaluate`` on ``run_dir`` with ``metrics`` (none: the config's
        evaluation section, or every metric that applies). Refuses a running run or
        evaluation, and unknown metrics."""
        from pydantic import ValidationError

        from esegeta_core.config import RunConfig

        rel = run_dir.relative_to(self.workspace).as_posix()
        if self.jobs.is_running(run_dir):
            raise RunConflictError(f"Run {rel} is still running; evaluate it once it finished.")
        if self.state(run_dir)["state"] == "running":
            raise RunConflictError(f"Run {rel} is being evaluated already; wait for it.")
        data = dict(self._config(run_dir, models))
        evaluation = dict(data.get("evaluation") or {})
        if metrics:
            evaluation["metrics"] = metrics
        data["evaluation"] = evaluation
        data["progress"] = False
        try:
            RunConfig.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidParamsError(f"Evaluate {rel}: the config is invalid: {problems}") from exc
        config_path = self.workspace / STATE_DIR / "configs" / f"{self._key(run_dir)}.evaluate.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        note_path = self._note_path(run_dir)
        note_path.parent.mkdir(parents=True, exist_ok=True)
        note = {"config": str(config_path), "metrics": metrics, "started": time.time()}
        note_path.write_text(json.dumps(note))
        self.processes[run_dir] = spawn_cli(
            ["evaluate", str(config_path)], self.workspace, run_dir / EVALUATE_LOG
        )
        log.info("evaluating %s (pid %d)", run_dir, self.processes[run_dir].pid)

    def state(self, run_dir: Path) -> dict[str, Any]:
        """The evaluation's state: none, running, done or failed (with the exit code and
        the end of evaluate.log)."""
        board = run_dir / "evaluation" / "leaderboard.csv"
        note = self.note(run_dir)
        process = self.processes.get(run_dir)
        code = None if process is None else process.poll()
        if process is not None and code is None:
            state = "running"
        elif process is not None:
            state = "done" if code == 0 else "failed"
        elif note:  # started by an earlier server: done when the leaderboard is newer
            fresh = board.is_file() and board.stat().st_mtime >= note.get("started", 0)
            state = "done" if fresh else "failed"
        else:
            state = "done" if board.is_file() else "none"
        return {
            "state": state,
            "returncode": code,
            "metrics": note.get("metrics") or [],
            "started": note.get("started"),
            "log_tail": self.log_tail(run_dir) if state != "none" else "",
        }

    def log_tail(self, run_dir: Path, size: int = 4096) -> str:
        """The end of the run's ``evaluate.log``."""
        try:
            with open(run_dir / EVALUATE_LOG, "rb") as handle:
                handle.seek(max(handle.seek(0, os.SEEK_END) - size, 0))
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def shutdown(self) -> None:
        """Stop the evaluations still running (the server exits)."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)


def _evaluations(request: Request) -> Evaluations:
    state = request.app.state
    if getattr(state, "evaluations", None) is None:
        state.evaluations = Evaluations(state.workspace, state.jobs)
    return state.evaluations  # type: ignore[no-any-return]


def _run_dir(request: Request, run: str) -> Path:
    path = confine(request.app.state.workspace, run, what="run")
    # a run just launched has no config.json until its process writes it
    if not (path / "config.json").is_file() and not request.app.state.jobs.note(path):
        raise EvaluationNotFoundError(
            f"No run folder {run!r} in the workspace (no config.json there)."
        )
    return path


@router.post("/evaluate/{run:path}")
async def evaluate_run(request: Request, run: str) -> Response:
    """Start ``esegeta evaluate`` on a finished run (form field ``metrics``, repeated:
    the metrics to compute; none: the config's choice)."""
    run_dir = _run_dir(request, run)
    form = await request.form()
    metrics = [str(m) for m in form.getlist("metrics") if str(m)]
    await run_in_threadpool(_evaluations(request).start, run_dir, request.app.state.models, metrics)
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"/evaluate/{run}", status_code=303)
    return JSONResponse({"run": run, "status": f"/evaluate/{run}?format=json"}, status_code=202)


@router.get("/evaluate/{run:path}")
async def evaluation_page(request: Request, run: str, format: str = "html") -> Response:
    """The run's evaluation: its state (JSON with ``?format=json``), the metrics to
    choose and the Evaluate button."""
    from esegeta_core.evaluation.leaderboard import METRICS

    run_dir = _run_dir(request, run)
    state = _evaluations(request).state(run_dir)
    if format == "json":
        return JSONResponse(state)
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request,
        "evaluate.html",
        {
            "csrf": request.state.csrf,
            "run": run_dir.relative_to(request.app.state.workspace).as_posix(),
            "evaluation": state,
            "metrics": list(METRICS),
            "running": _evaluations(request).jobs.is_running(run_dir),
        },
    )

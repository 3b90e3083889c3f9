"""Quick explain (``/quick``): one declared model, one uploaded image or volume, a few
methods, and the maps in seconds, without writing a config.

The app writes a one-input run config for the user and starts it on the same path as
"New run" (:meth:`esegeta_web.jobs.JobManager.launch`: ``esegeta run`` in its own process
group, out of the request thread), in the hidden folder ``.esegeta-web/quick/ID/`` of
the workspace (so quick runs stay out of the runs list). A quick run past
:data:`QUICK_TIME_LIMIT` seconds is stopped (SIGTERM, the CLI's clean stop). Its page
shows the maps with the run viewers, and each method's error.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from esegeta_core.data_io import IMAGE_SUFFIXES
from esegeta_core.errors import EsegetaError, InvalidInputError, InvalidParamsError
from esegeta_web.jobs import STATE_DIR, JobManager
from esegeta_web.models import DeclaredModel, ModelNotAllowedError, sanitise_config
from esegeta_web.security import confine

router = APIRouter()

QUICK_DIR = f"{STATE_DIR}/quick"
"""Folder of the workspace holding quick runs (hidden: not in the runs list)."""
QUICK_TIME_LIMIT = 120.0
"""Seconds a quick run may take before it is stopped (``app.state.quick_time_limit``
overrides it)."""
QUICK_SUFFIXES = (*IMAGE_SUFFIXES, ".npy", ".pt", ".nii", ".nii.gz")
"""File types quick explain accepts (those ``esegeta run`` reads)."""
_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{8}$")


class QuickRunNotFoundError(EsegetaError, LookupError):
    """No quick run with that id in the workspace."""


def quick_methods(model: DeclaredModel | None = None) -> list[dict[str, Any]]:
    """The installed methods quick explain can run (no layer to choose), with their
    family, plugin and ranks; only those fitting the model's declared ``rank`` kwarg
    when it has one."""
    from esegeta_core.plugin.manager import get_registry

    registry = get_registry()
    rank = None if model is None else model.spec.get("kwargs", {}).get("rank")
    out = []
    for name, cls in sorted(registry.methods.items()):
        ranks = tuple(getattr(cls, "ranks", (2, 3)))
        if getattr(cls, "needs_layer", False) or (rank is not None and rank not in ranks):
            continue
        out.append(
            {
                "name": name,
                "family": str(getattr(cls, "family", "")),
                "plugin": str(registry.plugin_of.get(name, "")),
                "ranks": list(ranks),
                "description": str(getattr(cls, "description", "") or ""),
            }
        )
    return out


def _time_limit(request: Request) -> float:
    return float(getattr(request.app.state, "quick_time_limit", QUICK_TIME_LIMIT))


def _quick_dir(request: Request, quick_id: str) -> Path:
    if not _ID.match(quick_id):
        raise QuickRunNotFoundError(f"{quick_id!r} is not a quick run id; start one at /quick.")
    folder = confine(request.app.state.workspace, f"{QUICK_DIR}/{quick_id}", what="quick run")
    if not (folder / "quick.json").is_file():
        raise QuickRunNotFoundError(f"No quick run {quick_id!r} in the workspace.")
    return folder


def _render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, template, {"csrf": request.state.csrf, **context}, status_code=status
    )


@router.get("/quick")
async def quick_page(request: Request, model: str | None = None) -> Response:
    """The quick-explain form: the declared models, an upload, the methods that fit."""
    models: dict[str, DeclaredModel] = request.app.state.models
    chosen = models.get(model or "") or next(iter(models.values()), None)
    methods = await run_in_threadpool(quick_methods, chosen)
    if chosen is not None:  # greyed out with the reason (esegeta_web.fits)
        unfit = await run_in_threadpool(request.app.state.fits.unfit, chosen)
        methods = [{**m, "unfit": unfit.get(m["name"], "")} for m in methods]
    return _render(
        request,
        "quick.html",
        models=list(models.values()),
        chosen=chosen.name if chosen else "",
        methods=methods,
        time_limit=_time_limit(request),
    )


def _input_name(filename: str | None) -> str:
    """A safe file name for the upload that keeps its (double) suffix."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename or "").name).lstrip(".")
    if not name.lower().endswith(QUICK_SUFFIXES):
        raise InvalidInputError(
            f"Quick explain: upload {filename!r} is not a supported file; give one of "
            f"{', '.join(QUICK_SUFFIXES)}."
        )
    return name


@router.post("/quick")
async def quick_launch(
    request: Request,
    file: UploadFile,
    model: str = Form(...),
    methods: list[str] = Form(...),  # noqa: B008 - FastAPI form field
    rank: int | None = Form(None),
    channels: int | None = Form(None),
    batch_dim: bool = Form(False),
) -> Response:
    """Save the upload under ``.esegeta-web/quick/ID/``, write a one-input config and
    start it (time-limited); redirects to the quick run's page."""
    workspace: Path = request.app.state.workspace
    models: dict[str, DeclaredModel] = request.app.state.models
    if model not in models:
        names = ", ".join(sorted(models)) or "none: start the server with --models FILE"
        raise ModelNotAllowedError(
            f"Quick explain: model {model!r} is not declared; choose one of {names}."
        )
    known = {m["name"] for m in await run_in_threadpool(quick_methods, models[model])}
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise InvalidParamsError(
            f"Quick explain: method(s) {unknown or '(none)'} cannot run on model {model!r} "
            "here; pick installed methods that need no layer from the list."
        )
    if rank not in (None, 2, 3):
        raise InvalidParamsError(f"Quick explain: rank {rank} must be 2 or 3.")
    name = _input_name(file.filename)
    quick_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    folder = confine(workspace, f"{QUICK_DIR}/{quick_id}", what="quick run")
    target = confine(workspace, f"{QUICK_DIR}/{quick_id}/input/{name}", what="upload")
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        while chunk := await file.read(1024 * 1024):
            out.write(chunk)
    volume = name.lower().endswith((".nii", ".nii.gz"))
    inputs: dict[str, Any] = {
        "paths": [target.relative_to(workspace).as_posix()],
        "rank": rank or models[model].spec.get("kwargs", {}).get("rank") or (3 if volume else 2),
        "batch_dim": batch_dim,
    }
    if channels:
        inputs["channels"] = channels
    config = {
        "name": "run",
        "model": model,
        "inputs": inputs,
        "methods": [{"method": m} for m in methods],
        "output_dir": folder.relative_to(workspace).as_posix(),
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"report": False},
    }
    data = sanitise_config(config, models, workspace)
    jobs: JobManager = request.app.state.jobs
    run_dir = await run_in_threadpool(jobs.launch, data)
    limit = _time_limit(request)
    note = {"model": model, "methods": methods, "input": name, "started": time.time()}
    (folder / "quick.json").write_text(json.dumps({**note, "time_limit": limit}))
    _stop_after(jobs, run_dir, folder, limit)
    return RedirectResponse(f"/quick/{quick_id}", status_code=303)


def _stop_after(jobs: JobManager, run_dir: Path, folder: Path, seconds: float) -> None:
    """Stop the quick run (SIGTERM, a clean stop) if it still runs after ``seconds``,
    and note it in ``quick.json`` for the page."""

    def expire() -> None:
        if jobs.processes.get(run_dir) is None or not jobs.is_running(run_dir):
            return
        try:
            jobs.stop(run_dir)
        except EsegetaError:
            return
        note_path = folder / "quick.json"
        note = json.loads(note_path.read_text())
        note["timed_out"] = True
        note_path.write_text(json.dumps(note))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


@router.get("/quick/{quick_id}")
async def quick_result(request: Request, quick_id: str) -> Response:
    """A quick run: its state while it runs, then each method's map (or its error)."""
    from esegeta_web.runs_pages import _results_context

    folder = _quick_dir(request, quick_id)
    note = json.loads((folder / "quick.json").read_text())
    run_dir = folder / "run"
    context = await run_in_threadpool(_results_context, request, run_dir, 1, 1)
    return _render(
        request,
        "quick_result.html",
        quick_id=quick_id,
        note=note,
        run=run_dir.relative_to(request.app.state.workspace).as_posix(),
        **context,
    )

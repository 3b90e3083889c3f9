"""Pages and endpoints of runs: the runs list, launching, stop / resume, live progress
(Server-Sent Events), results, job inputs and maps, downloads and uploads."""

from __future__ import annotations

import asyncio
import csv
import importlib
import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from markupsafe import Markup

from esegeta_core.config import parse_config_text
from esegeta_core.errors import EsegetaError, InvalidParamsError
from esegeta_web.forms import router as new_run_router
from esegeta_web.jobs import JobManager, find_runs
from esegeta_web.models import sanitise_config
from esegeta_web.security import confine

router = APIRouter()

RUNS_PER_PAGE = 50
JOBS_PER_PAGE = 200
GRID_TARGETS = 20
"""Target columns of one page of an input's methods x targets grid."""
GRID_CELLS = 100
"""Cells of one grid page: GRID_CELLS // columns methods a page (5 x 20 by default), so a
page builds at most this many viewers however many methods and targets the run has."""
EVENT_INTERVAL = 0.5
"""Seconds between two progress reads of the live stream (so at most 1 s behind)."""
UPLOAD_DIR = "uploads"


class RunNotFoundError(EsegetaError, LookupError):
    """No run folder (a folder with config.json) at that path of the workspace."""


class ViewersUnavailableError(EsegetaError, RuntimeError):
    """The viewers module of esegeta-web (2D/3D map payloads) is not installed."""


def _viewers() -> Any:
    try:
        viewers = importlib.import_module("esegeta_web.viewers")
    except ImportError as exc:
        raise ViewersUnavailableError(
            f"esegeta_web.viewers cannot be imported ({exc}): the map viewers are missing "
            "from this install of esegeta-web; reinstall esegeta-web."
        ) from exc
    return viewers


def _workspace(request: Request) -> Path:
    return request.app.state.workspace  # type: ignore[no-any-return]


def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs  # type: ignore[no-any-return]


def _render(request: Request, template: str, **context: Any) -> Response:
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, template, {"csrf": request.state.csrf, **context}
    )


def _run_dir(request: Request, run: str) -> Path:
    """The run folder ``run`` names, confined to the workspace."""
    path = confine(_workspace(request), run, what="run")
    # a run just launched has no config.json until its process writes it
    if not (path / "config.json").is_file() and not _jobs(request).note(path):
        raise RunNotFoundError(f"No run folder {run!r} in the workspace (no config.json there).")
    return path


def _rel(request: Request, path: Path) -> str:
    return path.relative_to(_workspace(request)).as_posix()


def _page(value: str | None) -> int:
    return int(value) if value and value.isdigit() and int(value) > 0 else 1


def _run_row(request: Request, run_dir: Path) -> dict[str, Any]:
    progress = _jobs(request).progress(run_dir)
    return {"rel": _rel(request, run_dir), "name": run_dir.name, **progress.as_dict()}


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/runs", status_code=303)


def _runs_context(request: Request, page: int) -> dict[str, Any]:
    runs = find_runs(_workspace(request))
    pages = max(1, -(-len(runs) // RUNS_PER_PAGE))
    page = min(page, pages)
    shown = runs[(page - 1) * RUNS_PER_PAGE : page * RUNS_PER_PAGE]
    rows = [_run_row(request, run_dir) for run_dir in shown]
    return {"rows": rows, "page": page, "pages": pages, "total": len(runs)}


@router.get("/runs")
async def runs_page(request: Request, page: str | None = None) -> Response:
    """Every run folder of the workspace, newest first, a page at a time."""
    context = await run_in_threadpool(_runs_context, request, _page(page))
    return _render(request, "runs.html", **context)


@router.get("/runs/table")
async def runs_table(request: Request, page: str | None = None) -> Response:
    """The rows of one page of the runs list (the runs page refreshes them live)."""
    context = await run_in_threadpool(_runs_context, request, _page(page))
    return _render(request, "runs_rows.html", **context)


# the new-run form (/runs/new...), before /runs/{run} would take its paths
router.include_router(new_run_router)


@router.post("/runs")
async def launch(request: Request, config: str = Form(...), format: str = Form("yaml")) -> Any:
    """Start a run from a YAML or JSON config (models and paths checked first)."""
    if format not in ("yaml", "json"):
        raise InvalidParamsError(f"format {format!r}: choose 'yaml' or 'json'.")
    suffix = f".{format}"
    data = parse_config_text(config, suffix, "(submitted)")
    data = sanitise_config(data, request.app.state.models, _workspace(request))
    run_dir = await run_in_threadpool(_jobs(request).launch, data)
    target = f"/runs/{_rel(request, run_dir)}"
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(target, status_code=303)
    return JSONResponse({"run": _rel(request, run_dir), "url": target}, status_code=201)


@router.post("/files")
async def upload(request: Request, file: UploadFile) -> JSONResponse:
    """Save an uploaded input into ``uploads/`` of the workspace (size-limited by the
    server's --max-upload); returns its workspace path for configs."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(file.filename or "upload").name).lstrip(".")
    folder = confine(_workspace(request), UPLOAD_DIR, what="upload folder")
    target = confine(_workspace(request), f"{UPLOAD_DIR}/{name or 'upload'}", what="upload")
    folder.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        while chunk := await file.read(1024 * 1024):
            out.write(chunk)
    return JSONResponse({"path": _rel(request, target)}, status_code=201)


@router.get("/runs/{run:path}/status")
async def run_status(request: Request, run: str) -> JSONResponse:
    run_dir = _run_dir(request, run)
    progress = await run_in_threadpool(_jobs(request).progress, run_dir)
    return JSONResponse(progress.as_dict())


@router.get("/runs/{run:path}/events")
async def run_events(request: Request, run: str) -> StreamingResponse:
    """Server-Sent Events: the run's progress whenever it changes (read every 0.5 s),
    until the run is no longer running."""
    run_dir = _run_dir(request, run)
    jobs = _jobs(request)

    async def stream() -> Any:
        last = None
        while True:
            progress = await run_in_threadpool(jobs.progress, run_dir)
            data = progress.as_dict()
            key = {k: v for k, v in data.items() if k != "duration"}
            if key != last:
                last = key
                yield f"event: progress\ndata: {json.dumps(data)}\n\n"
            if progress.state != "running" or await request.is_disconnected():
                yield "event: end\ndata: {}\n\n"
                return
            await asyncio.sleep(EVENT_INTERVAL)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.post("/runs/{run:path}/stop")
async def stop_run(request: Request, run: str) -> RedirectResponse:
    """Stop a running run cleanly (SIGTERM); it stays resumable."""
    _jobs(request).stop(_run_dir(request, run))
    return RedirectResponse(f"/runs/{run}", status_code=303)


@router.post("/runs/{run:path}/resume")
async def resume_run(request: Request, run: str) -> RedirectResponse:
    """Start a stopped run again: finished jobs are kept, the rest run. A run started
    with ``esegeta run`` elsewhere resumes from its own config.json (allowlisted model,
    paths in the workspace)."""
    jobs, run_dir = _jobs(request), _run_dir(request, run)
    await run_in_threadpool(jobs.resume, run_dir, request.app.state.models)
    return RedirectResponse(f"/runs/{run}", status_code=303)


def _record(request: Request, run: str, job: str) -> tuple[Path, dict[str, Any]]:
    run_dir = _run_dir(request, run)
    folder = confine(run_dir.parent, f"{run_dir.name}/jobs/{job}", what="job")
    if not folder.is_relative_to(run_dir / "jobs") or not (folder / "record.json").is_file():
        raise RunNotFoundError(f"Run {run!r} has no finished job {job!r}.")
    return run_dir, json.loads((folder / "record.json").read_text())


@router.get("/runs/{run:path}/jobs/{job}/input")
async def job_input(request: Request, run: str, job: str) -> Response:
    """The job's input as the viewers read it."""
    run_dir, record = _record(request, run, job)
    content, media = await run_in_threadpool(
        lambda: _viewers().input_payload(run_dir, record, root=_workspace(request))
    )
    return Response(content, media_type=media)


@router.get("/runs/{run:path}/jobs/{job}/map")
async def job_map(request: Request, run: str, job: str) -> Response:
    """The job's map as the viewers read it."""
    run_dir, record = _record(request, run, job)
    content, media = await run_in_threadpool(_viewers().map_payload, run_dir, record)
    return Response(content, media_type=media)


@router.get("/runs/{run:path}/jobs/{job}/download")
async def job_download(request: Request, run: str, job: str) -> FileResponse:
    """The job's map file (NIfTI or .npz), confined to its run folder."""
    run_dir, record = _record(request, run, job)
    name = (record.get("files") or {}).get("attribution")
    if not name:
        raise RunNotFoundError(f"Job {job!r} of run {run!r} has no map (it did not finish ok).")
    path = confine(run_dir, name, what="map file")
    return FileResponse(path, filename=f"{job}-{path.name}")


def _leaderboard(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "evaluation" / "leaderboard.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return {"header": rows[0], "rows": rows[1:]} if rows else None


def _grid_window(methods: int, targets: int, page: int) -> dict[str, int]:
    """The methods and targets of grid ``page`` (1-based, clamped): blocks of
    :data:`GRID_TARGETS` columns and ``GRID_CELLS // columns`` rows, target blocks of a
    row block first."""
    cols = max(1, min(targets, GRID_TARGETS))
    rows = max(1, GRID_CELLS // cols)
    col_blocks = max(1, -(-targets // cols))
    pages = max(1, -(-methods // rows)) * col_blocks
    page = min(max(page, 1), pages)
    row, col = divmod(page - 1, col_blocks)
    return {
        "page": page,
        "pages": pages,
        "m0": row * rows,
        "m1": min((row + 1) * rows, methods),
        "t0": col * cols,
        "t1": min((col + 1) * cols, targets),
    }


def _results_context(
    request: Request, run_dir: Path, input_page: int, jobs_page: int, grid_page: int = 1
) -> Any:
    """The results page's data: the grid of input ``input_page`` (its page ``grid_page``
    of :func:`_grid_window`, viewers built for those cells only), one page of job
    records, the progress and the leaderboard."""
    records = _jobs(request).index.records(run_dir)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((str(r.get("input", "")), int(r.get("item", 0))), []).append(r)
    keys = list(groups)
    input_page = min(input_page, max(len(keys), 1))
    grid = None
    viewer_error = ""
    if keys:
        key = keys[input_page - 1]
        chosen = groups[key]
        all_methods = list(dict.fromkeys(str(r.get("title") or r.get("method")) for r in chosen))
        all_targets = list(dict.fromkeys(str(r.get("target_requested")) for r in chosen))
        window = _grid_window(len(all_methods), len(all_targets), grid_page)
        methods = all_methods[window["m0"] : window["m1"]]
        targets = all_targets[window["t0"] : window["t1"]]
        shown_methods, shown_targets = set(methods), set(targets)
        chosen = [
            r
            for r in chosen
            if str(r.get("title") or r.get("method")) in shown_methods
            and str(r.get("target_requested")) in shown_targets
        ]
        cells: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            viewers = _viewers()
        except ViewersUnavailableError as exc:
            viewers, viewer_error = None, str(exc)
        for r in chosen:
            cell: dict[str, Any] = {"record": r, "kind": None, "html": "", "problem": ""}
            cells[(str(r.get("title") or r.get("method")), str(r.get("target_requested")))] = cell
            if viewers is None or r.get("status") != "ok":
                continue
            try:
                spec = viewers.viewer_spec(run_dir, r)
            except (EsegetaError, OSError, ValueError) as exc:
                cell["problem"] = f"map unreadable: {exc}"
                continue
            url = f"/runs/{_rel(request, run_dir)}/jobs/{r['job_id']}"
            cell["kind"] = spec.get("kind")
            cell["html"] = Markup(viewers.viewer_div(spec, f"{url}/input", f"{url}/map"))
        kinds = {c["kind"] for c in cells.values()}
        grid = {
            "input": key,
            "has_3d": "3d" in kinds,
            "methods": methods,
            "targets": targets,
            "cells": cells,
            **window,
            "methods_total": len(all_methods),
            "targets_total": len(all_targets),
        }
    job_pages = max(1, -(-len(records) // JOBS_PER_PAGE))
    jobs_page = min(jobs_page, job_pages)
    return {
        "progress": _jobs(request).progress(run_dir).as_dict(),
        # app-launched runs resume from their config copy, others from config.json
        "resumable": bool(_jobs(request).note(run_dir).get("config"))
        or (run_dir / "config.json").is_file(),
        "grid": grid,
        "viewer_error": viewer_error,
        "input_page": input_page,
        "input_pages": max(len(keys), 1),
        "records": records[(jobs_page - 1) * JOBS_PER_PAGE : jobs_page * JOBS_PER_PAGE],
        "jobs_page": jobs_page,
        "job_pages": job_pages,
        "leaderboard": _leaderboard(run_dir),
        "log_tail": _jobs(request).log_tail(run_dir),
    }


@router.get("/runs/{run:path}")
async def run_page(
    request: Request,
    run: str,
    input: str | None = None,
    jobs: str | None = None,
    grid: str | None = None,
) -> Response:
    """A run's progress, its methods x targets grid per input (a page of it at a time:
    ``grid``), every job's record and its leaderboard."""
    run_dir = _run_dir(request, run)
    context = await run_in_threadpool(
        _results_context, request, run_dir, _page(input), _page(jobs), _page(grid)
    )
    return _render(request, "run.html", run=_rel(request, run_dir), name=run_dir.name, **context)

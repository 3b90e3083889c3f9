"""Reading a run folder written by ``esegeta run`` into the report's data model.

:func:`report_from_run` reads the job records (``summary.json``'s order, each refreshed
from ``jobs/<id>/record.json``), their figures, the per-input grids of ``figures/`` and
``config.json``. A run still going or killed has no summary: every job record is read
instead. Nothing outside the run folder is read for a figure or a map: a record naming
such a file is left out with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from esegeta_core.errors import EsegetaError, InvalidInputError, RunFolderError
from esegeta_core.report.model import (
    PNG_SIGNATURE,
    InputSection,
    LeaderboardTable,
    MapEntry,
    ReportData,
    Viewer,
)

log = logging.getLogger(__name__)

__all__ = ["report_from_run"]


def _slug(text: str) -> str:
    """The file-name slug of :mod:`esegeta_core.runs` (kept in step with ``runs._slug``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _target_text(record: Mapping[str, Any]) -> str:
    """``c2`` -> ``class 2``, ``pred`` -> ``predicted class``, ``r1-mask`` ->
    ``class 1 in mask``; what the run asked for, so failed jobs group with the others."""
    requested = str(record.get("target_requested") or "")
    if requested == "pred":
        return "predicted class"
    if requested.startswith("c") and requested[1:].lstrip("-").isdigit():
        return f"class {requested[1:]}"
    if requested.startswith("r") and "-" in requested:
        label, _, mask = requested[1:].partition("-")
        return f"class {label} in {mask}"
    target = record.get("target")
    return f"class {target}" if target is not None else requested


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        return None


def _inside(run_dir: Path, name: str, job_id: str) -> Path | None:
    """``name`` (a record's file entry) resolved against the run folder, or None with a
    warning when it leads outside (an absolute path, ``..``, a symbolic link): a record
    must not make the report embed files from elsewhere."""
    from esegeta_core.files import inside

    try:
        return inside(run_dir, name, f"report: job {job_id or '?'} names the file")
    except InvalidInputError as exc:
        log.warning("%s; left out (nothing outside the run folder is read)", exc)
        return None


def _read_png(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(PNG_SIGNATURE):
        log.warning("report: %s is not a PNG; left out", path)
        return None
    return data


def _run_records(run_dir: Path) -> list[dict[str, Any]]:
    """The jobs of a run: ``summary.json``'s order with each record refreshed from its
    ``jobs/<id>/record.json``; every job record when there is no summary (a run still
    going, or killed)."""
    summary = _read_json(run_dir / "summary.json")
    jobs_dir = run_dir / "jobs"
    if isinstance(summary, list):
        records = []
        for item in summary:
            if not isinstance(item, dict) or "job_id" not in item:
                continue
            fresh = _read_json(jobs_dir / _slug(str(item["job_id"])) / "record.json")
            records.append(fresh if isinstance(fresh, dict) else item)
        return records
    records = []
    for path in sorted(jobs_dir.glob("*/record.json")):
        record = _read_json(path)
        if isinstance(record, dict) and "job_id" in record:
            records.append(record)
    return records


def _notes(notes: object) -> dict[str, str]:
    """A job record's notes as report detail lines: layers chosen automatically, layer
    layouts other than channels-first, warnings."""
    if not isinstance(notes, dict):
        return {}
    out = {}
    chosen = notes.get("layer_auto")
    if isinstance(chosen, dict):
        for field_name, layer in chosen.items():
            out[f"{field_name} (auto)"] = str(layer)
    layouts = notes.get("layouts")
    if isinstance(layouts, dict):
        for layer, layout in layouts.items():
            if isinstance(layout, dict):
                extra = layout.get("extra_tokens") or 0
                grid = "x".join(str(g) for g in layout.get("grid", []))
                out[f"layout of {layer}"] = f"{layout.get('kind')} {grid}" + (
                    f", {extra} extra token(s)" if extra else ""
                )
    warnings = notes.get("warnings")
    if isinstance(warnings, list) and warnings:
        out["warning"] = " ".join(str(w) for w in warnings)
    return out


def _run_viewer(
    run_dir: Path, record: Mapping[str, Any], inputs: dict[tuple[str, int], bytes]
) -> Viewer | None:
    """The viewer data of a successful job with a stored map, or None (with a warning when
    its files cannot be read). ``inputs`` caches each input item's payload. The job's
    input is read wherever the run read it (the record is the run's own); its map must
    lie inside the run folder."""
    files = record.get("files")
    if record.get("status") != "ok" or not isinstance(files, dict) or not files.get("attribution"):
        return None
    from esegeta_core.report import payloads

    try:
        spec = payloads.viewer_spec(run_dir, record)
        key = (str(record.get("input", "")), int(record.get("item", 0) or 0))
        if key not in inputs:
            inputs[key] = payloads.input_payload(run_dir, record, root=Path("/"))[0]
        data, _ = payloads.map_payload(run_dir, record)
    except (EsegetaError, OSError, ValueError) as exc:
        log.warning("report: no interactive viewer for job %s: %s", record.get("job_id"), exc)
        return None
    sampling = spec["sampling"]["text"] if spec["kind"] == "3d" else ""
    return Viewer(spec["kind"], inputs[key], data, sampling)


def _map_entry(
    run_dir: Path,
    record: Mapping[str, Any],
    viewer_inputs: dict[tuple[str, int], bytes] | None,
) -> MapEntry:
    """One job record as a map card: its figure (read only inside the run folder), time,
    status, error, parameters, detail lines, and its viewer unless ``viewer_inputs`` is
    None (the cache of input payloads, see :func:`_run_viewer`)."""
    job_id = str(record.get("job_id", ""))
    files = record.get("files") or {}
    png = None
    if isinstance(files, dict) and files.get("figure"):
        figure = _inside(run_dir, str(files["figure"]), job_id)
        png = _read_png(figure) if figure is not None else None
    seconds = record.get("seconds")
    details = {"device": str(record["device"])} if record.get("device") else {}
    target = _target_text(record)
    if record.get("target_requested") == "pred" and record.get("target") is not None:
        details["predicted"] = f"class {record['target']}"
    details.update(_notes(record.get("notes")))
    params = record.get("params")
    viewer = _run_viewer(run_dir, record, viewer_inputs) if viewer_inputs is not None else None
    return MapEntry(
        method=str(record.get("method") or record.get("title") or job_id or "?"),
        title=str(record.get("title") or ""),
        target=target,
        png=png,
        seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
        status=str(record.get("status") or "unknown"),
        error=str(record.get("error") or ""),
        anchor=f"job-{job_id}" if job_id else "",
        params=params if isinstance(params, dict) else {},
        details=details,
        viewer=viewer,
    )


_OVERVIEW_CAPTION = (
    "The input and every method, one row per target (3D: the axial slice through each "
    "map's maximum). Below, each job's figure (3D: slices through the maximum and "
    "maximum-intensity projections)."
)


def _input_sections(
    run_dir: Path, maps: Mapping[tuple[str, int], list[MapEntry]]
) -> list[InputSection]:
    """One section per input item (``maps`` keyed by input path and item), with the
    item's grid from ``figures/`` as its overview."""
    inputs = []
    for (path, item), entries in maps.items():
        name = Path(path).name
        inputs.append(
            InputSection(
                name=f"{name} #{item}",
                maps=entries,
                overview_png=_read_png(run_dir / "figures" / f"{_slug(name)}-{item}.png"),
                overview_caption=_OVERVIEW_CAPTION,
                anchor=f"input-{_slug(name)}-{item}",
            )
        )
    return inputs


def report_from_run(
    run_dir: str | os.PathLike[str],
    *,
    leaderboard: LeaderboardTable | None = None,
    title: str | None = None,
    viewers: bool = True,
) -> ReportData:
    """Build the report of a run folder written by ``esegeta run``.

    One section per input item, maps grouped by requested target, each the job's
    ``figure.png`` (failed jobs with their status and error message); the item's grid
    from ``figures/`` as its overview; per-method timing from the records; the
    ``config.json`` as parameters. ``leaderboard`` (metrics computed elsewhere) is shown
    as given; ``title`` defaults to the run's name. ``viewers`` adds the interactive
    viewer of every job with a stored map (a job whose data cannot be read keeps its
    static figure only, with a warning in the log).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(
            f"{run_dir} is not a folder. Pass the run folder that `esegeta run` printed "
            "(output_dir/name)."
        )
    config = _read_json(run_dir / "config.json")
    records = _run_records(run_dir)
    if not records and not isinstance(config, dict):
        raise RunFolderError(
            f"{run_dir} holds no config.json, summary.json or jobs/*/record.json: not a run "
            "folder. Pass the folder that `esegeta run` printed (output_dir/name)."
        )
    config = config if isinstance(config, dict) else {}
    maps: dict[tuple[str, int], list[MapEntry]] = {}
    viewer_inputs: dict[tuple[str, int], bytes] | None = {} if viewers else None
    for record in records:
        item = record.get("item", 0)
        key = (str(record.get("input", "")), int(item) if isinstance(item, int) else 0)
        maps.setdefault(key, []).append(_map_entry(run_dir, record, viewer_inputs))
    n_failed = sum(1 for r in records if r.get("status") != "ok")
    notes = [f"Run folder: {run_dir.resolve()}"]
    if n_failed:
        notes.append(
            f"{n_failed} of {len(records)} jobs did not finish; their cards show the status "
            "and the error. Running the same config again retries only those."
        )
    return ReportData(
        title=title or f"esegeta run: {config.get('name') or run_dir.name}",
        inputs=_input_sections(run_dir, maps),
        leaderboard=leaderboard,
        params=config,
        notes=notes,
        generated=datetime.now().astimezone().isoformat(timespec="seconds"),
    )

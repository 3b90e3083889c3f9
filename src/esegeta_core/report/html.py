"""A self-contained HTML report: maps per input, a sortable metric leaderboard, timing.

One file, readable offline and safe to mail or attach to a ticket: every image is a
base64 PNG ``data:`` URI, the CSS and the small script are inline, and a
Content-Security-Policy forbids loading anything from elsewhere. The page shows:

- per input, each target's maps side by side (the input first when there is one); for a
  run folder these are the job figures of :mod:`esegeta_core.report.figures` (2D: input
  and map; 3D: orthogonal slices through the maximum and maximum-intensity projections)
  plus the methods x targets grid of the input; failed jobs show their status and error;
- a metric leaderboard (methods x metrics, one row per model and method) that sorts by
  any column when its header is clicked or activated from the keyboard: numbers sort
  numerically, the first activation puts the best values first (respecting
  ``higher_is_better``), the next one reverses, and missing values always go last; the
  best value of each metric column is highlighted (per model);
- per-method timing, sortable the same way;
- the run's parameters as a collapsible pretty-printed block.

Maps can carry an interactive viewer (:class:`Viewer`; :func:`report_from_run` adds one
to every job with a stored map): 2D maps drawn over the input on a canvas with opacity,
colour map and sign controls, 3D volumes in NiiVue (threshold, opacity, slice / 3D
render / MIP views, crosshair linked across maps) behind a button, with the static
figure kept as the fallback. Their data is stored once per payload as base64 (2D: PNG
and float16 maps; 3D: uint8 NIfTI, down-sampled beyond
:data:`~esegeta_core.report.payloads.MAX_VOXELS_PER_AXIS` voxels per axis, the sampling
stated on the card); the viewer script, and NiiVue only when a 3D viewer is present, are
inlined and allowed by their hashes in the Content-Security-Policy.

Every leaderboard row links to its method's first map (and every map links back to its
row); the ids are derived from the data (the job id for run folders), so links stay
stable between renders. All text is escaped: method names, errors and parameters are
user data.

The data model is a handful of frozen dataclasses (:class:`ReportData`,
:class:`InputSection`, :class:`MapEntry`, :class:`LeaderboardTable`, :class:`Column`,
:class:`Timing`); :func:`render_html` turns one into a string, :func:`write_html_report`
writes it atomically and :func:`report_from_run` builds one from a folder written by
``esegeta run``.

This module is the report's entry point; the work is done in modules of one job each:
:mod:`~esegeta_core.report.model` (the data model), :mod:`~esegeta_core.report.reader`
(run folder -> model), :mod:`~esegeta_core.report.render` (model -> page, with
:mod:`~esegeta_core.report.tables` and :mod:`~esegeta_core.report.cards`) and the page's
style sheet and script in ``assets/`` (``report.css``, ``report.js``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from esegeta_core.errors import InvalidReportError, RunFolderError
from esegeta_core.report.anchors import anchor_id
from esegeta_core.report.model import (
    Column,
    InputSection,
    LeaderboardTable,
    MapEntry,
    ReportData,
    Timing,
    Viewer,
    leaderboard_table,
)
from esegeta_core.report.reader import report_from_run
from esegeta_core.report.render import render_html

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"

__all__ = [
    "REPORT_NAME",
    "Column",
    "InputSection",
    "InvalidReportError",
    "LeaderboardTable",
    "MapEntry",
    "ReportData",
    "RunFolderError",
    "Timing",
    "Viewer",
    "anchor_id",
    "leaderboard_table",
    "render_html",
    "report_from_run",
    "write_html_report",
]


def write_html_report(data: ReportData, path: str | os.PathLike[str]) -> Path:
    """Render ``data`` and write it to ``path`` atomically (a temporary file beside it,
    then a rename: a reader never sees half a report); returns the path."""
    from esegeta_core.files import atomic_path

    text = render_html(data)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is an ordinary output file
    log.info("wrote the report %s", path)
    return path

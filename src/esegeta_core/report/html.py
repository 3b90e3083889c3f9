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
:class:`InputSection`, :class:`MapEntry`, :class:`Leaderboard`, :class:`Column`,
:class:`Timing`); :func:`render_html` turns one into a string, :func:`write_html_report`
writes it atomically and :func:`report_from_run` builds one from a folder written by
``esegeta run``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esegeta_core.errors import (
    EsegetaError,
    InvalidInputError,
    InvalidReportError,
    RunFolderError,
)

if TYPE_CHECKING:
    from esegeta_core.evaluation.leaderboard import Leaderboard as MetricsBoard

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_NAME = "report.html"

__all__ = [
    "REPORT_NAME",
    "Column",
    "InputSection",
    "InvalidReportError",
    "Leaderboard",
    "leaderboard_table",
    "MapEntry",
    "ReportData",
    "RunFolderError",
    "Timing",
    "Viewer",
    "anchor_id",
    "render_html",
    "report_from_run",
    "write_html_report",
]


# -- data model ----------------------------------------------------------------------


def _tuple(value: Any, what: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise InvalidReportError(f"{what} must be a list or tuple, got {type(value).__name__}.")
    return tuple(value)


def _check_png(value: Any, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, (bytes, bytearray)):
        raise InvalidReportError(
            f"{what} must be the bytes of a PNG file or None, got {type(value).__name__}. "
            "Pass Path('figure.png').read_bytes()."
        )
    if bytes(value[:8]) != PNG_SIGNATURE:
        raise InvalidReportError(
            f"{what} is not a PNG file (it starts with {bytes(value[:8])!r}). Save figures "
            "with format='png' and pass Path('figure.png').read_bytes()."
        )


def _check_text(value: Any, what: str) -> None:
    if not isinstance(value, str):
        raise InvalidReportError(f"{what} must be a string, got {type(value).__name__}.")


@dataclass(frozen=True)
class Viewer:
    """The data of a map's interactive viewer (see :mod:`esegeta_core.report.payloads`).

    ``kind`` ``"2d"`` (``input`` a PNG, ``map`` an EGM1 payload) or ``"3d"`` (both gzipped
    NIfTI); ``sampling`` the sentence the card shows under a 3D viewer. Equal inputs are
    stored once in the page.
    """

    kind: str
    input: bytes
    map: bytes
    sampling: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("2d", "3d"):
            raise InvalidReportError(f"Viewer.kind must be '2d' or '3d', got {self.kind!r}.")
        for name in ("input", "map"):
            if not isinstance(getattr(self, name), (bytes, bytearray)):
                raise InvalidReportError(
                    f"Viewer.{name} must be bytes (a payload of esegeta_core.report.payloads)."
                )
        _check_text(self.sampling, "Viewer.sampling")


@dataclass(frozen=True)
class MapEntry:
    """One map: one method on one input for one target, or the failure in its place.

    ``method`` is the method's name (``captum.saliency``); ``title`` what the page shows
    (default ``method``; a run's ``MethodSpec.title``); ``target`` a readable label
    (``"class 1"``); ``png`` the figure (``None`` for a failed job); ``seconds`` the
    method's time; ``status`` ``"ok"`` or the failure (``error``, ``crashed``,
    ``timeout``) with ``error`` its message; ``anchor`` the element id (default derived
    from input, model, method and target); ``model`` the model's name when a report
    compares several; ``params`` the method's parameters; ``details`` extra key/value
    lines (device, job id); ``viewer`` the data of its interactive viewer, if any.
    """

    method: str
    target: str = ""
    png: bytes | None = None
    seconds: float | None = None
    status: str = "ok"
    error: str = ""
    anchor: str = ""
    title: str = ""
    model: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, str] = field(default_factory=dict)
    viewer: Viewer | None = None

    def __post_init__(self) -> None:
        if self.viewer is not None and not isinstance(self.viewer, Viewer):
            raise InvalidReportError(
                f"MapEntry.viewer must be a Viewer or None, got {type(self.viewer).__name__}."
            )
        for name in ("method", "target", "status", "error", "anchor", "title", "model"):
            _check_text(getattr(self, name), f"MapEntry.{name}")
        if not self.method:
            raise InvalidReportError("MapEntry.method must not be empty; give the method name.")
        _check_png(self.png, f"MapEntry.png of {self.method!r}")
        if self.seconds is not None and (
            isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float))
        ):
            raise InvalidReportError(
                f"MapEntry.seconds of {self.method!r} must be a number or None, "
                f"got {type(self.seconds).__name__}."
            )
        if not isinstance(self.params, Mapping) or not isinstance(self.details, Mapping):
            raise InvalidReportError("MapEntry.params and MapEntry.details must be dicts.")

    @property
    def label(self) -> str:
        """The name the page shows: ``title``, else ``method``."""
        return self.title or self.method

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class InputSection:
    """One input (one item of an input file): its picture and its maps.

    ``input_png`` is shown first in every target's row of maps when given;
    ``overview_png`` is an optional figure of the whole input (for a run folder, the
    methods x targets grid of ``figures/``) shown above them with ``overview_caption``.
    Maps are grouped by ``target`` in first-seen order.
    """

    name: str
    input_png: bytes | None = None
    maps: Sequence[MapEntry] = ()
    overview_png: bytes | None = None
    overview_caption: str = ""
    anchor: str = ""

    def __post_init__(self) -> None:
        _check_text(self.name, "InputSection.name")
        _check_text(self.overview_caption, "InputSection.overview_caption")
        _check_text(self.anchor, "InputSection.anchor")
        _check_png(self.input_png, f"InputSection.input_png of {self.name!r}")
        _check_png(self.overview_png, f"InputSection.overview_png of {self.name!r}")
        maps = _tuple(self.maps, f"InputSection.maps of {self.name!r}")
        for entry in maps:
            if not isinstance(entry, MapEntry):
                raise InvalidReportError(
                    f"InputSection.maps of {self.name!r} must hold MapEntry objects, "
                    f"got {type(entry).__name__}."
                )
        object.__setattr__(self, "maps", maps)


@dataclass(frozen=True)
class Column:
    """One metric column of a leaderboard.

    ``name`` is the key of the value in each row and the header's text;
    ``higher_is_better`` says which end is best (``None``: neither, no highlight);
    ``description`` is the header's tooltip; ``fmt`` the format spec of floats.
    """

    name: str
    higher_is_better: bool | None = True
    description: str = ""
    fmt: str = ".4g"

    def __post_init__(self) -> None:
        _check_text(self.name, "Column.name")
        _check_text(self.description, "Column.description")
        if not self.name:
            raise InvalidReportError("Column.name must not be empty.")
        if self.higher_is_better not in (True, False, None):
            raise InvalidReportError(
                f"Column {self.name!r}: higher_is_better must be True, False or None."
            )
        try:
            format(1.5, self.fmt)
        except (ValueError, TypeError) as exc:
            raise InvalidReportError(
                f"Column {self.name!r}: fmt {self.fmt!r} is not a float format spec "
                "(use for example '.4g' or '.2%')."
            ) from exc


@dataclass(frozen=True)
class Leaderboard:
    """Methods x metrics, possibly for several models.

    ``rows`` are dicts: the ``labels`` keys (default ``model`` and ``method``, those
    present) name the row, each column's ``name`` holds its value (a number; a missing
    key, ``None`` or NaN is a missing value, sorted last). An optional ``anchor`` key
    is the id of the element the row links to; without it the row links to the first
    map whose ``method`` or ``title`` equals the row's ``method`` (and whose ``model``
    equals the row's ``model`` when both have one).
    """

    columns: Sequence[Column]
    rows: Sequence[Mapping[str, Any]]
    labels: Sequence[str] = ("model", "method")
    title: str = "Metric leaderboard"
    description: str = ""

    def __post_init__(self) -> None:
        columns = _tuple(self.columns, "Leaderboard.columns")
        rows = _tuple(self.rows, "Leaderboard.rows")
        labels = _tuple(self.labels, "Leaderboard.labels")
        for col in columns:
            if not isinstance(col, Column):
                raise InvalidReportError(
                    f"Leaderboard.columns must hold Column objects, got {type(col).__name__}; "
                    "wrap names as Column('name', higher_is_better=...)."
                )
        names = [c.name for c in columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidReportError(f"Leaderboard column {dupes[0]!r} appears twice.")
        clash = sorted(set(names) & set(labels))
        if clash:
            raise InvalidReportError(
                f"Leaderboard column {clash[0]!r} is also a label key; rename the metric."
            )
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise InvalidReportError(
                    f"Leaderboard row {i} must be a dict, got {type(row).__name__}."
                )
        _check_text(self.title, "Leaderboard.title")
        _check_text(self.description, "Leaderboard.description")
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "rows", tuple(dict(r) for r in rows))
        object.__setattr__(self, "labels", labels)


def leaderboard_table(board: MetricsBoard, title: str = "Metric leaderboard") -> Leaderboard:
    """The report's table of an evaluation's leaderboard: its metric columns (with
    their direction and description), the sanity verdict when randomisation was
    measured, the item count and status of every (model, method) row."""
    columns = [Column(c.name, c.higher_is_better, c.description) for c in board.columns]
    extra = ["sanity"] if "randomisation" in board.metrics else []
    columns += [Column(name, None, "") for name in (*extra, "items", "status")]
    rows = [{k: v for k, v in r.items() if k != "error"} for r in board.rows()]
    return Leaderboard(columns=columns, rows=rows, labels=("model", "method"), title=title)


@dataclass(frozen=True)
class Timing:
    """The times of one method's jobs: ``seconds`` of each successful one, ``failed``
    the number that did not finish (``model`` when a report compares several)."""

    method: str
    seconds: Sequence[float] = ()
    failed: int = 0
    model: str = ""

    def __post_init__(self) -> None:
        _check_text(self.method, "Timing.method")
        _check_text(self.model, "Timing.model")
        object.__setattr__(self, "seconds", _tuple(self.seconds, "Timing.seconds"))


@dataclass(frozen=True)
class ReportData:
    """Everything one report shows.

    ``timings`` default (``None``) derives per-method timing from the maps; ``params``
    is shown pretty-printed as JSON (the run's ``config.json``); ``notes`` are
    paragraphs under the title; ``generated`` a timestamp line (empty: none, which keeps
    the output of equal data byte-identical).
    """

    title: str
    inputs: Sequence[InputSection] = ()
    leaderboard: Leaderboard | None = None
    timings: Sequence[Timing] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    notes: Sequence[str] = ()
    generated: str = ""

    def __post_init__(self) -> None:
        _check_text(self.title, "ReportData.title")
        _check_text(self.generated, "ReportData.generated")
        inputs = _tuple(self.inputs, "ReportData.inputs")
        for section in inputs:
            if not isinstance(section, InputSection):
                raise InvalidReportError(
                    f"ReportData.inputs must hold InputSection objects, got "
                    f"{type(section).__name__}."
                )
        if self.leaderboard is not None and not isinstance(self.leaderboard, Leaderboard):
            raise InvalidReportError(
                f"ReportData.leaderboard must be a Leaderboard or None, got "
                f"{type(self.leaderboard).__name__}."
            )
        if self.timings is not None:
            timings = _tuple(self.timings, "ReportData.timings")
            if not all(isinstance(t, Timing) for t in timings):
                raise InvalidReportError("ReportData.timings must hold Timing objects.")
            object.__setattr__(self, "timings", timings)
        if not isinstance(self.params, Mapping):
            raise InvalidReportError(
                f"ReportData.params must be a dict, got {type(self.params).__name__}."
            )
        notes = _tuple(self.notes, "ReportData.notes")
        for note in notes:
            _check_text(note, "each of ReportData.notes")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "notes", notes)

    @property
    def maps(self) -> list[MapEntry]:
        """Every map of every input, in page order."""
        return [entry for section in self.inputs for entry in section.maps]


def timings_from_maps(inputs: Sequence[InputSection]) -> list[Timing]:
    """Per-method timing over the maps: seconds of the successful ones, count of failures."""
    seconds: dict[tuple[str, str], list[float]] = {}
    failed: dict[tuple[str, str], int] = {}
    for section in inputs:
        for entry in section.maps:
            key = (entry.model, entry.label)
            seconds.setdefault(key, [])
            failed.setdefault(key, 0)
            if not entry.ok:
                failed[key] += 1
            elif entry.seconds is not None and math.isfinite(entry.seconds):
                seconds[key].append(float(entry.seconds))
    return [
        Timing(method, seconds[(model, method)], failed[(model, method)], model)
        for model, method in seconds
    ]


# -- ids -----------------------------------------------------------------------------


def anchor_id(text: str) -> str:
    """A valid, readable HTML id from any text: lower case letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "x"


class _Ids:
    """Hands out unique ids: the first use of a base keeps it, later ones get -2, -3."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, base: str) -> str:
        base = anchor_id(base)
        candidate, n = base, 1
        while candidate in self.used:
            n += 1
            candidate = f"{base}-{n}"
        self.used.add(candidate)
        return candidate


# -- rendering helpers ---------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def _number(value: Any) -> float | None:
    """A float (infinities kept) for sorting and highlighting, or None when the value is
    missing: None, NaN, text, a bool. NumPy and torch scalars count as numbers."""
    if not isinstance(value, (int, float)):
        item = getattr(value, "item", None)
        if not callable(item) or getattr(value, "ndim", 0) != 0:
            return None
        try:
            value = item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _sort_key(number: float) -> str:
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _format(value: Any, fmt: str) -> str:
    number = _number(value)
    if number is None:  # missing: empty for None and NaN, text as it is
        try:
            return "" if value is None or math.isnan(float(value)) else str(value)
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    if fmt == "seconds":  # internal: no exponent for long runs
        return f"{number:.3g}" if abs(number) < 1000 else f"{number:,.0f}"
    return format(number, fmt)


_STATUS_TEXT = {"ok": "ok", "error": "error", "crashed": "crashed", "timeout": "timed out"}


def _status_badge(status: str) -> str:
    kind = status if status in _STATUS_TEXT else "error"
    return f'<span class="badge badge-{kind}">{_e(_STATUS_TEXT.get(status, status))}</span>'


def _json_block(data: Any) -> str:
    return _e(json.dumps(data, indent=2, sort_keys=False, default=str, ensure_ascii=False))


@dataclass(frozen=True)
class _TableColumn:
    name: str
    numeric: bool
    higher_is_better: bool | None = None
    description: str = ""
    fmt: str = ".4g"


def _sortable_table(
    table_id: str,
    caption: str,
    columns: Sequence[_TableColumn],
    rows: Sequence[Mapping[str, Any]],
    row_ids: Sequence[str],
    links: Sequence[str | None],
    link_column: str,
) -> str:
    """A table whose headers sort it (see the script); the best cell of each numeric
    column with a direction is marked ``best``, per model where rows name one (models'
    scores may come in different units). ``links[i]`` is the id row ``i``'s
    ``link_column`` cell points at."""
    best: dict[tuple[str, Any], float] = {}
    for col in columns:
        if col.numeric and col.higher_is_better is not None:
            groups: dict[Any, list[float]] = {}
            for r in rows:
                if (n := _number(r.get(col.name))) is not None:
                    groups.setdefault(r.get("model"), []).append(n)
            for group, values in groups.items():
                if min(values) != max(values):  # all equal: nothing to point out
                    pick = max if col.higher_is_better else min
                    best[col.name, group] = pick(values)
    head = []
    for col in columns:
        if col.numeric and col.higher_is_better is not None:
            first = "descending" if col.higher_is_better else "ascending"
            hint = "higher is better" if col.higher_is_better else "lower is better"
            arrow = "↑" if col.higher_is_better else "↓"
            tip = f"{col.description} ({hint})" if col.description else hint
            extra = f' <span class="dir" aria-hidden="true">{arrow}</span>'
        else:
            first, tip, extra = "ascending", col.description, ""
        kind = "number" if col.numeric else "text"
        title = f' title="{_e(tip)}"' if tip else ""
        head.append(
            f'<th scope="col" aria-sort="none" data-type="{kind}" data-first="{first}"'
            f"{' class=num' if col.numeric else ''}>"
            f'<button type="button" class="sort"{title}>{_e(col.name)}{extra}'
            f'<span class="arrow" aria-hidden="true"></span></button></th>'
        )
    body = []
    for i, (row, row_id, link) in enumerate(zip(rows, row_ids, links)):
        cells = []
        for col in columns:
            value = row.get(col.name)
            if col.numeric:
                number = _number(value)
                key = "" if number is None else _sort_key(number)
                text = _format(value, col.fmt) if value is not None else ""
                classes = ["num"]
                mark = ""
                if number is not None and number == best.get((col.name, row.get("model"))):
                    classes.append("best")
                    mark = '<span class="sr-only"> (best)</span>'
                if number is None:
                    classes.append("missing")
                    text = text or "—"
                full = f' title="{_e(repr(value))}"' if number is not None else ""
                attrs = f'class="{" ".join(classes)}" data-v="{_e(key)}"{full}'
                cells.append(f"<td {attrs}>{_e(text)}{mark}</td>")
            else:
                text = "" if value is None else str(value)
                inner = _e(text) or '<span class="missing">—</span>'
                if col.name == link_column and link is not None:
                    inner = f'<a href="#{_e(link)}" title="show the maps">{inner}</a>'
                cells.append(f'<td data-v="{_e(text.lower())}">{inner}</td>')
        body.append(f'<tr id="{_e(row_id)}" data-i="{i}">{"".join(cells)}</tr>')
    return (
        f'<div class="table-wrap"><table class="sortable" id="{_e(table_id)}">'
        f"<caption>{_e(caption)}</caption><thead><tr>{''.join(head)}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _row_matches(row: Mapping[str, Any], entry: MapEntry) -> bool:
    method = row.get("method")
    if method is None or str(method) not in (entry.method, entry.label):
        return False
    model = row.get("model")
    return model is None or not entry.model or str(model) == entry.model


# -- the page ------------------------------------------------------------------------

_CSS = """
:root {
  --bg: #f6f7f9; --fg: #1d2330; --muted: #5b6475; --card: #ffffff; --line: #dde1e8;
  --accent: #2457c5; --best: #d8f3df; --best-fg: #0f5b2a; --head: #eef1f6;
  --err: #b42318; --err-bg: #fdecea; --warn: #8a5a00; --warn-bg: #fff4d6;
  --ok: #11743b; --ok-bg: #e3f5e9; --target: #fff3bf;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #14171c; --fg: #e6e9ef; --muted: #a0a8b8; --card: #1d2128; --line: #343a46;
    --accent: #8fb3ff; --best: #1d4a2c; --best-fg: #bff0cd; --head: #242a33;
    --err: #ff8f84; --err-bg: #3b1d1b; --warn: #ffd27a; --warn-bg: #3a2f12;
    --ok: #8be0a9; --ok-bg: #173523; --target: #4a4220;
  }
}
* { box-sizing: border-box; }
html { scroll-behavior: smooth; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    sans-serif;
}
header.top { background: var(--card); border-bottom: 1px solid var(--line); }
header.top .inner, main, footer { max-width: 1400px; margin: 0 auto; padding: 0 24px; }
header.top .inner { padding-top: 20px; padding-bottom: 12px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 1.25rem; margin: 0 0 12px; }
h3 { font-size: 1.05rem; margin: 20px 0 10px; color: var(--muted); font-weight: 600; }
.sub { color: var(--muted); margin: 0; }
.stats { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0 4px; padding: 0;
  list-style: none; }
.stats li { background: var(--head); border-radius: 999px; padding: 2px 12px;
  font-size: 0.9rem; }
nav { margin-top: 10px; display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 0.95rem; }
nav .group { color: var(--muted); }
a { color: var(--accent); text-decoration: none; }
a:hover, a:focus-visible { text-decoration: underline; }
main section.block { background: var(--card); border: 1px solid var(--line);
  border-radius: 10px; padding: 18px 20px; margin: 20px 0; scroll-margin-top: 12px; }
.notes p { margin: 6px 0; }
.table-wrap { max-height: 70vh; overflow: auto; border: 1px solid var(--line);
  border-radius: 8px; }
table { border-collapse: separate; border-spacing: 0; width: 100%; font-size: 0.92rem; }
caption { text-align: left; color: var(--muted); padding: 8px 10px; caption-side: top;
  font-size: 0.85rem; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left;
  white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { position: sticky; top: 0; background: var(--head); z-index: 1; padding: 0; }
th button.sort { all: unset; box-sizing: border-box; display: block; width: 100%;
  padding: 8px 10px; cursor: pointer; font-weight: 600; }
th.num button.sort { text-align: right; }
th button.sort:focus-visible { outline: 2px solid var(--accent); outline-offset: -2px; }
th button.sort:hover { background: var(--line); }
th .dir { color: var(--muted); font-weight: 400; font-size: 0.8em; }
th .arrow::after { content: "⇅"; color: var(--muted); margin-left: 4px; opacity: 0.5; }
th[aria-sort="ascending"] .arrow::after { content: "▲"; opacity: 1; color: var(--accent); }
th[aria-sort="descending"] .arrow::after { content: "▼"; opacity: 1; color: var(--accent); }
tbody tr:hover td { background: var(--head); }
tbody tr:last-child td { border-bottom: 0; }
td.best { background: var(--best); color: var(--best-fg); font-weight: 700; }
.missing { color: var(--muted); }
tr:target td { background: var(--target); }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; }
.input-section h2 { display: flex; align-items: baseline; gap: 10px; flex-wrap: wrap; }
.input-section h2 .count { font-size: 0.85rem; font-weight: 400; color: var(--muted); }
figure { margin: 0; }
.overview { margin: 0 0 8px; }
.overview img { max-width: 100%; height: auto; display: block; background: #fff;
  border-radius: 6px; }
.overview figcaption, .card figcaption { color: var(--muted); font-size: 0.85rem; }
.grid { display: grid; gap: 14px;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, 420px), 1fr)); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px; display: flex; flex-direction: column; gap: 6px; scroll-margin-top: 12px;
  min-width: 0; }
.card:target { outline: 3px solid var(--accent); background: var(--target); }
.card.failed { border-color: var(--err); background: var(--err-bg); }
.card .head { display: flex; justify-content: space-between; align-items: baseline;
  gap: 8px; }
.card .name { font-weight: 600; overflow-wrap: anywhere; }
.card .meta { color: var(--muted); font-size: 0.85rem; display: flex; flex-wrap: wrap;
  gap: 2px 12px; }
.card .links { font-size: 0.85rem; display: flex; gap: 12px; }
button.zoom { all: unset; cursor: zoom-in; display: block; border-radius: 6px; }
button.zoom:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
button.zoom img { width: 100%; height: auto; display: block; background: #fff;
  border-radius: 6px; }
.badge { font-size: 0.75rem; font-weight: 700; padding: 1px 8px; border-radius: 999px;
  text-transform: uppercase; letter-spacing: 0.03em; white-space: nowrap; }
.badge-ok { background: var(--ok-bg); color: var(--ok); }
.badge-error, .badge-crashed { background: var(--err); color: #fff; }
.badge-timeout { background: var(--warn-bg); color: var(--warn); }
.error-msg { color: var(--err); font-weight: 500; margin: 0; overflow-wrap: anywhere; }
pre { background: var(--head); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 12px; overflow: auto; font-size: 0.82rem; line-height: 1.45;
  max-height: 60vh; margin: 6px 0 0; }
details > summary { cursor: pointer; color: var(--accent); font-size: 0.9rem; }
details > summary:focus-visible { outline: 2px solid var(--accent); }
.empty { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: 0.85rem; padding-bottom: 30px; }
dialog { border: 0; padding: 0; background: transparent; max-width: 96vw;
  max-height: 96vh; }
dialog::backdrop { background: rgba(10, 12, 16, 0.82); }
dialog img { max-width: 96vw; max-height: 88vh; display: block; background: #fff;
  border-radius: 6px; cursor: zoom-out; }
dialog p { color: #fff; margin: 6px 0 0; text-align: center; }
.esegeta-viewer { display: flex; flex-direction: column; gap: 6px; }
.esegeta-viewer canvas.esegeta-canvas, .esegeta-viewer canvas.esegeta-mip { width: 100%;
  height: auto; image-rendering: pixelated; background: #000; border-radius: 6px; }
.esegeta-niivue { height: 360px; background: #000; border-radius: 6px; }
.esegeta-niivue canvas { width: 100%; height: 100%; display: block; }
.esegeta-controls { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.85rem;
  color: var(--muted); align-items: center; }
.esegeta-control input[type=range] { width: 110px; vertical-align: middle; }
.esegeta-start { align-self: flex-start; }
.esegeta-viewer-error, .sampling { color: var(--muted); font-size: 0.8rem; margin: 0; }
@media print {
  .table-wrap { max-height: none; overflow: visible; }
  main section.block { break-inside: avoid-page; }
}
"""

_SCRIPT = """
(function () {
  "use strict";
  var collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  function sortTable(table, col, type, ascending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row) {
      var cell = row.cells[col];
      var raw = cell ? cell.getAttribute("data-v") : null;
      var value = raw;
      var missing = raw === null || raw === "";
      if (!missing && type === "number") {
        value = parseFloat(raw);
        missing = isNaN(value);
      }
      return {row: row, value: value, missing: missing, index: +row.getAttribute("data-i")};
    });
    rows.sort(function (a, b) {
      if (a.missing !== b.missing) { return a.missing ? 1 : -1; }
      if (a.missing) { return a.index - b.index; }
      var c = 0;
      if (type === "number") {
        c = a.value < b.value ? -1 : (a.value > b.value ? 1 : 0);
      } else {
        c = collator.compare(a.value, b.value);
      }
      if (c === 0) { return a.index - b.index; }
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      var button = th.querySelector("button.sort");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var now = th.getAttribute("aria-sort");
        var dir = (now === "ascending" || now === "descending")
          ? (now === "ascending" ? "descending" : "ascending")
          : (th.getAttribute("data-first") || "ascending");
        Array.prototype.forEach.call(heads, function (h) { h.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", dir);
        sortTable(table, col, th.getAttribute("data-type"), dir === "ascending");
        var status = document.getElementById(table.id + "-status");
        if (status) {
          status.textContent = "Sorted by " + button.textContent.replace(/[\\u2191\\u2193]/g, "")
            .trim() + ", " + dir + ".";
        }
      });
    });
  });
  var dialog = document.getElementById("zoom");
  if (dialog && dialog.showModal) {
    var big = dialog.querySelector("img");
    var label = dialog.querySelector("p");
    Array.prototype.forEach.call(document.querySelectorAll("button.zoom"), function (b) {
      b.addEventListener("click", function () {
        var img = b.querySelector("img");
        big.src = img.src;
        big.alt = img.alt;
        label.textContent = img.alt;
        dialog.showModal();
      });
    });
    dialog.addEventListener("click", function () { dialog.close(); });
  }
})();
"""


def _csp(scripts: Sequence[str]) -> str:
    """The page's Content-Security-Policy: nothing from elsewhere; inline scripts run only
    when their hash is listed. NiiVue (present only with a 3D viewer) needs nothing more:
    WebGL2 is not governed by CSP, its gzip decoding uses DecompressionStream (no
    workers, no WebAssembly), and its font atlas is a data: image."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode() + "'"
        for s in scripts
    )
    return (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src {hashes}; base-uri 'none'; form-action 'none'"
    )


class _Payloads:
    """Viewer payloads stored once each in the page, as base64 in non-executed
    ``<script type="application/octet-stream">`` elements the viewer reads by id."""

    def __init__(self, ids: _Ids) -> None:
        self.ids = ids
        self.by_digest: dict[bytes, str] = {}
        self.blocks: list[str] = []

    def ref(self, data: bytes) -> str:
        digest = hashlib.sha256(bytes(data)).digest()
        if digest not in self.by_digest:
            pid = self.ids.take(f"payload-{len(self.by_digest) + 1}")
            self.by_digest[digest] = pid
            text = base64.b64encode(bytes(data)).decode("ascii")
            self.blocks.append(
                f'<script type="application/octet-stream" id="{pid}">{text}</script>'
            )
        return self.by_digest[digest]


def _viewer(viewer: Viewer, alt: str, payloads: _Payloads) -> str:
    """The element esegeta-viewer.js upgrades; a 3D one starts on request (each WebGL
    viewer costs a browser context, of which a page gets few)."""
    start = ' data-autostart="false"' if viewer.kind == "3d" else ""
    out = (
        f'<div class="esegeta-viewer" data-kind="{viewer.kind}" '
        f'data-input="#{payloads.ref(viewer.input)}" data-map="#{payloads.ref(viewer.map)}" '
        f'data-label="{_e(alt)}"{start}></div>'
    )
    if viewer.sampling:
        out += f'<p class="sampling">{_e(viewer.sampling)}</p>'
    return out


def _image(png: bytes, alt: str) -> str:
    return (
        f'<button type="button" class="zoom" aria-label="{_e("Enlarge: " + alt)}">'
        f'<img src="{_data_uri(png)}" alt="{_e(alt)}"></button>'
    )


def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def _card(
    entry: MapEntry,
    section: InputSection,
    entry_id: str,
    back: str | None,
    lb_id: str,
    payloads: _Payloads,
) -> str:
    failed = not entry.ok
    alt = f"{entry.label} on {section.name}" + (f", {entry.target}" if entry.target else "")
    parts = [
        f'<article class="card{" failed" if failed else ""}" id="{_e(entry_id)}">',
        '<div class="head">'
        f'<span class="name">{_e(entry.label)}</span>{_status_badge(entry.status)}</div>',
    ]
    meta = []
    if entry.model:
        meta.append(f"model {_e(entry.model)}")
    if entry.target:
        meta.append(_e(entry.target))
    if entry.title and entry.title != entry.method:
        meta.append(f"<code>{_e(entry.method)}</code>")
    if entry.seconds is not None and _seconds(entry.seconds):
        meta.append(f'<span title="the method\'s time">{_e(_seconds(entry.seconds))}</span>')
    meta += [f"{_e(k)} {_e(v)}" for k, v in entry.details.items()]
    if meta:
        parts.append(f'<div class="meta">{"".join(f"<span>{m}</span>" for m in meta)}</div>')
    if entry.png is not None:
        parts.append(_image(entry.png, alt))
    if entry.viewer is not None and not failed:
        parts.append(_viewer(entry.viewer, alt, payloads))
    if failed:
        lines = entry.error.strip().splitlines() or ["(no error message)"]
        parts.append(f'<p class="error-msg">{_e(lines[0])}</p>')
        if len(lines) > 1:
            parts.append(
                f"<details><summary>full message</summary><pre>{_e(entry.error)}</pre></details>"
            )
    elif entry.png is None:
        parts.append('<p class="empty">no figure</p>')
    if entry.params:
        parts.append(
            f"<details><summary>parameters</summary><pre>{_json_block(entry.params)}</pre>"
            "</details>"
        )
    links = [f'<a href="#{_e(entry_id)}" title="a link to this map">permalink</a>']
    if back is not None:
        links.append(f'<a href="#{_e(back)}">↑ leaderboard row</a>')
    elif lb_id:
        links.append(f'<a href="#{_e(lb_id)}">↑ leaderboard</a>')
    parts.append(f'<div class="links">{"".join(links)}</div>')
    parts.append("</article>")
    return "".join(parts)


def _input_section(
    section: InputSection,
    section_id: str,
    entry_ids: Sequence[str],
    backs: Sequence[str | None],
    lb_id: str,
    payloads: _Payloads,
) -> str:
    n_failed = sum(1 for m in section.maps if not m.ok)
    count = f"{len(section.maps)} map{'s' if len(section.maps) != 1 else ''}"
    if n_failed:
        count += f", {n_failed} failed"
    out = [
        f'<section class="block input-section" id="{_e(section_id)}">',
        f'<h2>{_e(section.name)} <span class="count">{_e(count)}</span></h2>',
    ]
    if section.overview_png is not None:
        caption = section.overview_caption or "overview"
        picture = _image(section.overview_png, f"{section.name}: {caption}")
        out.append(
            f'<figure class="overview">{picture}<figcaption>{_e(caption)}</figcaption></figure>'
        )
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(section.maps):
        groups.setdefault(entry.target, []).append(i)
    if not groups and section.input_png is not None:
        groups[""] = []
    for target, indices in groups.items():
        if target:
            out.append(f"<h3>{_e(target)}</h3>")
        out.append('<div class="grid">')
        if section.input_png is not None:
            out.append(
                '<figure class="card input-card"><div class="head">'
                '<span class="name">input</span></div>'
                f"{_image(section.input_png, 'input ' + section.name)}</figure>"
            )
        for i in indices:
            out.append(_card(section.maps[i], section, entry_ids[i], backs[i], lb_id, payloads))
        out.append("</div>")
    if not section.maps:
        out.append('<p class="empty">No maps for this input.</p>')
    out.append("</section>")
    return "".join(out)


def _timing_rows(timings: Sequence[Timing]) -> list[dict[str, Any]]:
    rows = []
    for t in timings:
        values = [float(s) for s in t.seconds]
        rows.append(
            {
                "model": t.model,
                "method": t.method,
                "jobs": len(values) + t.failed,
                "failed": t.failed,
                "total s": sum(values) if values else None,
                "mean s": statistics.fmean(values) if values else None,
                "median s": statistics.median(values) if values else None,
                "max s": max(values) if values else None,
            }
        )
    return rows


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document (see the module docstring)."""
    if not isinstance(data, ReportData):
        raise InvalidReportError(
            f"render_html takes a ReportData, got {type(data).__name__}; build one with "
            "ReportData(title, inputs=[...]) or report_from_run(run_dir)."
        )
    ids = _Ids()
    for fixed in ("top", "leaderboard", "timing", "inputs", "parameters", "zoom"):
        ids.take(fixed)
    section_ids = [ids.take(s.anchor or f"input-{s.name}") for s in data.inputs]
    entry_ids = [
        [ids.take(m.anchor or f"map-{s.name}-{m.model}-{m.label}-{m.target}") for m in s.maps]
        for s in data.inputs
    ]
    flat = [(m, eid) for s, eids in zip(data.inputs, entry_ids) for m, eid in zip(s.maps, eids)]
    board = data.leaderboard
    row_ids: list[str] = []
    row_links: list[str | None] = []
    if board is not None:
        for row in board.rows:
            name = "-".join(str(row.get(k, "")) for k in board.labels if row.get(k) is not None)
            row_ids.append(ids.take(f"lb-{name}"))
            wanted = anchor_id(str(row["anchor"])) if row.get("anchor") else None
            if wanted is not None and wanted not in ids.used:
                log.warning("report: leaderboard row %r links to a missing id %r", name, wanted)
                wanted = None
            if wanted is None:
                wanted = next((eid for m, eid in flat if _row_matches(row, m)), None)
            row_links.append(wanted)
    backs: list[list[str | None]] = []
    for section in data.inputs:
        section_backs: list[str | None] = []
        for entry in section.maps:
            back = None
            if board is not None:
                back = next(
                    (rid for row, rid in zip(board.rows, row_ids) if _row_matches(row, entry)),
                    None,
                )
            section_backs.append(back)
        backs.append(section_backs)

    maps = data.maps
    payloads = _Payloads(ids)
    kinds = {m.viewer.kind for m in maps if m.viewer is not None and m.ok}
    scripts = [_SCRIPT]
    if kinds:  # the assets are read only when a report has a viewer
        from esegeta_core.report.assets import asset_text

        scripts = [asset_text("esegeta-viewer.js"), _SCRIPT]
        if "3d" in kinds:
            scripts.insert(0, asset_text("niivue.umd.js"))
    n_failed = sum(1 for m in maps if not m.ok)
    total = sum(m.seconds for m in maps if m.seconds is not None and math.isfinite(m.seconds))
    stats = [f"{len(data.inputs)} input{'s' if len(data.inputs) != 1 else ''}"]
    stats.append(f"{len(maps)} map{'s' if len(maps) != 1 else ''}")
    if n_failed:
        stats.append(f"{n_failed} failed")
    if maps:
        stats.append(f"{_seconds(total) or '0 s'} in methods")
    nav = []
    if board is not None:
        nav.append('<a href="#leaderboard">Leaderboard</a>')
    nav.append('<a href="#timing">Timing</a>')
    if data.inputs:
        links = " · ".join(
            f'<a href="#{_e(sid)}">{_e(s.name)}</a>' for s, sid in zip(data.inputs, section_ids)
        )
        nav.append(f'<span class="group">Inputs: {links}</span>')
    if data.params:
        nav.append('<a href="#parameters">Parameters</a>')

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_csp(scripts)}">',
        '<meta name="generator" content="esegeta">',
        f"<title>{_e(data.title)}</title><style>{_CSS}</style></head>",
        '<body><header class="top" id="top"><div class="inner">',
        f"<h1>{_e(data.title)}</h1>",
    ]
    if data.generated:
        out.append(f'<p class="sub">Generated {_e(data.generated)}</p>')
    out.append(f'<ul class="stats">{"".join(f"<li>{_e(s)}</li>" for s in stats)}</ul>')
    out.append(f'<nav aria-label="sections">{"".join(nav)}</nav></div></header><main>')
    if data.notes:
        paragraphs = "".join(f"<p>{_e(n)}</p>" for n in data.notes)
        out.append(f'<section class="block notes">{paragraphs}</section>')

    if board is not None:
        labels = [k for k in board.labels if any(r.get(k) is not None for r in board.rows)]
        columns = [_TableColumn(k, numeric=False) for k in labels]
        columns += [
            _TableColumn(c.name, True, c.higher_is_better, c.description, c.fmt)
            for c in board.columns
        ]
        link_column = "method" if "method" in labels else (labels[0] if labels else "")
        out.append('<section class="block" id="leaderboard">')
        out.append(f"<h2>{_e(board.title)}</h2>")
        if board.description:
            out.append(f'<p class="sub">{_e(board.description)}</p>')
        if board.rows:
            out.append(
                _sortable_table(
                    "leaderboard-table",
                    "Click a column header to sort (again to reverse; missing values stay "
                    "last). ↑ higher is better, ↓ lower is better; the best value of each "
                    "metric is highlighted (per model).",
                    columns,
                    board.rows,
                    row_ids,
                    row_links,
                    link_column,
                )
            )
            out.append('<p class="sr-only" id="leaderboard-table-status" aria-live="polite"></p>')
        else:
            out.append('<p class="empty">No metric rows.</p>')
        out.append("</section>")

    timings = list(data.timings) if data.timings is not None else timings_from_maps(data.inputs)
    out.append('<section class="block" id="timing"><h2>Timing per method</h2>')
    if timings:
        rows = _timing_rows(timings)
        with_model = any(t.model for t in timings)
        columns = [_TableColumn("model", False)] if with_model else []
        columns += [
            _TableColumn("method", False),
            _TableColumn("jobs", True, None, "jobs of this method"),
            _TableColumn("failed", True, None, "jobs that did not finish"),
            _TableColumn("total s", True, None, "seconds over all successful jobs", "seconds"),
            _TableColumn("mean s", True, False, "mean seconds per successful job", "seconds"),
            _TableColumn("median s", True, None, "median seconds per successful job", "seconds"),
            _TableColumn("max s", True, None, "slowest successful job", "seconds"),
        ]
        timing_ids = [ids.take(f"timing-{r['model']}-{r['method']}") for r in rows]
        timing_links = [
            next(
                (
                    eid
                    for m, eid in flat
                    if m.label == r["method"] and (not with_model or m.model == r["model"])
                ),
                None,
            )
            for r in rows
        ]
        out.append(
            _sortable_table(
                "timing-table",
                "Seconds spent in each method (successful jobs); click a header to sort.",
                columns,
                rows,
                timing_ids,
                timing_links,
                "method",
            )
        )
        out.append('<p class="sr-only" id="timing-table-status" aria-live="polite"></p>')
    else:
        out.append('<p class="empty">No timings.</p>')
    out.append("</section>")

    out.append('<div id="inputs">')
    for section, sid, eids, sbacks in zip(data.inputs, section_ids, entry_ids, backs):
        lb_id = "leaderboard" if board is not None else ""
        out.append(_input_section(section, sid, eids, sbacks, lb_id, payloads))
    if not data.inputs:
        out.append('<section class="block"><p class="empty">No inputs.</p></section>')
    out.append("</div>")

    if data.params:
        out.append(
            '<section class="block" id="parameters"><h2>Parameters</h2>'
            "<details><summary>Run configuration (JSON)</summary>"
            f"<pre>{_json_block(dict(data.params))}</pre></details></section>"
        )
    out.append(
        '</main><footer><a href="#top">↑ top</a> · Written by esegeta; self-contained, '
        "readable offline.</footer>"
        '<dialog id="zoom" aria-label="enlarged figure"><img alt=""><p></p></dialog>'
    )
    out.extend(payloads.blocks)
    out.extend(f"<script>{script}</script>" for script in scripts)
    out.append("</body></html>\n")
    return "".join(out)


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


# -- from a run folder ---------------------------------------------------------------


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


def report_from_run(
    run_dir: str | os.PathLike[str],
    *,
    leaderboard: Leaderboard | None = None,
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
    sections: dict[tuple[str, int], list[MapEntry]] = {}
    viewer_inputs: dict[tuple[str, int], bytes] = {}
    for record in records:
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
        viewer = _run_viewer(run_dir, record, viewer_inputs) if viewers else None
        entry = MapEntry(
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
        item = record.get("item", 0)
        key = (str(record.get("input", "")), int(item) if isinstance(item, int) else 0)
        sections.setdefault(key, []).append(entry)
    inputs = []
    for (path, item), entries in sections.items():
        name = f"{Path(path).name} #{item}"
        grid = _read_png(run_dir / "figures" / f"{_slug(Path(path).name)}-{item}.png")
        inputs.append(
            InputSection(
                name=name,
                maps=entries,
                overview_png=grid,
                overview_caption=(
                    "The input and every method, one row per target (3D: the axial slice "
                    "through each map's maximum). Below, each job's figure (3D: slices "
                    "through the maximum and maximum-intensity projections)."
                ),
                anchor=f"input-{_slug(Path(path).name)}-{item}",
            )
        )
    n_failed = sum(1 for r in records if r.get("status") != "ok")
    notes = [f"Run folder: {run_dir.resolve()}"]
    if n_failed:
        notes.append(
            f"{n_failed} of {len(records)} jobs did not finish; their cards show the status "
            "and the error. Running the same config again retries only those."
        )
    return ReportData(
        title=title or f"esegeta run: {config.get('name') or run_dir.name}",
        inputs=inputs,
        leaderboard=leaderboard,
        params=config,
        notes=notes,
        generated=datetime.now().astimezone().isoformat(timespec="seconds"),
    )

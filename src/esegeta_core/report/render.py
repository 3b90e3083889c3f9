"""The report page: :func:`render_html` turns a :class:`ReportData` into one HTML string.

The page is composed of sections, each rendered by a function of its own: the head
(Content-Security-Policy, ``assets/report.css``), the top (title, counts, navigation),
the notes, the leaderboard, the timing table, the inputs' map cards
(:mod:`esegeta_core.report.cards`), the parameters, then the viewer payloads and the
scripts (``assets/report.js``; the viewer script and NiiVue only when a map has a viewer).
Ids are handed out in page order, so the same data always renders the same page.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from esegeta_core.errors import InvalidReportError
from esegeta_core.report.anchors import UniqueIds, anchor_id
from esegeta_core.report.assets import asset_text
from esegeta_core.report.cards import Payloads, input_section
from esegeta_core.report.markup import escape, json_block, seconds_text
from esegeta_core.report.model import (
    LeaderboardTable,
    MapEntry,
    ReportData,
    Timing,
    timings_from_maps,
)
from esegeta_core.report.tables import TableColumn, sortable_table

log = logging.getLogger(__name__)

__all__ = ["render_html"]

_FIXED_IDS = ("top", "leaderboard", "timing", "inputs", "parameters", "zoom")
_LEADERBOARD_CAPTION = (
    "Click a column header to sort (again to reverse; missing values stay last). ↑ higher "
    "is better, ↓ lower is better; the best value of each metric is highlighted (per model)."
)
_TIMING_CAPTION = "Seconds spent in each method (successful jobs); click a header to sort."
_TIMING_COLUMNS = (
    TableColumn("method", False),
    TableColumn("jobs", True, None, "jobs of this method"),
    TableColumn("failed", True, None, "jobs that did not finish"),
    TableColumn("total s", True, None, "seconds over all successful jobs", "seconds"),
    TableColumn("mean s", True, False, "mean seconds per successful job", "seconds"),
    TableColumn("median s", True, None, "median seconds per successful job", "seconds"),
    TableColumn("max s", True, None, "slowest successful job", "seconds"),
)
_FOOTER = (
    '</main><footer><a href="#top">↑ top</a> · Written by esegeta; self-contained, '
    "readable offline.</footer>"
    '<dialog id="zoom" aria-label="enlarged figure"><img alt=""><p></p></dialog>'
)


def _row_matches(row: Mapping[str, Any], entry: MapEntry) -> bool:
    """Whether a leaderboard row is about ``entry``'s method (and model, when both name one)."""
    method = row.get("method")
    if method is None or str(method) not in (entry.method, entry.label):
        return False
    model = row.get("model")
    return model is None or not entry.model or str(model) == entry.model


@dataclass(frozen=True)
class _PageIds:
    """The page's element ids and the links between leaderboard rows and maps.

    ``entries[s][m]`` is the id of map ``m`` of input ``s`` and ``backs[s][m]`` the id of
    its leaderboard row (None: no row); ``maps`` every map with its id, in page order;
    ``row_links[r]`` the id leaderboard row ``r`` links to.
    """

    ids: UniqueIds
    sections: list[str]
    entries: list[list[str]]
    maps: list[tuple[MapEntry, str]]
    rows: list[str]
    row_links: list[str | None]
    backs: list[list[str | None]]


def _leaderboard_ids(
    board: LeaderboardTable, ids: UniqueIds, maps: Sequence[tuple[MapEntry, str]]
) -> tuple[list[str], list[str | None]]:
    """Each row's id and the id it links to: its ``anchor`` when that exists (a warning
    when not), else its method's first map."""
    row_ids: list[str] = []
    row_links: list[str | None] = []
    for row in board.rows:
        name = "-".join(str(row.get(k, "")) for k in board.labels if row.get(k) is not None)
        row_ids.append(ids.take(f"lb-{name}"))
        wanted = anchor_id(str(row["anchor"])) if row.get("anchor") else None
        if wanted is not None and wanted not in ids.used:
            log.warning("report: leaderboard row %r links to a missing id %r", name, wanted)
            wanted = None
        if wanted is None:
            wanted = next((eid for m, eid in maps if _row_matches(row, m)), None)
        row_links.append(wanted)
    return row_ids, row_links


def _row_of(entry: MapEntry, board: LeaderboardTable | None, row_ids: Sequence[str]) -> str | None:
    """The id of the first leaderboard row about ``entry``, or None."""
    if board is None:
        return None
    return next((rid for row, rid in zip(board.rows, row_ids) if _row_matches(row, entry)), None)


def _page_ids(data: ReportData) -> _PageIds:
    """Ids of the fixed sections, the inputs, the maps and the leaderboard rows (in this
    order: a later one that clashes gets a suffix), and the links between rows and maps."""
    ids = UniqueIds()
    for fixed in _FIXED_IDS:
        ids.take(fixed)
    sections = [ids.take(s.anchor or f"input-{s.name}") for s in data.inputs]
    entries = [
        [ids.take(m.anchor or f"map-{s.name}-{m.model}-{m.label}-{m.target}") for m in s.maps]
        for s in data.inputs
    ]
    maps = [(m, e) for s, eids in zip(data.inputs, entries) for m, e in zip(s.maps, eids)]
    board = data.leaderboard
    rows, row_links = _leaderboard_ids(board, ids, maps) if board is not None else ([], [])
    backs = [[_row_of(m, board, rows) for m in s.maps] for s in data.inputs]
    return _PageIds(ids, sections, entries, maps, rows, row_links, backs)


def _scripts(maps: Sequence[MapEntry]) -> list[str]:
    """The page's inline scripts, in order: NiiVue with a 3D viewer, the viewer script
    with any viewer, then the table and zoom script. Assets are read only when needed."""
    kinds = {m.viewer.kind for m in maps if m.viewer is not None and m.ok}
    scripts = [asset_text("report.js")]
    if kinds:
        scripts.insert(0, asset_text("esegeta-viewer.js"))
        if "3d" in kinds:
            scripts.insert(0, asset_text("niivue.umd.js"))
    return scripts


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


def _head(title: str, scripts: Sequence[str]) -> str:
    """From the doctype to ``</head>``: the policy, the title and the style sheet."""
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_csp(scripts)}">'
        '<meta name="generator" content="esegeta">'
        f"<title>{escape(title)}</title><style>{asset_text('report.css')}</style></head>"
    )


def _stats(data: ReportData) -> list[str]:
    """The counts under the title: inputs, maps, failures, time spent in methods."""
    maps = data.maps
    n_failed = sum(1 for m in maps if not m.ok)
    total = sum(m.seconds for m in maps if m.seconds is not None and math.isfinite(m.seconds))
    stats = [f"{len(data.inputs)} input{'s' if len(data.inputs) != 1 else ''}"]
    stats.append(f"{len(maps)} map{'s' if len(maps) != 1 else ''}")
    if n_failed:
        stats.append(f"{n_failed} failed")
    if maps:
        stats.append(f"{seconds_text(total) or '0 s'} in methods")
    return stats


def _nav(data: ReportData, section_ids: Sequence[str]) -> str:
    """Links to the page's sections, one per input."""
    nav = []
    if data.leaderboard is not None:
        nav.append('<a href="#leaderboard">Leaderboard</a>')
    nav.append('<a href="#timing">Timing</a>')
    if data.inputs:
        links = " · ".join(
            f'<a href="#{escape(sid)}">{escape(s.name)}</a>'
            for s, sid in zip(data.inputs, section_ids)
        )
        nav.append(f'<span class="group">Inputs: {links}</span>')
    if data.params:
        nav.append('<a href="#parameters">Parameters</a>')
    return f'<nav aria-label="sections">{"".join(nav)}</nav>'


def _top(data: ReportData, section_ids: Sequence[str]) -> str:
    """The page's header (title, timestamp, counts, navigation), then ``<main>``."""
    generated = f'<p class="sub">Generated {escape(data.generated)}</p>' if data.generated else ""
    stats = "".join(f"<li>{escape(s)}</li>" for s in _stats(data))
    return (
        '<body><header class="top" id="top"><div class="inner">'
        f"<h1>{escape(data.title)}</h1>{generated}"
        f'<ul class="stats">{stats}</ul>'
        f"{_nav(data, section_ids)}</div></header><main>"
    )


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    paragraphs = "".join(f"<p>{escape(n)}</p>" for n in notes)
    return f'<section class="block notes">{paragraphs}</section>'


def _leaderboard_section(
    board: LeaderboardTable | None, row_ids: Sequence[str], row_links: Sequence[str | None]
) -> str:
    """The sortable metric table; label columns are those some row fills."""
    if board is None:
        return ""
    labels = [k for k in board.labels if any(r.get(k) is not None for r in board.rows)]
    columns = [TableColumn(k, numeric=False) for k in labels]
    columns += [
        TableColumn(c.name, True, c.higher_is_better, c.description, c.fmt) for c in board.columns
    ]
    link_column = "method" if "method" in labels else (labels[0] if labels else "")
    out = ['<section class="block" id="leaderboard">', f"<h2>{escape(board.title)}</h2>"]
    if board.description:
        out.append(f'<p class="sub">{escape(board.description)}</p>')
    if board.rows:
        out.append(
            sortable_table(
                "leaderboard-table",
                _LEADERBOARD_CAPTION,
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
    return "".join(out)


def _timing_rows(timings: Sequence[Timing]) -> list[dict[str, Any]]:
    """One row per method: job counts and total, mean, median, max seconds."""
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


def _timing_section(data: ReportData, page: _PageIds) -> str:
    """The sortable per-method timing table (given, or derived from the maps); each
    method links to its first map."""
    timings = list(data.timings) if data.timings is not None else timings_from_maps(data.inputs)
    if not timings:
        return (
            '<section class="block" id="timing"><h2>Timing per method</h2>'
            '<p class="empty">No timings.</p></section>'
        )
    rows = _timing_rows(timings)
    with_model = any(t.model for t in timings)
    columns = [TableColumn("model", False), *_TIMING_COLUMNS] if with_model else _TIMING_COLUMNS
    row_ids = [page.ids.take(f"timing-{r['model']}-{r['method']}") for r in rows]
    links = [
        next(
            (
                eid
                for m, eid in page.maps
                if m.label == r["method"] and (not with_model or m.model == r["model"])
            ),
            None,
        )
        for r in rows
    ]
    table = sortable_table("timing-table", _TIMING_CAPTION, columns, rows, row_ids, links, "method")
    return (
        f'<section class="block" id="timing"><h2>Timing per method</h2>{table}'
        '<p class="sr-only" id="timing-table-status" aria-live="polite"></p></section>'
    )


def _inputs(data: ReportData, page: _PageIds, payloads: Payloads) -> str:
    """Every input's section of map cards (their viewer data goes to ``payloads``)."""
    lb_id = "leaderboard" if data.leaderboard is not None else ""
    sections = [
        input_section(section, sid, eids, backs, lb_id, payloads)
        for section, sid, eids, backs in zip(data.inputs, page.sections, page.entries, page.backs)
    ]
    if not data.inputs:
        sections.append('<section class="block"><p class="empty">No inputs.</p></section>')
    return f'<div id="inputs">{"".join(sections)}</div>'


def _parameters(params: Mapping[str, Any]) -> str:
    if not params:
        return ""
    return (
        '<section class="block" id="parameters"><h2>Parameters</h2>'
        "<details><summary>Run configuration (JSON)</summary>"
        f"<pre>{json_block(dict(params))}</pre></details></section>"
    )


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document (see :mod:`esegeta_core.report.html`)."""
    if not isinstance(data, ReportData):
        raise InvalidReportError(
            f"render_html takes a ReportData, got {type(data).__name__}; build one with "
            "ReportData(title, inputs=[...]) or report_from_run(run_dir)."
        )
    page = _page_ids(data)
    scripts = _scripts(data.maps)
    payloads = Payloads(page.ids)
    # in page order: the timing rows take their ids before the inputs' payloads do
    body = [
        _top(data, page.sections),
        _notes(data.notes),
        _leaderboard_section(data.leaderboard, page.rows, page.row_links),
        _timing_section(data, page),
        _inputs(data, page, payloads),
        _parameters(data.params),
        _FOOTER,
    ]
    tail = "".join(payloads.blocks) + "".join(f"<script>{s}</script>" for s in scripts)
    return f"{_head(data.title, scripts)}{''.join(body)}{tail}</body></html>\n"

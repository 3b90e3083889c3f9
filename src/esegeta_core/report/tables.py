"""The report's sortable tables (leaderboard and timing) as HTML.

Each numeric cell carries its value as a sort key (``data-v``) for the page's script
(``assets/report.js``); missing values (None, NaN, text) sort last. The best cell of a
column with a direction is highlighted, per model where rows name one: models' scores
may come in different units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from esegeta_core.report.markup import escape

__all__ = ["TableColumn", "as_number", "format_value", "sortable_table"]


@dataclass(frozen=True)
class TableColumn:
    """One column as the table draws it: ``numeric`` columns sort as numbers and align
    right; ``higher_is_better`` (numeric only) gives the first sort direction and the
    highlight (``None``: neither); ``fmt`` a float format spec, or ``"seconds"``."""

    name: str
    numeric: bool
    higher_is_better: bool | None = None
    description: str = ""
    fmt: str = ".4g"


def as_number(value: object) -> float | None:
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


def format_value(value: Any, fmt: str) -> str:
    """A cell's text: integers as they are, floats with ``fmt`` (``"seconds"``: three
    significant digits, no exponent for long runs), infinities as ``∞``; a missing value
    is empty (None, NaN) or its text."""
    number = as_number(value)
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


def _best_values(
    columns: Sequence[TableColumn], rows: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, Any], float]:
    """The best value of each numeric column with a direction, per model; a column
    whose values are all equal has none (nothing to point out)."""
    best: dict[tuple[str, Any], float] = {}
    for col in columns:
        if col.numeric and col.higher_is_better is not None:
            groups: dict[Any, list[float]] = {}
            for r in rows:
                if (n := as_number(r.get(col.name))) is not None:
                    groups.setdefault(r.get("model"), []).append(n)
            for group, values in groups.items():
                if min(values) != max(values):
                    pick = max if col.higher_is_better else min
                    best[col.name, group] = pick(values)
    return best


def _header_cell(col: TableColumn) -> str:
    """A header with its sort button, direction hint and first sort direction."""
    if col.numeric and col.higher_is_better is not None:
        first = "descending" if col.higher_is_better else "ascending"
        hint = "higher is better" if col.higher_is_better else "lower is better"
        arrow = "↑" if col.higher_is_better else "↓"
        tip = f"{col.description} ({hint})" if col.description else hint
        extra = f' <span class="dir" aria-hidden="true">{arrow}</span>'
    else:
        first, tip, extra = "ascending", col.description, ""
    kind = "number" if col.numeric else "text"
    title = f' title="{escape(tip)}"' if tip else ""
    return (
        f'<th scope="col" aria-sort="none" data-type="{kind}" data-first="{first}"'
        f"{' class=num' if col.numeric else ''}>"
        f'<button type="button" class="sort"{title}>{escape(col.name)}{extra}'
        f'<span class="arrow" aria-hidden="true"></span></button></th>'
    )


def _number_cell(value: object, fmt: str, best: float | None) -> str:
    """A numeric cell: its sort key, its full value as a tooltip, marked when ``best``."""
    number = as_number(value)
    key = "" if number is None else _sort_key(number)
    text = format_value(value, fmt) if value is not None else ""
    classes = ["num"]
    mark = ""
    if number is not None and number == best:
        classes.append("best")
        mark = '<span class="sr-only"> (best)</span>'
    if number is None:
        classes.append("missing")
        text = text or "—"
    full = f' title="{escape(repr(value))}"' if number is not None else ""
    attrs = f'class="{" ".join(classes)}" data-v="{escape(key)}"{full}'
    return f"<td {attrs}>{escape(text)}{mark}</td>"


def _text_cell(value: object, link: str | None) -> str:
    """A text cell, a link to the element ``link`` when given."""
    text = "" if value is None else str(value)
    inner = escape(text) or '<span class="missing">—</span>'
    if link is not None:
        inner = f'<a href="#{escape(link)}" title="show the maps">{inner}</a>'
    return f'<td data-v="{escape(text.lower())}">{inner}</td>'


def sortable_table(
    table_id: str,
    caption: str,
    columns: Sequence[TableColumn],
    rows: Sequence[Mapping[str, Any]],
    row_ids: Sequence[str],
    links: Sequence[str | None],
    link_column: str,
) -> str:
    """A table whose headers sort it (see ``assets/report.js``); the best cell of each
    numeric column with a direction is marked ``best``. ``links[i]`` is the id row
    ``i``'s ``link_column`` cell points at."""
    best = _best_values(columns, rows)
    head = "".join(_header_cell(col) for col in columns)
    body = []
    for i, (row, row_id, link) in enumerate(zip(rows, row_ids, links)):
        cells = [
            _number_cell(row.get(col.name), col.fmt, best.get((col.name, row.get("model"))))
            if col.numeric
            else _text_cell(row.get(col.name), link if col.name == link_column else None)
            for col in columns
        ]
        body.append(f'<tr id="{escape(row_id)}" data-i="{i}">{"".join(cells)}</tr>')
    return (
        f'<div class="table-wrap"><table class="sortable" id="{escape(table_id)}">'
        f"<caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )

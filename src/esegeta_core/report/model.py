"""The report's data model: frozen dataclasses, checked when built.

:class:`ReportData` is everything one page shows: :class:`InputSection` per input with its
:class:`MapEntry` maps (each with an optional :class:`Viewer`), a
:class:`LeaderboardTable` of :class:`Column` metrics and per-method :class:`Timing`. They
hold user data, so every field is checked on construction and a wrong one raises
:class:`~esegeta_core.errors.InvalidReportError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esegeta_core.errors import InvalidReportError

if TYPE_CHECKING:
    from esegeta_core.evaluation.leaderboard import Leaderboard

__all__ = [
    "PNG_SIGNATURE",
    "Column",
    "InputSection",
    "LeaderboardTable",
    "MapEntry",
    "ReportData",
    "Timing",
    "Viewer",
    "leaderboard_table",
    "timings_from_maps",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tuple(value: object, what: str) -> tuple[Any, ...]:
    """``value`` as a tuple; a string, bytes or a dict is refused (not a list of items)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise InvalidReportError(f"{what} must be a list or tuple, got {type(value).__name__}.")
    return tuple(value)


def _check_png(value: object, what: str) -> None:
    """Refuse anything but None or the bytes of a PNG file."""
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


def _check_text(value: object, what: str) -> None:
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
class LeaderboardTable:
    """The page's metric table: methods x metrics, possibly for several models (what
    :func:`leaderboard_table` makes of an evaluation's
    :class:`~esegeta_core.evaluation.leaderboard.Leaderboard`).

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
        columns = _tuple(self.columns, "LeaderboardTable.columns")
        rows = _tuple(self.rows, "LeaderboardTable.rows")
        labels = _tuple(self.labels, "LeaderboardTable.labels")
        for col in columns:
            if not isinstance(col, Column):
                raise InvalidReportError(
                    f"LeaderboardTable.columns must hold Column objects, got {type(col).__name__}; "
                    "wrap names as Column('name', higher_is_better=...)."
                )
        names = [c.name for c in columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidReportError(f"LeaderboardTable column {dupes[0]!r} appears twice.")
        clash = sorted(set(names) & set(labels))
        if clash:
            raise InvalidReportError(
                f"LeaderboardTable column {clash[0]!r} is also a label key; rename the metric."
            )
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise InvalidReportError(
                    f"LeaderboardTable row {i} must be a dict, got {type(row).__name__}."
                )
        _check_text(self.title, "LeaderboardTable.title")
        _check_text(self.description, "LeaderboardTable.description")
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "rows", tuple(dict(r) for r in rows))
        object.__setattr__(self, "labels", labels)


def leaderboard_table(board: Leaderboard, title: str = "Metric leaderboard") -> LeaderboardTable:
    """The report's table of an evaluation's leaderboard: its metric columns (with
    their direction and description), the sanity verdict when randomisation was
    measured, the item count and status of every (model, method) row."""
    columns = [Column(c.name, c.higher_is_better, c.description) for c in board.columns]
    extra = ["sanity"] if "randomisation" in board.metrics else []
    columns += [Column(name, None, "") for name in (*extra, "items", "status")]
    rows = [{k: v for k, v in r.items() if k != "error"} for r in board.rows()]
    return LeaderboardTable(columns=columns, rows=rows, labels=("model", "method"), title=title)


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
    leaderboard: LeaderboardTable | None = None
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
        if self.leaderboard is not None and not isinstance(self.leaderboard, LeaderboardTable):
            raise InvalidReportError(
                f"ReportData.leaderboard must be a LeaderboardTable or None, got "
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

"""The leaderboard: methods x metrics, per model, with per-item values kept.

Each :class:`MethodScores` holds one (model, method) pair's per-item metric values;
:class:`Leaderboard` aggregates them into rows (means over items; the pointing game
averaged per class, as TorchRay does), knows which direction is better for every
column, merges results of several input batches, and writes CSV and JSON.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from esegeta_core.files import atomic_path, write_json
from esegeta_core.metric_info import METRICS, MetricInfo

__all__ = ["METRICS", "Leaderboard", "MethodScores", "MetricInfo"]


MEAN_RANK = MetricInfo(
    "mean_rank",
    False,
    "Mean rank of the method among its model's methods over the metric columns it has "
    "values for (1 = best in every metric; ties share the mean rank). Unit-free: it "
    "weighs metrics in different units alike and compares across models.",
)

COST_COLUMNS = (
    MetricInfo("seconds", False, "Seconds per explain() call (mean over input batches)."),
    MetricInfo("peak_mb", False, "Peak extra memory of one explain() call, MB."),
)


@dataclass(frozen=True)
class MethodScores:
    """One (model, method) pair: per-item metric values and its cost."""

    model: str
    method: str
    title: str
    params: Mapping[str, Any]
    targets: torch.Tensor
    """``(B,)`` the explained classes."""
    values: Mapping[str, torch.Tensor] = field(default_factory=dict)
    """Per metric, ``(B,)`` per-item values (NaN: not defined for that item)."""
    seconds: Sequence[float] = ()
    """Seconds of each explain() call."""
    peak_mb: float | None = None
    sanity_failed: bool | None = None
    status: str = "ok"
    error: str = ""

    def merged(self, other: MethodScores) -> MethodScores:
        """These items followed by ``other``'s (same model and method)."""
        values = {
            k: torch.cat([self.values[k], other.values[k]])
            for k in self.values
            if k in other.values
        }
        peaks = [p for p in (self.peak_mb, other.peak_mb) if p is not None]
        sanity = [s for s in (self.sanity_failed, other.sanity_failed) if s is not None]
        failed = self.status if self.status != "ok" else other.status
        return replace(
            self,
            targets=torch.cat([self.targets, other.targets]),
            values=values,
            seconds=(*self.seconds, *other.seconds),
            peak_mb=max(peaks) if peaks else None,
            sanity_failed=any(sanity) if sanity else None,
            status=failed,
            error=self.error or other.error,
        )

    def value(self, metric: str) -> float:
        """The leaderboard value of ``metric``: the mean over items (NaN items skipped);
        the pointing game per class first, then over classes."""
        v = self.values.get(metric)
        if v is None or v.numel() == 0:
            return math.nan
        v = v.double()
        if metric == "pointing_game":
            per_class = [torch.nanmean(v[self.targets == c]) for c in torch.unique(self.targets)]
            per_class = [p for p in per_class if not torch.isnan(p)]
            return float(torch.stack(per_class).mean()) if per_class else math.nan
        return float(torch.nanmean(v))


@dataclass(frozen=True)
class Leaderboard:
    """Methods x metrics, per model; rows in the order the pairs were evaluated."""

    entries: Sequence[MethodScores]
    metrics: Sequence[str]
    maps: Mapping[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    """With ``evaluate(keep_maps=True)``: the ``(model, title)`` pairs' maps (CPU)."""

    @property
    def columns(self) -> list[MetricInfo]:
        """The mean rank (when there are metrics), the metric columns, then the cost
        columns."""
        ranked = [MEAN_RANK] if self.metrics else []
        return ranked + [METRICS[m] for m in self.metrics] + list(COST_COLUMNS)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (model, method): labels, metric values, cost, status."""
        out = []
        for e in self.entries:
            row: dict[str, Any] = {"model": e.model, "method": e.title}
            if self.metrics:
                row["mean_rank"] = math.nan  # filled in below, once all rows exist
            for m in self.metrics:
                row[m] = e.value(m)
            row["seconds"] = sum(e.seconds) / len(e.seconds) if e.seconds else math.nan
            row["peak_mb"] = math.nan if e.peak_mb is None else e.peak_mb
            if "randomisation" in self.metrics:
                row["sanity"] = (
                    "" if e.sanity_failed is None else ("fail" if e.sanity_failed else "pass")
                )
            row["items"] = int(e.targets.numel())
            row["status"] = e.status
            row["error"] = e.error
            out.append(row)
        if self.metrics:
            _fill_mean_ranks(out, [METRICS[m] for m in self.metrics])
        return out

    def best(self, metric: str, model: str | None = None) -> dict[str, Any] | None:
        """The row with the best value of ``metric``, among ``model``'s rows when given
        (None when no row has one)."""
        info = next((c for c in self.columns if c.name == metric), None)
        if info is None:
            from esegeta_core.errors import InvalidParamsError

            raise InvalidParamsError(
                f"Leaderboard: no column {metric!r}; columns: "
                f"{', '.join(c.name for c in self.columns)}."
            )
        rows = [
            r
            for r in self.rows()
            if not math.isnan(r[metric]) and (model is None or r["model"] == model)
        ]
        if not rows:
            return None
        pick = max if info.higher_is_better else min
        return pick(rows, key=lambda r: r[metric])

    def merged(self, other: Leaderboard) -> Leaderboard:
        """Both leaderboards' items together (e.g. several input files)."""
        by_key = {(e.model, e.title): e for e in self.entries}
        for e in other.entries:
            key = (e.model, e.title)
            by_key[key] = by_key[key].merged(e) if key in by_key else e
        metrics = list(dict.fromkeys([*self.metrics, *other.metrics]))
        maps = dict(self.maps)
        for key, m in other.maps.items():
            maps[key] = torch.cat([maps[key], m]) if key in maps else m
        return Leaderboard(list(by_key.values()), metrics, maps)

    @classmethod
    def combine(cls, boards: Iterable[Leaderboard]) -> Leaderboard:
        """Merge any number of leaderboards (an empty one when there are none)."""
        out = cls([], [])
        for board in boards:
            out = out.merged(board)
        return out

    def to_csv(self, path: str | Path | None = None) -> str:
        """The rows as CSV (written atomically to ``path`` when given)."""
        rows = self.rows()
        fields = list(rows[0]) if rows else ["model", "method"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        text = buffer.getvalue()
        if path is not None:
            with atomic_path(Path(path)) as tmp:
                tmp.write_text(text)
        return text

    def to_dict(self) -> dict[str, Any]:
        """Columns (with direction and description) and rows, JSON-ready (NaN -> None)."""
        return {
            "columns": [
                {
                    "name": c.name,
                    "higher_is_better": c.higher_is_better,
                    "description": c.description,
                }
                for c in self.columns
            ],
            "rows": [{k: _json_value(v) for k, v in r.items()} for r in self.rows()],
        }

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` atomically to ``path``."""
        write_json(Path(path), self.to_dict())
        return Path(path)


def _fill_mean_ranks(rows: list[dict[str, Any]], metrics: Sequence[MetricInfo]) -> None:
    """Set each row's ``mean_rank``: its rank (1 = best, ties averaged) among the rows
    of the same model with a value, averaged over the metrics it has values for."""
    ranks: list[list[float]] = [[] for _ in rows]
    for info in metrics:
        if info.higher_is_better is None:
            continue
        by_model: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            value = row[info.name]
            if isinstance(value, float) and math.isfinite(value):
                by_model.setdefault(row["model"], []).append(i)
        for members in by_model.values():
            sign = -1.0 if info.higher_is_better else 1.0
            values = [sign * rows[i][info.name] for i in members]
            for i, value in zip(members, values):
                better = sum(v < value for v in values)
                ties = sum(v == value for v in values)
                ranks[i].append(better + (ties + 1) / 2)
    for row, got in zip(rows, ranks):
        row["mean_rank"] = sum(got) / len(got) if got else math.nan


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value

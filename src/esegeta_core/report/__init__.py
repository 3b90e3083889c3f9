"""Reports of a run: figures of attribution maps (PNG) and a self-contained HTML page."""

from esegeta_core.report.figures import grid_figure, job_figure
from esegeta_core.report.html import (
    Column,
    InputSection,
    LeaderboardTable,
    MapEntry,
    ReportData,
    Timing,
    render_html,
    report_from_run,
    write_html_report,
)

__all__ = [
    "Column",
    "InputSection",
    "LeaderboardTable",
    "MapEntry",
    "ReportData",
    "Timing",
    "grid_figure",
    "job_figure",
    "render_html",
    "report_from_run",
    "write_html_report",
]

"""Reports of a run: figures of attribution maps (PNG)."""

from esegeta_core.report.figures import grid_figure, job_figure

__all__ = ["grid_figure", "job_figure"]

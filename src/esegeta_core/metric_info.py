"""The metrics esegeta's evaluation knows, with their direction and meaning.

A leaf module (it imports nothing of esegeta), so that the run config can validate
metric names without importing the evaluation (see :mod:`esegeta_core.evaluation`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS", "MetricInfo"]


@dataclass(frozen=True)
class MetricInfo:
    """A leaderboard column: its name, which direction is better, what it measures."""

    name: str
    higher_is_better: bool | None
    description: str
    needs_mask: bool = False


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo(
            "infidelity",
            False,
            "Infidelity (Yeh et al. 2019): squared error of the map's prediction of the "
            "score change under input noise.",
        ),
        MetricInfo(
            "max_sensitivity",
            False,
            "Max-sensitivity (Yeh et al. 2019): largest relative change of the map under "
            "small input noise.",
        ),
        MetricInfo(
            "aopc",
            True,
            "AOPC (Samek et al. 2017): mean score drop when grid cells are perturbed most "
            "relevant first.",
        ),
        MetricInfo(
            "deletion",
            False,
            "Deletion AUC (Petsiuk et al. 2018): area under the score curve as the most "
            "relevant pixels are removed.",
        ),
        MetricInfo(
            "insertion",
            True,
            "Insertion AUC (Petsiuk et al. 2018): area under the score curve as the most "
            "relevant pixels are restored onto a blurred canvas.",
        ),
        MetricInfo(
            "pointing_game",
            True,
            "Pointing game (Zhang et al. 2016): share of maps whose maximum lies within "
            "the tolerance of the object, averaged per class.",
            needs_mask=True,
        ),
        MetricInfo(
            "relevance_mass",
            True,
            "Relevance mass (Arras et al. 2022): share of positive relevance inside the "
            "object mask.",
            needs_mask=True,
        ),
        MetricInfo(
            "relevance_rank_accuracy",
            True,
            "Relevance rank accuracy (Arras et al. 2022): share of the top-K pixels inside "
            "the mask (K = mask size).",
            needs_mask=True,
        ),
        MetricInfo(
            "pompom",
            False,
            "POMPOM (Rio-Torto et al. 2020): share of meaningful pixels outside the mask "
            "(meaningful: above 5% of the map's maximum by default; the paper's absolute "
            "1e-6 with metric_params={'pompom': {'eps': 1e-6, 'relative': False}}).",
            needs_mask=True,
        ),
        MetricInfo(
            "randomisation",
            False,
            "Cascading randomisation (Adebayo et al. 2018): Spearman similarity of the "
            "maps after re-initialising every layer; high means the map ignores the "
            "model (the 'sanity' column says pass or fail).",
        ),
    )
}
"""Every metric :func:`~esegeta_core.evaluation.evaluate` knows, in leaderboard order."""

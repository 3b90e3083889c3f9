"""Evaluation metrics for explanations: batched, 2D and 3D, on the model's device.

- :func:`evaluate`: methods x metrics for one or several models, a :class:`Leaderboard`;
  the module itself is callable, ``esegeta_core.evaluation(model, x, methods, ...)``;

- faithfulness: :func:`infidelity`, :func:`max_sensitivity`, :func:`aopc`,
  :func:`deletion`, :func:`insertion`;
- localisation: :func:`pointing_game` (+ :func:`pointing_accuracy`),
  :func:`relevance_mass`, :func:`relevance_rank_accuracy`, :func:`pompom`;
- sanity: :func:`cascading_randomisation` (similarities :func:`spearman`, :func:`ssim`);
- settings: :data:`PRESETS` (esegeta's defaults and the original TorchEsegeta's).

Conventions: ``model`` returns ``(B, classes)`` scores (wrap segmentation models with
:class:`~esegeta_core.ScoreModel`), ``target`` is a ``(B,)`` long tensor, maps are
shaped like the inputs or ``(B, 1, *spatial)``. Every function leaves the model as it
found it and returns per-item ``(B,)`` tensors (on the CPU) in frozen dataclasses.
"""

from __future__ import annotations

from esegeta_core.evaluation._common import ExplainFn, Score

# after the metric modules: the API imports them
from esegeta_core.evaluation.api import MethodRun, evaluate
from esegeta_core.evaluation.curves import (
    AOPCResult,
    CurveResult,
    Perturbation,
    aopc,
    deletion,
    insertion,
)
from esegeta_core.evaluation.explain_fns import method_explain_fn
from esegeta_core.evaluation.faithfulness import (
    InfidelityResult,
    PerturbFn,
    SensitivityResult,
    infidelity,
    max_sensitivity,
)
from esegeta_core.evaluation.leaderboard import METRICS, Leaderboard, MethodScores
from esegeta_core.evaluation.localisation import (
    PointingAccuracy,
    PointingGameResult,
    pointing_accuracy,
    pointing_game,
    pompom,
    relevance_mass,
    relevance_rank_accuracy,
)
from esegeta_core.evaluation.presets import ESEGETA, PRESETS, TORCHESEGETA, preset
from esegeta_core.evaluation.sanity import (
    RandomisationResult,
    cascading_randomisation,
    randomisation_layers,
)
from esegeta_core.evaluation.similarity import spearman, ssim

__all__ = [
    "AOPCResult",
    "CurveResult",
    "ESEGETA",
    "ExplainFn",
    "InfidelityResult",
    "Leaderboard",
    "METRICS",
    "MethodRun",
    "MethodScores",
    "PRESETS",
    "Perturbation",
    "PerturbFn",
    "PointingAccuracy",
    "PointingGameResult",
    "RandomisationResult",
    "Score",
    "SensitivityResult",
    "TORCHESEGETA",
    "aopc",
    "cascading_randomisation",
    "deletion",
    "evaluate",
    "infidelity",
    "insertion",
    "max_sensitivity",
    "method_explain_fn",
    "pointing_accuracy",
    "pointing_game",
    "pompom",
    "preset",
    "randomisation_layers",
    "relevance_mass",
    "relevance_rank_accuracy",
    "spearman",
    "ssim",
]

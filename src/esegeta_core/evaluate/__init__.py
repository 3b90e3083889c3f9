"""Evaluation metrics for explanations: batched, 2D and 3D, on the model's device.

- :func:`evaluate`: methods x metrics for one or several models, a :class:`Leaderboard`;
  the module itself is callable, ``esegeta_core.evaluate(model, x, methods, ...)``;

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

import sys
import types
from typing import Any

from esegeta_core.evaluate._common import ExplainFn, Score

# after the metric modules: the API imports them
from esegeta_core.evaluate.api import MethodRun, evaluate
from esegeta_core.evaluate.curves import (
    AOPCResult,
    CurveResult,
    Perturbation,
    aopc,
    deletion,
    insertion,
)
from esegeta_core.evaluate.explain_fns import method_explain_fn
from esegeta_core.evaluate.faithfulness import (
    InfidelityResult,
    PerturbFn,
    SensitivityResult,
    infidelity,
    max_sensitivity,
)
from esegeta_core.evaluate.leaderboard import METRICS, Leaderboard, MethodScores
from esegeta_core.evaluate.localisation import (
    PointingAccuracy,
    PointingGameResult,
    pointing_accuracy,
    pointing_game,
    pompom,
    relevance_mass,
    relevance_rank_accuracy,
)
from esegeta_core.evaluate.presets import ESEGETA, PRESETS, TORCHESEGETA, preset
from esegeta_core.evaluate.sanity import (
    RandomisationResult,
    cascading_randomisation,
    randomisation_layers,
)
from esegeta_core.evaluate.similarity import spearman, ssim

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


class _CallableModule(types.ModuleType):
    """``esegeta_core.evaluate(...)`` is :func:`evaluate`: the package can be called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Leaderboard:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

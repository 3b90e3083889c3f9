"""Metric settings by name: esegeta's defaults and the original TorchEsegeta's.

``PRESETS[name][metric]`` is a read-only mapping of keyword arguments for the metric
function of that name, e.g. ``infidelity(model, x, t, a, **PRESETS["torchesegeta"]
["infidelity"])``. Metrics a preset does not mention use esegeta's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from esegeta_core.errors import InvalidParamsError

__all__ = ["ESEGETA", "PRESETS", "TORCHESEGETA", "preset"]

Preset = Mapping[str, Mapping[str, Any]]


def _freeze(settings: dict[str, dict[str, Any]]) -> Preset:
    return MappingProxyType({k: MappingProxyType(v) for k, v in settings.items()})


ESEGETA: Preset = _freeze(
    {
        # noise at a tenth of unit-scale inputs; normalised so maps of any scale compare
        "infidelity": {"noise_std": 0.1, "n_samples": 10, "normalize": True, "score": "raw"},
        # Captum's sensitivity_max defaults
        "max_sensitivity": {"perturbation": "uniform", "radius": 0.02, "n_samples": 10},
        # Samek et al.: uniform noise; the xML paper's cells of 4 to 32 px
        "aopc": {"grid": 8, "perturbation": "noise", "steps": None, "score": "softmax"},
        # RISE: black deletion, blurred insertion canvas
        "deletion": {"grid": 1, "steps": 100, "perturbation": "zero", "score": "softmax"},
        "insertion": {"grid": 1, "steps": 100, "baseline": "blur", "score": "softmax"},
        "pointing_game": {"tolerance": 15},  # TorchRay's benchmark
        # relative: 5% of each map's maximum. The paper's absolute 1e-6 (pompom()'s
        # default) suits its maps in [0, 1); for maps in arbitrary units it counts every
        # positive pixel, so POMPOM approaches 1 for CAMs and 0.5 for signed gradients
        "pompom": {"eps": 0.05, "relative": True},
        "cascading_randomisation": {
            "layers": "parameters",
            "init": "reset",
            "threshold": 0.5,
            "verdict_on": "spearman",
        },
    }
)
"""esegeta's defaults: the metric functions' own defaults, spelled out, except POMPOM's
threshold (relative, 5% of each map's maximum, rather than the paper's absolute 1e-6)."""

TORCHESEGETA: Preset = _freeze(
    {
        # captum.metrics.infidelity, perturbation = input - N(0, 1e-4) noise, 1 sample
        "infidelity": {"noise_std": 1e-4, "n_samples": 1, "normalize": False, "score": "raw"},
        # captum.metrics.sensitivity_max, perturbation = input - N(0, 1e-3) noise, 2 samples
        "max_sensitivity": {"perturbation": "gaussian", "radius": 1e-3, "n_samples": 2},
        # top-level children from the output backwards, U(mean - std, mean + std) each
        "cascading_randomisation": {"layers": "children", "init": "uniform"},
    }
)
"""The original TorchEsegeta's evaluation settings (its ``uncertainity.py``)."""

PRESETS: Mapping[str, Preset] = MappingProxyType({"esegeta": ESEGETA, "torchesegeta": TORCHESEGETA})


def preset(name: str, metric: str) -> dict[str, Any]:
    """Keyword arguments of preset ``name`` for ``metric`` (a fresh, editable dict)."""
    if name not in PRESETS:
        raise InvalidParamsError(
            f"Unknown metric preset {name!r}; choose one of {', '.join(map(repr, PRESETS))}."
        )
    chosen = PRESETS[name]
    if metric in chosen:
        return dict(chosen[metric])
    if metric in ESEGETA:
        return dict(ESEGETA[metric])
    return {}

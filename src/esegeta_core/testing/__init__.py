"""Test helpers shipped with the core: tiny models, a recorder of forward passes and the
plugin conformance suite."""

from esegeta_core.testing.conformance import (
    Case,
    check_coverage,
    conformance_cases,
    model_snapshot,
    parametrize_conformance,
    run_conformance,
)
from esegeta_core.testing.models import (
    PassRecorder,
    TinyClassifier,
    TinySegmenter,
    tiny_input,
    tiny_model,
)

__all__ = [
    "Case",
    "PassRecorder",
    "TinyClassifier",
    "TinySegmenter",
    "check_coverage",
    "conformance_cases",
    "model_snapshot",
    "parametrize_conformance",
    "run_conformance",
    "tiny_input",
    "tiny_model",
]

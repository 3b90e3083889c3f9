"""esegeta-lucent: feature visualization as the esegeta method
``lucent.feature_visualization`` (2D through Lucent, 3D through esegeta's own volume
parameterization).

Importing this package does not import Lucent: the method imports it when it runs.
"""

from __future__ import annotations

from esegeta_core import Explainer, hookimpl
from esegeta_lucent.method import FeatureVisualization
from esegeta_lucent.params import FeatureVisParams

METHODS: list[type[Explainer]] = [FeatureVisualization]

__all__ = ["METHODS", "FeatureVisParams", "FeatureVisualization", "esegeta_register_methods"]


@hookimpl
def esegeta_register_methods() -> list[type[Explainer]]:
    """The Lucent methods."""
    return list(METHODS)

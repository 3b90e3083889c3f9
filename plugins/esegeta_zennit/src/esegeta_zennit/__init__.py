"""esegeta-zennit: Layer-wise Relevance Propagation with zennit's composites as the
esegeta methods ``zennit.lrp`` and ``zennit.layer_lrp``, 2D and 3D.

Importing this package does not import zennit: the methods import it when they run.
"""

from __future__ import annotations

from esegeta_core import Explainer, hookimpl
from esegeta_zennit.method import METHODS, ZennitLayerLRP, ZennitLRP

__all__ = ["METHODS", "ZennitLRP", "ZennitLayerLRP", "esegeta_register_methods"]


@hookimpl
def esegeta_register_methods() -> list[type[Explainer]]:
    """The zennit LRP methods."""
    return list(METHODS)

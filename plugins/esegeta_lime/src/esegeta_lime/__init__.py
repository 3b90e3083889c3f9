"""esegeta-lime: LIME (Ribeiro et al. 2016) as the esegeta method ``lime.lime``, on 2D
superpixels and real 3D supervoxels.

Importing this package does not import LIME or scikit-image: the method imports them
when it runs.
"""

from __future__ import annotations

from esegeta_core import Explainer, hookimpl
from esegeta_lime.method import Lime

METHODS: list[type[Explainer]] = [Lime]

__all__ = ["METHODS", "Lime", "esegeta_register_methods"]


@hookimpl
def esegeta_register_methods() -> list[type[Explainer]]:
    """The LIME method."""
    return list(METHODS)

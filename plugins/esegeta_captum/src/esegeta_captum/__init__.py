"""esegeta-captum: every Captum attribution method (17 primary, 11 layer, 9 neuron) as
esegeta methods named ``captum.<snake_case>``.

Importing this package does not import Captum: methods import it when they run.
"""

from __future__ import annotations

from esegeta_captum.layer import LAYER
from esegeta_captum.neuron import NEURON
from esegeta_captum.primary import PRIMARY
from esegeta_core import Explainer, hookimpl

METHODS: list[type[Explainer]] = [*PRIMARY, *LAYER, *NEURON]

__all__ = ["METHODS", "esegeta_register_methods"]


@hookimpl
def esegeta_register_methods() -> list[type[Explainer]]:
    """The Captum methods."""
    return list(METHODS)

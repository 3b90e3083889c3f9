"""esegeta-torchray: TorchRay's attribution methods as esegeta methods named
``torchray.<snake_case>``: gradient, deconvnet, guided backprop, Grad-CAM, linear
approximation, excitation backprop (plain and contrastive), RISE and extremal
perturbation.

Importing this package does not import TorchRay: methods import it when they run.
"""

from __future__ import annotations

from esegeta_core import Explainer, hookimpl
from esegeta_torchray.backprop import BACKPROP
from esegeta_torchray.perturbation import PERTURBATION

METHODS: list[type[Explainer]] = [*BACKPROP, *PERTURBATION]

__all__ = ["METHODS", "esegeta_register_methods"]


@hookimpl
def esegeta_register_methods() -> list[type[Explainer]]:
    """The TorchRay methods."""
    return list(METHODS)

"""Making Captum's LRP work on N-D models and leaving the model exactly as found.

Captum attaches default rules only to 2D layer types (Conv2d, BatchNorm2d, AvgPool2d,
AdaptiveAvgPool2d, MaxPool*d, Linear). :func:`nd_rules` gives the 1D/3D equivalents
and linear up-sampling the same epsilon rule for the duration of one call. Captum
deletes every ``rule`` (and ``activation``) attribute of the leaf layers when it is done,
including rules the user set; this context puts the user's attributes back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

EPSILON_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm3d,
    nn.AvgPool1d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool3d,
    nn.Upsample,
)
"""Linear layers Captum has no default rule for; they get ``EpsilonRule()``."""

_ATTRS = ("rule", "activation")


@contextlib.contextmanager
def nd_rules(model: nn.Module) -> Iterator[None]:
    """Attach epsilon rules to :data:`EPSILON_LAYERS` without a rule; restore afterwards."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    saved = {
        (id(m), attr): m.__dict__[attr] for m in leaves for attr in _ATTRS if attr in m.__dict__
    }
    for module in leaves:
        if isinstance(module, EPSILON_LAYERS) and "rule" not in module.__dict__:
            module.rule = EpsilonRule()
    try:
        yield
    finally:
        for module in leaves:
            for attr in _ATTRS:
                if (id(module), attr) in saved:
                    module.__dict__[attr] = saved[(id(module), attr)]
                elif attr in module.__dict__:
                    del module.__dict__[attr]

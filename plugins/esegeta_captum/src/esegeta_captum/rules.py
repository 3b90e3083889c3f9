"""Rules for Captum's rule-based methods on the core's prepared model.

The core prepares the model for these methods (:mod:`esegeta_core.preparation`): one
module per call site, no in-place activations, functional activations and (for LRP)
skip-connection sums as modules, and a verdict per module (:func:`rule_kind`). This
module makes Captum act on that verdict, for the duration of one call:

- **Guided backprop and deconvnet** (:func:`guided_on_activations`): Captum hooks only
  ``nn.ReLU``. esegeta applies the rule at *every* activation, whatever its class:
  guided backprop keeps the positive part of the gradient after the activation's own
  local gradient (for a ReLU exactly Springenberg et al.'s rule; for GELU, SiLU,
  PReLU, Hardswish the same gate on the signal that comes back), deconvnet passes the
  positive part of the incoming gradient. A network with no activation at all is
  refused: the map would be the plain gradient.
- **DeepLift** (:func:`deeplift_on_activations`): Captum's rescale rule (multiplier =
  output difference / input difference) is defined for any element-wise activation;
  Captum lists six classes. Every activation class of the prepared model joins that
  list for the call; normalisation layers and products keep their gradient, as in
  Captum.
- **LRP** (:func:`lrp_rules`): the epsilon rule for convolutions (1D-3D, transposed),
  linear layers, batch norm, pooling and up-sampling, and for shape-only modules
  (Identity, Flatten, permutes: there it is exact); a proportional (epsilon) rule for
  the sums the core exposes (skip connections as two-input sums, like Captum's own
  ``Addition_Module``, and pixel sums); pass-through (Captum's
  ``IdentityRule``) for activations, element-wise scalings and normalisations other
  than batch norm (the identity rule of Ali et al. 2022 and AttnLRP). A leaf with
  none of these is reported by :func:`lrp_unsupported`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from esegeta_core.preparation import activation_modules, current_leaf_kind, rule_kind
from esegeta_core.sites import MergeSite

EPSILON_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._MaxPoolNd,
    nn.Upsample,
)
"""Layers that get Captum's ``EpsilonRule`` when the user has set no rule."""

PASS_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.modules.dropout._DropoutNd,
)
"""Shape-only layers relevance passes through (also when not prepared)."""

_ATTRS = ("rule", "activation")


def leaves(model: nn.Module) -> list[nn.Module]:
    """Captum LRP's layers: modules without children, in its order."""
    found: list[nn.Module] = []
    for child in model.children():
        if next(child.children(), None) is None:
            found.append(child)
        else:
            found.extend(leaves(child))
    return found


def lrp_treatment(module: nn.Module) -> str | None:
    """How Captum's LRP treats ``module``: ``"user"`` (a rule the user set), ``"native"``
    (Captum's own pass-through for ReLU, Tanh, Dropout), ``"identity"`` (relevance
    passes unchanged: activations, element-wise scalings, normalisations), ``"epsilon"``
    (the epsilon rule: layers with weights, pooling, up-sampling, sums, and shape-only
    modules, for which it is exact), or None (no rule)."""
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

    if "rule" in module.__dict__:
        return "user"
    if type(module) in SUPPORTED_NON_LINEAR_LAYERS:
        return "native"
    kind = rule_kind(module)
    if kind == "sum":
        return "epsilon"
    if kind == "activation":
        return "identity"
    if kind == "pass":
        leaf = current_leaf_kind(module)
        return "epsilon" if leaf == "structural" else "identity"
    if isinstance(module, EPSILON_LAYERS) or type(module) in SUPPORTED_LAYERS_WITH_RULES:
        return "epsilon"
    if isinstance(module, PASS_LAYERS):
        return "epsilon"
    return None


def lrp_unsupported(model: nn.Module) -> list[str]:
    """Class names of the leaf layers Captum's LRP would have no rule for."""
    return sorted({type(m).__name__ for m in leaves(model) if lrp_treatment(m) is None})


@contextlib.contextmanager
def lrp_rules(model: nn.Module) -> Iterator[None]:
    """Give every leaf its rule for one LRP call (see the module docstring); the
    user's ``rule`` attributes are kept, Captum's are removed afterwards."""
    from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule

    found = leaves(model)
    saved = {(id(m), a): m.__dict__[a] for m in found for a in _ATTRS if a in m.__dict__}
    merges = [m for m in model.modules() if isinstance(m, MergeSite)]
    for merge in merges:  # two input tensors, each converting its own gradient
        merge.stacked = False
    for module in found:
        treatment = lrp_treatment(module)
        if treatment == "epsilon":
            module.rule = EpsilonRule()
        elif treatment == "identity":
            module.rule = IdentityRule()
    try:
        yield
    finally:
        for merge in merges:
            merge.stacked = True
        for module in found:
            for attr in _ATTRS:
                if (id(module), attr) in saved:
                    module.__dict__[attr] = saved[(id(module), attr)]
                elif attr in module.__dict__:
                    del module.__dict__[attr]


@contextlib.contextmanager
def deeplift_on_activations(model: nn.Module) -> Iterator[None]:
    """Captum's DeepLift rescale rule for every activation class of the prepared model."""
    from captum.attr._core import deep_lift

    table = deep_lift.SUPPORTED_NON_LINEAR
    added = [
        cls for cls in dict.fromkeys(type(m) for m in activation_modules(model)) if cls not in table
    ]
    for cls in added:
        table[cls] = deep_lift.nonlinear
    try:
        yield
    finally:
        for cls in added:
            table.pop(cls, None)


def guided_on_activations(algorithm: Any, model: nn.Module) -> None:
    """Make a Captum guided backprop / deconvnet object hook every activation module of
    the prepared model (Captum hooks ``nn.ReLU`` only)."""
    from captum._utils.common import _register_backward_hook

    gates = {id(m) for m in activation_modules(model)}

    def register(module: nn.Module) -> None:
        if id(module) in gates:
            algorithm.backward_hooks.extend(
                _register_backward_hook(module, algorithm._backward_hook, algorithm)
            )

    algorithm._register_hooks = register

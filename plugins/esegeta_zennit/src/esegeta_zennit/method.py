"""The esegeta methods ``zennit.lrp`` and ``zennit.layer_lrp``.

Both declare ``model_rules = "relevance"``: the core prepares the model before they run
(one module per call site, functional activations and skip-connection sums as modules,
a verdict per module, attention and gating refused; see
:mod:`esegeta_core.preparation`). This module imports neither zennit nor the rule code
(:mod:`esegeta_zennit.lrp`) at import time, so method discovery stays fast.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

import torch
from torch import nn

from esegeta_core import Explainer, MethodResult, NotApplicableError, resolve_layer
from esegeta_core.preparation import ensure_prepared, layer_tap, rule_kind
from esegeta_core.tracing import LeafInfo, ModelTrace
from esegeta_zennit.params import LayerLRPParams, LRPParams
from esegeta_zennit.plan import BATCH_NORM, LINEAR_TYPES, plan_rules

BACH_2015 = "https://doi.org/10.1371/journal.pone.0130140"
MONTAVON_2019 = "https://doi.org/10.1007/978-3-030-28954-6_10"

_POOLING: tuple[type[nn.Module], ...] = (
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def has_rule(info: LeafInfo) -> bool:
    """Whether LRP has a rule for a leaf the probe saw run: a verdict of the core
    (activation, pass-through, sum), a layer zennit's composites cover (convolutions,
    linear layers, pooling, zennit's ``Sum``), a batch norm (merged, or the epsilon
    rule), or a leaf that only averages, interpolates or selects (up-sampling, custom
    pooling), where the gradient spreads relevance by weights summing to one and keeps
    its total."""
    module = info.module
    if rule_kind(module) is not None:
        return True
    if isinstance(module, (*LINEAR_TYPES, BATCH_NORM, *_POOLING)):
        return True
    if type(module).__module__ == "zennit.layer" and type(module).__name__ == "Sum":
        return True
    ops = set(info.ops) - {"structural"}
    return bool(ops) and ops <= {"convex"}


P = TypeVar("P", bound=LRPParams)
"""A zennit method's parameter model."""


class _ZennitLRP(Explainer[P]):
    """Shared by the zennit methods: preparation, requirements, the model check and the
    run (relevance at the input, or where :meth:`_read_at` says)."""

    family = "gradient"
    ranks = (2, 3)
    cost = "low"
    paper = BACH_2015
    model_rules = "relevance"
    requirements: ClassVar[tuple[str, ...]] = (
        "no multiplicative interaction between activations (attention, gating, softmax "
        "inside the network): LRP's rules define no split of relevance for a product of two "
        "activations",
        "every leaf layer that runs is a convolution (1D-3D, transposed), linear layer, "
        "batch norm, pooling or up-sampling layer, activation, normalisation, or shape-only "
        "module",
    )
    cost_note = (
        "one forward and one modified backward pass, plus a one-item probe pass that finds "
        "the batch-norm merges and the input layers"
    )

    def check_model(self, model: nn.Module, params: P, trace: ModelTrace | None) -> None:
        if trace is None:  # pragma: no cover - the core always traces rule-based methods
            return
        missing = sorted(
            {
                type(info.module).__name__
                for info in trace.leaves.values()
                if info.calls and not has_rule(info)
            }
        )
        if missing:
            raise NotApplicableError(
                f"Method {self.name!r} (plugin 'zennit') has no LRP rule for "
                f"{', '.join(missing)} layers: they are neither convolutions, linear layers, "
                "batch norms, pooling, activations, normalisations nor shape-only modules. "
                "Use a method without layer rules such as 'captum.integrated_gradients'."
            )

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: P
    ) -> MethodResult:
        from esegeta_zennit import lrp  # imports zennit: only when a method runs

        with ensure_prepared(model, inputs, "relevance", method=self.name):
            read_at = self._read_at(model, params)
            plan = plan_rules(model, inputs, merge=params.merge_batch_norm)
            if read_at is None:
                result = lrp.relevance(model, inputs, target, params, plan, self.name)
            else:
                module, use_input = read_at
                result = lrp.layer_relevance(
                    model, inputs, target, params, plan, module, use_input, self.name
                )
        return MethodResult(result, **plan.summary())

    def _read_at(self, model: nn.Module, params: P) -> tuple[nn.Module, bool] | None:
        """Where the relevance is read, on the prepared model: a module and whether at
        its first input (else its output); None: at the model's input."""
        return None


class ZennitLRP(_ZennitLRP[LRPParams]):
    """Layer-wise Relevance Propagation with a zennit composite (Bach et al. 2015).

    Relevance starts as the target class's score and flows back layer by layer with the
    composite's rules (Montavon et al. 2019: z-plus, alpha-beta, gamma or epsilon at
    convolutions, epsilon at linear layers, flat or box at the input layer), computed by
    zennit's Gradient attributor. The core's verdicts come first: activations, shape-only
    modules and normalisations pass relevance through, sums (skip connections) split it
    in proportion. Batch norms are merged into the convolution or linear layer that
    directly produces their input, found by a probe pass (never by declaration order);
    pre-activation batch norms (DenseNet) get the epsilon rule. Attention and gating are
    refused.
    """

    name = "zennit.lrp"


class ZennitLayerLRP(_ZennitLRP[LayerLRPParams]):
    """Layer-wise Relevance Propagation relevance at a layer's output, with a zennit
    composite.

    The rules of zennit.lrp, from the target score down to the layer; the relevance is
    read at the core's tap around the layer (a copy of its output), so blocks and
    layers inside containers work too.
    """

    name = "zennit.layer_lrp"
    family = "layer"
    output = "layer"
    needs_layer = True

    def _read_at(self, model: nn.Module, params: LayerLRPParams) -> tuple[nn.Module, bool]:
        """The core's tap around the layer when it has one (its input or output copy),
        else the layer itself."""
        layer = resolve_layer(model, params.layer, method=self.name)
        tap = layer_tap(model, layer)
        if tap is None:
            return layer, params.attribute_to_layer_input
        return (tap.before if params.attribute_to_layer_input else tap.output_module), False


METHODS: list[type[Explainer]] = [ZennitLRP, ZennitLayerLRP]

__all__ = ["METHODS", "ZennitLRP", "ZennitLayerLRP", "has_rule"]

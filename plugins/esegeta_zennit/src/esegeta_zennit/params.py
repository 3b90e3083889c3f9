"""Parameters of the zennit methods: a named composite and the knobs of its rules.

Every knob is checked against the chosen composite: the box rule's bounds and the gamma
rule's ``gamma`` only exist in ``epsilon_gamma_box``, and giving them with another
composite is an error, never a value accepted and ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from esegeta_core import LayerPath, MethodParams
from esegeta_core.toolkit import TensorParam

CompositeName = Literal[
    "epsilon_plus_flat",
    "epsilon_plus",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
]
"""zennit's LRP composites (Montavon et al. 2019), by their registered names."""

COMPOSITE_RULES: dict[str, str] = {
    "epsilon_plus_flat": "flat rule at the input layer, z-plus at convolutions, epsilon at "
    "linear layers",
    "epsilon_plus": "z-plus at convolutions, epsilon at linear layers",
    "epsilon_gamma_box": "box (z^B) rule at the input convolution, gamma at the other "
    "convolutions, epsilon at linear layers",
    "epsilon_alpha2_beta1": "alpha=2, beta=1 at convolutions, epsilon at linear layers",
    "epsilon_alpha2_beta1_flat": "flat rule at the input layer, alpha=2, beta=1 at the other "
    "convolutions, epsilon at linear layers",
}

BOX = "epsilon_gamma_box"

Bound = float | TensorParam | None
"""A box-rule bound: a number, a tensor broadcastable to the inputs, or None."""

_COMPOSITE_DOC = (
    "LRP composite (which rule each layer gets): "
    + "; ".join(f"'{name}': {rules}" for name, rules in COMPOSITE_RULES.items())
    + (
        ". In every composite activations, shape-only modules and normalisations other than "
        "batch norm pass relevance through, sums (skip connections, average pooling) split it "
        "in proportion to their terms, and batch norms are merged into the convolution or "
        "linear layer that produces their input."
    )
)


class LRPParams(MethodParams):
    """The composite and its rules' parameters (``zennit.lrp``)."""

    composite: CompositeName = Field("epsilon_plus_flat", description=_COMPOSITE_DOC)
    epsilon: float = Field(
        1e-6,
        gt=0.0,
        description="Epsilon of the epsilon rule (linear layers, and batch norms that cannot "
        "be merged): added to each denominator with its sign. Larger values absorb weak or "
        "contradictory relevance; a tiny value approaches LRP-0.",
    )
    stabilizer: float = Field(
        1e-6,
        gt=0.0,
        description="Small value added to the denominators of the other rules (z-plus, "
        "alpha-beta, gamma, flat, box, and the proportional split at sums and average "
        "pooling) only to avoid division by zero.",
    )
    gamma: float = Field(
        0.25,
        ge=0.0,
        description="Gamma of the gamma rule: how much positive contributions are favoured "
        "(0 is LRP-0; large values approach z-plus). Only with composite='epsilon_gamma_box'.",
    )
    low: Bound = Field(
        None,
        description="Lowest possible input value for the box rule at the input layer: a "
        "number, or a tensor broadcastable to the input batch (per channel: shaped (1, C, 1, "
        "1) or (1, C, 1, 1, 1)). None: each item's smallest value. Only with "
        "composite='epsilon_gamma_box'.",
    )
    high: Bound = Field(
        None,
        description="Highest possible input value for the box rule at the input layer (as "
        "'low'). None: each item's largest value. Only with composite='epsilon_gamma_box'.",
    )
    merge_batch_norm: bool = Field(
        True,
        description="Merge each batch norm into the convolution or linear layer whose output "
        "is its input (found by a probe pass), as zennit's canonizers do. Batch norms with "
        "any other input (pre-activation orders such as DenseNet's norm -> relu -> conv) are "
        "never merged: they get the epsilon rule. False: every batch norm gets the epsilon "
        "rule.",
    )
    ignore_bias: bool = Field(
        False,
        description="Leave biases out of the rules' contributions (zennit's "
        "zero_params=['bias']); the forward pass keeps them.",
    )

    @model_validator(mode="after")
    def _check_composite(self) -> LRPParams:
        self.only_with(
            ["gamma", "low", "high"],
            self.composite == BOX,
            f"composite={BOX!r} (composite is {self.composite!r})",
        )
        if (
            isinstance(self.low, float)
            and isinstance(self.high, float)
            and not self.low < self.high
        ):
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self

    def zero_params(self) -> list[str] | None:
        """zennit's ``zero_params`` for the chosen ``ignore_bias``."""
        return ["bias"] if self.ignore_bias else None


class LayerLRPParams(LRPParams):
    """The composite, its parameters and the layer whose relevance is read
    (``zennit.layer_lrp``)."""

    layer: LayerPath = Field(description="Dotted path of the layer, such as 'layer4.1.conv2'.")
    attribute_to_layer_input: bool = Field(
        False, description="Relevance at the layer's input instead of its output."
    )


__all__ = ["BOX", "COMPOSITE_RULES", "CompositeName", "LRPParams", "LayerLRPParams"]

"""The xML losses, for 2D and 3D explanations.

Rio-Torto, Fernandes & Teixeira, "Understanding the decisions of CNNs: an in-model
approach", Pattern Recognition Letters 133 (2020), https://doi.org/10.1016/j.patrec.2020.04.004.

For one explanation ``z`` (``(1, *spatial)``, values in [0, 1)):

- sparsity: ``mean |z|`` (an explanation budget: the share of the input it may keep);
- total variation (contiguity): for each spatial axis, the mean absolute difference
  between neighbours along it, summed over the axes (rows and columns in 2D; depth too
  in 3D);
- unsupervised: ``beta * sparsity + (1 - beta) * total variation``;
- weak mask term: ``|sum((1 - m) z) / (sum(1 - m) + eps)|`` with ``m`` a weak mask of the
  object (bounding boxes): the mean explanation outside the object;
- hybrid: ``unsupervised + gamma * weak mask term``;
- joint: ``alpha * cross-entropy + (1 - alpha) * explanation loss``.

Per-item losses are averaged over the batch (``reduction="mean"``) or summed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from esegeta_core.errors import InvalidInputError, InvalidParamsError

EPS = 1e-6
"""Added to the weak-mask denominator (a mask covering everything)."""

Reduction = Literal["mean", "sum", "none"]
LossKind = Literal["unsupervised", "hybrid"]


def _check(z: torch.Tensor, who: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor) or z.ndim < 3 or z.shape[1] != 1:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise InvalidInputError(
            f"{who}: explanations must be shaped (B, 1, *spatial), got {shape}."
        )
    return z


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise InvalidParamsError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _check_weight(name: str, value: float, upper: float | None = 1.0) -> None:
    if not value >= 0.0 or (upper is not None and value > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise InvalidParamsError(f"xML loss: {name} must be in {bound}, got {value}.")


def sparsity_loss(z: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """``mean |z|`` per item (the penalised l1 norm), reduced over the batch."""
    z = _check(z, "sparsity_loss")
    return _reduce(z.abs().flatten(1).mean(1), reduction)


def total_variation_loss(z: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Per item, the sum over spatial axes of the mean ``|z[i+1] - z[i]|`` along the axis."""
    z = _check(z, "total_variation_loss")
    total = z.new_zeros(z.shape[0])
    for axis in range(2, z.ndim):
        if z.shape[axis] > 1:
            total = total + z.diff(dim=axis).abs().flatten(1).mean(1)
    return _reduce(total, reduction)


def weak_mask_loss(
    z: torch.Tensor, mask: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Per item ``|sum((1 - m) z) / (sum(1 - m) + eps)|``: the explanation outside the
    weak mask ``m`` (1 on the object, e.g. its bounding box; 0 elsewhere)."""
    z = _check(z, "weak_mask_loss")
    m = torch.as_tensor(mask, device=z.device).to(z.dtype)
    if m.ndim == z.ndim - 1:
        m = m.unsqueeze(1)
    if tuple(m.shape) != tuple(z.shape):
        raise InvalidInputError(
            f"weak_mask_loss: the weak masks must be shaped like the explanations "
            f"{tuple(z.shape)} (or without the channel), got {tuple(mask.shape)}."
        )
    outside = 1 - m
    ratio = (outside * z).flatten(1).sum(1) / (outside.flatten(1).sum(1) + EPS)
    return _reduce(ratio.abs(), reduction)


def unsupervised_loss(z: torch.Tensor, beta: float, reduction: Reduction = "mean") -> torch.Tensor:
    """``beta * sparsity + (1 - beta) * total variation``."""
    _check_weight("beta", beta)
    per_item = beta * sparsity_loss(z, "none") + (1 - beta) * total_variation_loss(z, "none")
    return _reduce(per_item, reduction)


def hybrid_loss(
    z: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    gamma: float,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """``unsupervised + gamma * weak mask term``."""
    _check_weight("gamma", gamma, upper=None)
    per_item = unsupervised_loss(z, beta, "none") + gamma * weak_mask_loss(z, mask, "none")
    return _reduce(per_item, reduction)


@dataclass(frozen=True)
class LossTerms:
    """Every term of the joint loss for one batch (each reduced over the batch).

    ``total = alpha * classification + (1 - alpha) * explanation`` and
    ``explanation = beta * sparsity + (1 - beta) * total_variation + gamma * weak_mask``
    (``weak_mask`` is ``None`` for the unsupervised loss).
    """

    total: torch.Tensor
    classification: torch.Tensor
    explanation: torch.Tensor
    sparsity: torch.Tensor
    total_variation: torch.Tensor
    weak_mask: torch.Tensor | None

    def as_floats(self) -> dict[str, float]:
        """The terms as Python floats (for metrics)."""
        out = {
            "loss": float(self.total.detach()),
            "classification": float(self.classification.detach()),
            "explanation": float(self.explanation.detach()),
            "sparsity": float(self.sparsity.detach()),
            "total_variation": float(self.total_variation.detach()),
        }
        if self.weak_mask is not None:
            out["weak_mask"] = float(self.weak_mask.detach())
        return out


def joint_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    z: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    kind: LossKind = "unsupervised",
    gamma: float = 1.0,
    mask: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> LossTerms:
    """``alpha * cross-entropy + (1 - alpha) * explanation loss`` with every term."""
    _check_weight("alpha", alpha)
    _check_weight("beta", beta)
    _check_weight("gamma", gamma, upper=None)
    if kind not in ("unsupervised", "hybrid"):
        raise InvalidParamsError(f"xML loss kind must be 'unsupervised' or 'hybrid', got {kind!r}.")
    if kind == "hybrid" and mask is None:
        raise InvalidInputError(
            "The hybrid xML loss needs weak masks (e.g. bounding boxes) for every item: "
            "give the dataset items as (image, label, mask), or use kind='unsupervised'."
        )
    ce = F.cross_entropy(logits, labels, weight=class_weights, reduction="none")
    sparsity = sparsity_loss(z, "none")
    tv = total_variation_loss(z, "none")
    expl = beta * sparsity + (1 - beta) * tv
    weak = None
    if kind == "hybrid":
        weak = weak_mask_loss(z, mask, "none")  # type: ignore[arg-type]
        expl = expl + gamma * weak
    total = alpha * ce + (1 - alpha) * expl
    return LossTerms(
        total=_reduce(total, reduction),
        classification=_reduce(ce, reduction),
        explanation=_reduce(expl, reduction),
        sparsity=_reduce(sparsity, reduction),
        total_variation=_reduce(tv, reduction),
        weak_mask=None if weak is None else _reduce(weak, reduction),
    )

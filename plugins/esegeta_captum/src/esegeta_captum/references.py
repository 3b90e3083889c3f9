"""Reference distributions of the SHAP-style methods: a list of baselines stacked along
the batch dimension, and how many references that gives (for cost estimates)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from esegeta_core.toolkit import BaselineChoice, make_baseline


def _item_independent(choice: BaselineChoice, ndim: int) -> bool:
    """Whether a baseline choice gives one reference for the whole batch."""
    return (
        (isinstance(choice, str) and choice == "zeros")
        or isinstance(choice, (int, float))
        or (isinstance(choice, torch.Tensor) and (choice.ndim < ndim or choice.shape[0] == 1))
    )


def baseline_distribution(
    choices: Iterable[BaselineChoice], inputs: torch.Tensor, sigma: float, method: str
) -> torch.Tensor:
    """The references of every choice stacked along the batch dimension.

    Item-independent choices (zeros, a number, a tensor without a batch dimension) add
    one reference; item-dependent ones (mean, blurred, uniform, gaussian, a tensor with
    a batch dimension) add one reference per batch item. Captum's SHAP methods average
    over the whole set for every item.
    """
    parts = []
    for choice in choices:
        full = make_baseline(choice, inputs, sigma=sigma, method=method)
        parts.append(full[:1] if _item_independent(choice, inputs.ndim) else full)
    return torch.cat(parts)


def reference_count(choices: Iterable[BaselineChoice], shape: tuple[int, ...]) -> int:
    """How many references :func:`baseline_distribution` stacks for inputs of
    ``shape``, without building them."""
    return sum(1 if _item_independent(c, len(shape)) else shape[0] for c in choices)

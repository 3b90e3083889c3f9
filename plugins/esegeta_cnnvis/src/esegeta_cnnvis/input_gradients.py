"""The input gradient of the target score, batched.

Each item's own target class is selected (:func:`~esegeta_core.toolkit.gather_target`),
so one backward pass explains a whole batch with a different class per item: items do
not interact because the model's scores of item ``i`` depend on input ``i`` only (eval
mode).
"""

from __future__ import annotations

import torch
from torch import nn

from esegeta_core.toolkit import gather_target


def grad_leaf(x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """The tensor to differentiate with respect to.

    With ``create_graph`` an input that already carries a graph is used as is (the
    attribution then stays attached to whatever produced it); otherwise a fresh leaf.
    """
    if create_graph and x.requires_grad:
        return x
    return x.detach().requires_grad_(True)


def input_gradient(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, create_graph: bool = False
) -> torch.Tensor:
    """d score[target] / d input for every item of ``x`` in one backward pass."""
    xg = grad_leaf(x, create_graph)
    with torch.enable_grad():
        score = gather_target(model(xg), target).sum()
        (grad,) = torch.autograd.grad(score, xg, create_graph=create_graph)
    return grad

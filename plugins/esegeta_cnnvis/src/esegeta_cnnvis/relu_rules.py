"""Modified ReLU backward rules (guided backprop, deconvnet), N-D and batched.

:func:`relu_rule` makes every ``nn.ReLU`` of the user's model pass gradients back by
another rule for the duration of a ``with`` block, through forward hooks that route
the output via a custom autograd function; the hooks are always removed. The rules
are written with differentiable torch ops, so ``create_graph=True`` works through them.

- ``"guided"`` (Springenberg et al., https://arxiv.org/abs/1412.6806): the gradient is
  passed where both the forward input and the incoming gradient are positive. Done with
  a gradient hook on each ReLU's output that keeps the positive part of the incoming
  gradient; the ReLU's own backward then masks by the positive inputs. No extra forward
  work, and in-place ReLUs stay in place.
- ``"deconv"`` (Zeiler & Fergus, https://arxiv.org/abs/1311.2901): the positive part of
  the incoming gradient, whatever the forward input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from esegeta_core import unwrap

Rule = Literal["guided", "deconv"]


class _DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def _positive(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


def _guided_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
    if isinstance(output, torch.Tensor) and output.requires_grad:
        output.register_hook(_positive)


def _deconv_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
    return _DeconvReLU.apply(inputs[0])


@contextlib.contextmanager
def relu_rule(model: nn.Module, rule: Rule) -> Iterator[int]:
    """Within the block, every ``nn.ReLU`` of ``model`` back-propagates by ``rule``.

    Yields the number of ReLU modules changed (0 means the model uses functional ReLUs,
    which this cannot reach: callers should say so).
    """
    relus = [m for m in unwrap(model).modules() if isinstance(m, nn.ReLU)]
    hook = _guided_hook if rule == "guided" else _deconv_hook
    # deconvnet replaces the ReLU's backward: an in-place ReLU hands the hook its output
    # as "input", so its own backward would still mask the gradient: run them out of place
    inplace = [m for m in relus if m.inplace] if rule == "deconv" else []
    for m in inplace:
        m.inplace = False
    handles = [m.register_forward_hook(hook) for m in relus]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True

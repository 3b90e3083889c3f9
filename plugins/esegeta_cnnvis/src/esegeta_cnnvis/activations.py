"""Capturing a layer's activations (and the target score's gradient w.r.t. them).

The CAM family needs, for one or several layers of the user's model, the output of
that layer on the input batch and, for gradient CAMs, ``d score[target] / d output``.
:func:`capture` does both with one forward and one ``torch.autograd.grad`` call (no
``.backward()``, so no parameter's ``.grad`` is touched), keeping everything on the
model's device. The layers' outputs are recorded with the toolkit's
:func:`~esegeta_core.toolkit.recording`, which always removes its hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from esegeta_core import InvalidParamsError, MethodFailedError
from esegeta_core.toolkit import gather_target, recording


@dataclass(frozen=True)
class Captured:
    """What one forward (and backward) recorded: per layer, in the order asked."""

    scores: torch.Tensor
    """The model's ``(B, classes)`` scores."""
    activations: list[torch.Tensor]
    """Each layer's output, ``(B, K, *spatial)``."""
    gradients: list[torch.Tensor] | None
    """``d sum_b scores[b, target_b] / d activation`` per layer, or None if not asked."""


def _single_output(
    record: list[object], path: str, inputs: torch.Tensor, method: str
) -> torch.Tensor:
    if len(record) != 1:
        raise InvalidParamsError(
            f"Method {method!r}: layer {path!r} ran {len(record)} times in one forward pass; "
            "a CAM needs a layer that runs exactly once. Choose another layer."
        )
    out = record[0]
    if not isinstance(out, torch.Tensor) or out.ndim != inputs.ndim or out.shape[0] != len(inputs):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidParamsError(
            f"Method {method!r}: layer {path!r} outputs {shape}, but a CAM needs a "
            f"(B, channels, *spatial) tensor like the input {tuple(inputs.shape)}. Choose a "
            "convolutional layer (or a block ending in one)."
        )
    return out


def capture(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | None,
    modules: Sequence[nn.Module],
    paths: Sequence[str],
    *,
    method: str,
    gradients: bool = False,
    create_graph: bool = False,
) -> Captured:
    """Run ``model`` once on ``inputs`` and record ``modules``' outputs.

    With ``gradients``, also the gradient of the summed target scores w.r.t. each
    output (items are independent, so each item gets its own target's gradient);
    ``target`` is read only then.
    With ``create_graph`` the activations and gradients stay on the autograd graph so
    that what is computed from them can be differentiated again; otherwise they are
    detached.
    """
    track = gradients or create_graph
    x = inputs.detach().requires_grad_(track)
    with torch.set_grad_enabled(track), recording(modules) as records:
        scores = model(x)
    acts = [_single_output(r, p, inputs, method) for r, p in zip(records, paths)]
    grads: list[torch.Tensor] | None = None
    if gradients:
        if target is None:  # a plugin bug: the core always gives gradient CAMs a target
            raise MethodFailedError(
                f"Method {method!r}: the gradients of the layers need the target; this is "
                "a bug in the plugin."
            )
        for act, path in zip(acts, paths):
            if not act.requires_grad:
                raise MethodFailedError(
                    f"Method {method!r}: the output of layer {path!r} is not on the autograd "
                    "graph (the model detaches it or runs it under no_grad), so its gradient "
                    "cannot be computed."
                )
        try:
            grads = list(
                torch.autograd.grad(
                    gather_target(scores, target).sum(), acts, create_graph=create_graph
                )
            )
        except RuntimeError as exc:
            if "not have been used in the graph" not in str(exc):
                raise
            raise InvalidParamsError(
                f"Method {method!r}: the target score does not depend on layer(s) "
                f"{list(paths)}; choose a layer on the path to the output."
            ) from exc
    if not create_graph:
        acts = [a.detach() for a in acts]
        scores = scores.detach()
    return Captured(scores=scores, activations=acts, gradients=grads)

"""The result of one :func:`esegeta_core.explain` call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from esegeta_core.errors import InvalidInputError
from esegeta_core.explainer import MethodParams, Output
from esegeta_core.toolkit import interpolation_mode

Reduce = Literal["sum", "abs", "l2", "mean", "max_abs"]


@dataclass
class Explanation:
    """What a method produced for a batch, with everything needed to interpret it.

    ``attributions`` is exactly what the method returned (on the model's device);
    ``target`` the ``(B,)`` classes explained; ``params`` the validated parameters;
    ``seconds`` the wall time of the method itself; ``extras`` method-specific outputs
    (for example LIME's segment masks).
    """

    attributions: torch.Tensor
    method: str
    plugin: str
    target: torch.Tensor
    params: MethodParams
    seconds: float
    input_shape: tuple[int, ...]
    output: Output = "input"
    extras: dict[str, Any] = field(default_factory=dict)

    def saliency(self, reduce: Reduce = "sum") -> torch.Tensor:
        """A ``(B, 1, *spatial)`` map at input resolution.

        Channels are reduced with ``reduce`` (``"sum"`` keeps the sign; ``"abs"`` sums
        magnitudes; ``"l2"`` is the channel norm; ``"max_abs"`` the largest magnitude),
        and maps at a layer's resolution are up-sampled bilinearly (2D) or trilinearly
        (3D) to the input's spatial size.
        """
        if self.output == "image":
            raise InvalidInputError(
                f"Method {self.method!r} (plugin {self.plugin!r}) is a visualization: it "
                "synthesises images rather than attributing an input, so it has no "
                "saliency map. Use .attributions to get the images."
            )
        a = self.attributions.detach().float()
        rank = len(self.input_shape) - 2
        if a.ndim == rank + 1:
            a = a.unsqueeze(1)
        if a.ndim != rank + 2:
            raise InvalidInputError(
                f"Method {self.method!r} returned attributions shaped {tuple(a.shape)}, "
                f"which have no {rank}-D spatial layout to map onto the input "
                f"{self.input_shape}. Pick a convolutional layer instead."
            )
        if reduce == "sum":
            a = a.sum(1, keepdim=True)
        elif reduce == "abs":
            a = a.abs().sum(1, keepdim=True)
        elif reduce == "l2":
            a = a.pow(2).sum(1, keepdim=True).sqrt()
        elif reduce == "mean":
            a = a.mean(1, keepdim=True)
        elif reduce == "max_abs":
            a = a.abs().amax(1, keepdim=True)
        else:
            raise InvalidInputError(
                f"saliency(reduce={reduce!r}): choose sum, abs, l2, mean or max_abs."
            )
        size = tuple(self.input_shape[2:])
        if tuple(a.shape[2:]) != size:
            a = F.interpolate(a, size=size, mode=interpolation_mode(rank), align_corners=False)
        return a

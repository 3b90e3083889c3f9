"""One filter (channel) of a layer's output: checking the index, its mean activation.

The layer visualizations explain or amplify one channel of a layer; the layer's output
itself comes from :func:`esegeta_core.toolkit.layer_output`.
"""

from __future__ import annotations

import torch

from esegeta_core import InvalidParamsError


def check_filter(activation: torch.Tensor, index: int | None, path: str, method: str) -> None:
    """A clear error when ``index`` is not a channel of the layer's output."""
    if index is None:
        return
    channels = activation.shape[1] if activation.ndim >= 2 else 0
    if not 0 <= index < channels:
        raise InvalidParamsError(
            f"Method {method!r}: filter {index} does not exist at layer {path!r}, which has "
            f"{channels} channels (output {tuple(activation.shape)}); choose 0..{channels - 1}."
        )


def filter_mean(act: torch.Tensor, index: int | None) -> torch.Tensor:
    """``(B,)``: mean activation of a filter, or mean squared activation of the layer."""
    if index is None:
        return act.pow(2).flatten(1).mean(1)
    return act[:, index].flatten(1).mean(1)

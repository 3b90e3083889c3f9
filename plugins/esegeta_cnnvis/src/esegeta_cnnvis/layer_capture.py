"""A layer's output for a batch, stopping the forward pass right after that layer.

Visualizations only need the activations of one layer, so the rest of the network is
skipped: the forward hook raises a private exception once the output is recorded.
The hook is always removed.
"""

from __future__ import annotations

import torch
from torch import nn

from esegeta_core import InvalidParamsError, resolve_layer


class _LayerReachedError(Exception):
    """Raised by the hook to end the forward pass at the layer."""


def layer_output(model: nn.Module, path: str, x: torch.Tensor, *, method: str) -> torch.Tensor:
    """The output of layer ``path`` of ``model`` on ``x`` (differentiable)."""
    layer = resolve_layer(model, path, method=method)
    store: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        if not isinstance(output, torch.Tensor):
            raise InvalidParamsError(
                f"Method {method!r}: layer {path!r} returns {type(output).__name__}, not a "
                "tensor; pick a layer that outputs a feature map."
            )
        store.append(output)
        raise _LayerReachedError

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _LayerReachedError:
        pass
    finally:
        handle.remove()
    if not store:
        raise InvalidParamsError(
            f"Method {method!r}: layer {path!r} is not used in the model's forward pass."
        )
    return store[0]


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

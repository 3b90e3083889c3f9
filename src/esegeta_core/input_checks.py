"""The checks of a call's model and input batch, shared by ``explain()`` and every metric.

Both refuse the same bad models and inputs with the same advice; only the caller's name
differs (``"Method 'captum.saliency'"``, ``"Metric 'deletion'"``), so it is an argument.
"""

from __future__ import annotations

import torch
from torch import nn

from esegeta_core.errors import InvalidInputError, InvalidModelError


def check_model(model: object, who: str) -> nn.Module:
    """``model``, once it is a ``torch.nn.Module`` whose parameters and buffers hold
    values (none on the meta device); raise
    :class:`~esegeta_core.errors.InvalidModelError` (its message starting with ``who``)
    otherwise."""
    if not isinstance(model, nn.Module):
        raise InvalidModelError(
            f"{who}: the model must be a torch.nn.Module, got {type(model).__name__}. "
            "Wrap plain functions in a Module."
        )
    # the modules' own tables: the names are built only for a refusal (named_parameters
    # builds every name, a third of a millisecond for a ResNet-50, on every call)
    tables = [(m._parameters, m._buffers) for m in model.modules()]
    if not any(t is not None and t.is_meta for p, b in tables for t in (*p.values(), *b.values())):
        return model
    for kind, named in (("parameter", model.named_parameters), ("buffer", model.named_buffers)):
        meta = next((name for name, t in named() if t.is_meta), None)
        if meta is not None:
            raise InvalidModelError(
                f"{who}: the model's {kind} {meta!r} is on the meta device: it has a shape "
                "but no values, so the model cannot run. Materialise the weights first, e.g. "
                "model.to_empty(device='cpu') then model.load_state_dict(state_dict)."
            )
    return model


def check_batch(inputs: object, who: str) -> torch.Tensor:
    """``inputs`` detached, once it is a finite, dense, floating-point batch shaped
    ``(B, C, H, W)`` or ``(B, C, D, H, W)`` with data; raise
    :class:`~esegeta_core.errors.InvalidInputError` (its message starting with ``who``)
    otherwise."""
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputError(
            f"{who}: inputs must be a torch.Tensor, got {type(inputs).__name__}. "
            "Convert with torch.as_tensor(...)."
        )
    _check_shape(inputs, who)
    _check_storage(inputs, who)
    if not bool(torch.isfinite(inputs).all()):
        raise InvalidInputError(
            f"{who}: inputs contain NaN or infinite values. Clean them first "
            "(for example torch.nan_to_num)."
        )
    return inputs.detach()


def _check_shape(inputs: torch.Tensor, who: str) -> None:
    """A floating batch of images or volumes, with at least one element."""
    if inputs.ndim not in (4, 5):
        hint = " Add the batch dimension with inputs.unsqueeze(0)." if inputs.ndim == 3 else ""
        raise InvalidInputError(
            f"{who}: inputs must be shaped (B, C, H, W) or (B, C, D, H, W), got "
            f"{tuple(inputs.shape)}.{hint}"
        )
    if not inputs.is_floating_point():
        raise InvalidInputError(
            f"{who}: inputs must be floating point, got {inputs.dtype}. "
            "Convert with inputs.float()."
        )
    if inputs.numel() == 0:
        raise InvalidInputError(
            f"{who}: inputs are empty {tuple(inputs.shape)}: every dimension needs at "
            "least one element (a batch of at least one item)."
        )


def _check_storage(inputs: torch.Tensor, who: str) -> None:
    """Values that can be read: not on the meta device, a dense layout."""
    if inputs.is_meta:
        raise InvalidInputError(
            f"{who}: inputs {tuple(inputs.shape)} are on the meta device: a shape without "
            "values. Pass a tensor with data, on the CPU or a GPU."
        )
    if inputs.layout != torch.strided:
        raise InvalidInputError(
            f"{who}: inputs must be a dense tensor, got layout {inputs.layout}. "
            "Convert with inputs.to_dense()."
        )

"""Sizes and indices in Captum's forms: occlusion's ``(channels, *spatial)`` windows and
the full index of the neuron a ``neuron_selector`` names in a layer's output."""

from __future__ import annotations

import torch
from torch import nn

from esegeta_core import InvalidParamsError
from esegeta_core.feature_masks import as_size
from esegeta_core.toolkit import Call, layer_output

Size = int | tuple[int, ...]
"""A spatial size: one int for every spatial dimension, or one int per dimension."""


def window_tuple(value: Size, call: Call, what: str) -> tuple[int, ...]:
    """A spatial size as Captum's ``(C, *spatial)`` tuple: the channel axis is covered
    whole, and each size is clipped to the input's extent. A tuple with a channel entry
    first (Captum's own form, such as ``(1, 15, 15)``) keeps that entry."""
    return window_sizes(value, tuple(call.inputs.shape), what, call.method)


def window_sizes(value: Size, shape: tuple[int, ...], what: str, method: str) -> tuple[int, ...]:
    """:func:`window_tuple` for inputs of ``shape`` (cost estimates use it before a call)."""
    channels, rank = shape[1], len(shape) - 2
    if isinstance(value, tuple) and len(value) == rank + 1:
        if not 1 <= value[0] <= channels:
            raise InvalidParamsError(
                f"Method {method!r}: {what}={value} has {len(value)} entries for a "
                f"{rank}D input: read as Captum's (channels, *spatial) form, its channel "
                f"extent {value[0]} must be between 1 and the input's {channels} channels. "
                f"Give {rank} spatial sizes, or a channel extent that fits."
            )
        channels, value = value[0], value[1:]
    sizes = as_size(value, rank, what, method)
    spatial = shape[2:]
    return (channels, *(min(s, n) for s, n in zip(sizes, spatial, strict=True)))


def layer_shape(call: Call, module: nn.Module, use_input: bool) -> tuple[int, ...]:
    """The shape (without batch) of ``module``'s output (or first input; the first tensor
    of a tuple) on the call's first item; the rest of the forward pass is skipped."""
    return module_shape(call.model, module, call.inputs, use_input, call.method)


def module_shape(
    model: nn.Module, module: nn.Module, inputs: torch.Tensor, use_input: bool, method: str
) -> tuple[int, ...]:
    """:func:`layer_shape` for ``model`` on ``inputs`` (one pass of the first item, up to
    ``module``)."""
    with torch.no_grad():
        value = layer_output(
            model, module, inputs[:1], method=method, inputs=use_input, first_of_tuple=True
        )
    return tuple(value.shape[1:])


def full_neuron_index(
    selector: tuple[int, ...], shape: tuple[int, ...], method: str
) -> tuple[int, ...]:
    """Complete ``selector`` to an index into ``shape`` (no batch): missing trailing
    dimensions take their centre, so ``(c,)`` is channel ``c`` at the spatial centre in
    2D and 3D alike. Negative entries count from the end."""
    if len(selector) > len(shape):
        raise InvalidParamsError(
            f"Method {method!r}: neuron_selector {selector} has {len(selector)} entries but the "
            f"layer's output (without batch) is shaped {shape}."
        )
    for i, (index, size) in enumerate(zip(selector, shape, strict=False)):
        if not -size <= index < size:
            raise InvalidParamsError(
                f"Method {method!r}: neuron_selector {selector}: index {index} is out of range "
                f"for dimension {i} of size {size} (layer output shaped {shape})."
            )
    full = tuple(i % s for i, s in zip(selector, shape, strict=False))
    return full + tuple(s // 2 for s in shape[len(selector) :])

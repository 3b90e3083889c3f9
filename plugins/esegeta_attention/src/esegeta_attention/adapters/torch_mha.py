"""``torch.nn.MultiheadAttention`` (torchvision's ``VisionTransformer`` and any model
built on it).

torchvision's ``EncoderBlock`` calls ``self.self_attention(x, x, x,
need_weights=False)``, which runs ``F.scaled_dot_product_attention`` and returns no
weights. A forward pre-hook (with kwargs) asks every call for ``need_weights=True,
average_attn_weights=False`` instead, so ``F.multi_head_attention_forward`` takes its
explicit path::

    attn_output_weights = softmax(q_scaled @ k^T)           # (B * heads, L, S)
    attn_output = torch.bmm(attn_output_weights, v)
    ...
    return attn_output, attn_output_weights.view(B, heads, L, S)

The returned weights are a *view* made after the product with ``v``, so they are not
in the path from the attention to the scores; their ``_base`` (the softmax output) is.
The adapter records that base with the ``(B, heads, L, S)`` shape to view it (and its
gradient) as. A forward hook then hands the caller exactly what it asked for:
``(output, None)`` when it asked for no weights, head-averaged weights when it asked
for those. Only self-attention (query, key and value the same tensor) is read.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, ClassVar

import torch
from torch import nn

from esegeta_attention.adapters.base import (
    AttentionAdapter,
    Record,
    forward_hook,
    forward_pre_hook,
)
from esegeta_core import NotApplicableError

_NEED_WEIGHTS = 4  # positions in MultiheadAttention.forward(query, key, value, ...)
_AVERAGE = 6


class TorchMHAAdapter(AttentionAdapter):
    """``nn.MultiheadAttention``: weights requested per call, the softmax output read."""

    family: ClassVar[str] = "torch"
    reached: ClassVar[str] = (
        "need_weights=True, average_attn_weights=False forced per call by a forward "
        "pre-hook; the caller gets the output it asked for"
    )

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)

    def token_count(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> int | None:
        query = args[0] if args else kwargs.get("query")
        if not isinstance(query, torch.Tensor) or query.ndim != 3:
            return None
        return int(query.shape[1] if getattr(module, "batch_first", False) else query.shape[0])

    def enable(self, module: nn.Module, record: Record, stack: ExitStack) -> None:
        asked: list[tuple[bool, bool]] = []

        def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            args, kwargs = list(args), dict(kwargs)
            query = args[0] if args else kwargs.get("query")
            key = args[1] if len(args) > 1 else kwargs.get("key")
            value = args[2] if len(args) > 2 else kwargs.get("value")
            if not (query is key is value):
                raise NotApplicableError(
                    f"{type(mod).__name__} is called as cross-attention (query, key and value "
                    "are different tensors): attention maps over an image need "
                    "self-attention, where the tokens attend to each other."
                )
            need = _flag(args, kwargs, "need_weights", _NEED_WEIGHTS)
            average = _flag(args, kwargs, "average_attn_weights", _AVERAGE)
            asked.append((need, average))
            _set(args, kwargs, "need_weights", _NEED_WEIGHTS, True)
            _set(args, kwargs, "average_attn_weights", _AVERAGE, False)
            return tuple(args), kwargs

        def post(mod: nn.Module, args: Any, output: Any) -> Any:
            need, average = asked.pop() if asked else (False, True)
            out, weights = output
            if isinstance(weights, torch.Tensor):
                base = weights._base
                if (
                    torch.is_grad_enabled()
                    and base is not None
                    and base.numel() == weights.numel()
                    and base.is_contiguous()
                ):
                    record(base, tuple(weights.shape))
                else:
                    record(weights)
            if not need:
                return out, None
            if average and isinstance(weights, torch.Tensor):
                return out, weights.mean(dim=1)
            return out, weights

        forward_pre_hook(stack, module, pre, with_kwargs=True)
        forward_hook(stack, module, post)


def _flag(args: list[Any], kwargs: dict[str, Any], name: str, position: int) -> bool:
    if name in kwargs:
        return bool(kwargs[name])
    if len(args) > position:
        return bool(args[position])
    return True  # MultiheadAttention's default for both flags


def _set(args: list[Any], kwargs: dict[str, Any], name: str, position: int, value: bool) -> None:
    if len(args) > position:
        args[position] = value
    else:
        kwargs[name] = value


__all__ = ["TorchMHAAdapter"]

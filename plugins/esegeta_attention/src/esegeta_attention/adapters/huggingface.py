"""Hugging Face transformers models (ViT, DeiT, DINOv2, BEiT, ViT-MAE, ... in
transformers 5).

A transformers 5 model lists, in its class attribute ``_can_record_outputs``, which
module class returns the attention probabilities and at which output index
(``"attentions": ViTAttention`` means index 1; an ``OutputRecorder`` names its
``target_class``, ``index`` and optionally ``layer_name``). Those modules pick their
attention function per call from ``self.config._attn_implementation``; ``"sdpa"`` (the
default) returns no weights, ``"eager"`` runs::

    attn_weights = softmax(q @ k^T * scaling, dtype=float32).to(q.dtype)
    attn_weights = dropout(attn_weights, training=module.training)  # identity in eval
    attn_output = attn_weights @ value
    return attn_output, attn_weights

and the returned weights are the tensor multiplied with ``value``, in the autograd
graph. The adapter switches the configuration of the modules it reads to ``"eager"``
for the call (the stored value itself, ``_attn_implementation_internal``, so that
sub-configurations are left alone) and records ``output[index]`` with a forward hook;
``output_attentions`` is not needed and not touched.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, ClassVar

import torch
from torch import nn

from esegeta_attention.adapters.base import AttentionAdapter, Record, forward_hook, switch_attribute
from esegeta_core import NotApplicableError

EAGER = "eager"


class HuggingFaceAdapter(AttentionAdapter):
    """Attention modules named by a transformers model's ``_can_record_outputs``."""

    family: ClassVar[str] = "huggingface"
    reached: ClassVar[str] = (
        "config._attn_implementation switched to 'eager' for the call; the probabilities "
        "read from the output index _can_record_outputs['attentions'] names"
    )

    def __init__(self) -> None:
        self.index: dict[int, int] = {}

    def find(self, root: nn.Module) -> list[nn.Module]:
        recorders: list[tuple[type, int, str | None]] = []
        for module in root.modules():
            spec = getattr(type(module), "_can_record_outputs", None)
            if isinstance(spec, dict) and "attentions" in spec:
                recorders += _recorders(spec["attentions"])
        found = []
        for name, module in root.named_modules():
            for cls, index, layer_name in recorders:
                if isinstance(module, cls) and (layer_name is None or name.endswith(layer_name)):
                    self.index[id(module)] = index
                    found.append(module)
                    break
        return found

    def matches(self, module: nn.Module) -> bool:
        return id(module) in self.index

    def enable(self, module: nn.Module, record: Record, stack: ExitStack) -> None:
        index = self.index[id(module)]
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", EAGER) != EAGER:
            if "_attn_implementation_internal" in vars(config):
                switch_attribute(stack, config, "_attn_implementation_internal", EAGER)
            else:  # pragma: no cover - older transformers
                switch_attribute(stack, config, "_attn_implementation", EAGER)

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            weights = output[index] if isinstance(output, (tuple, list)) else None
            if not isinstance(weights, torch.Tensor):
                raise NotApplicableError(
                    f"{type(mod).__name__} returned no attention probabilities at output "
                    f"{index}, even with the eager attention implementation; it does not follow "
                    "transformers' attention interface."
                )
            record(weights)

        forward_hook(stack, module, hook)


def _recorders(value: Any) -> list[tuple[type, int, str | None]]:
    """``(class, output index, layer name)`` from one ``_can_record_outputs`` entry."""
    values = value if isinstance(value, (list, tuple)) else [value]
    found = []
    for item in values:
        if isinstance(item, type) and issubclass(item, nn.Module):
            found.append((item, 1, None))
            continue
        cls = getattr(item, "target_class", None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            index = getattr(item, "index", 1)
            found.append(
                (cls, 1 if index is None else int(index), getattr(item, "layer_name", None))
            )
    return found


__all__ = ["HuggingFaceAdapter"]

"""Output adapters: the tensor inside whatever the user's model returns.

Real models do not all return a logits tensor. torchvision's segmentation models return
``{"out": ..., "aux": ...}``, Hugging Face models return objects with ``.logits``, deep-
supervision networks return tuples or lists. :func:`select_output` finds the tensor
the methods should explain. The core's :class:`~esegeta_core.ScoreModel` applies it
inside the scoring wrapper, so every method (and every hook, patch, precision and
scheduler path) sees a tensor.

``output=None`` ("auto") reads: a tensor as it is; a mapping with a single tensor, or
its ``"logits"`` or ``"out"`` entry; the first element of a tuple or list; an object's
``.logits``. Anything else, or a mapping with several tensors and neither key, is an
error that lists what was found, so that ``output=KEY`` can be given. ``output`` may
also be a key (mapping entry or attribute), an index (tuple or list), or a callable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from esegeta_core.errors import InvalidModelError

OutputSelector = str | int | Callable[[Any], torch.Tensor] | None
"""How to find the logits in a model's output: None (auto), a key, an index or a callable."""

_PREFERRED_KEYS = ("logits", "out")


def describe_output(out: Any, depth: int = 0) -> str:
    """A short description of a model output: types, keys and tensor shapes."""
    if isinstance(out, torch.Tensor):
        return f"tensor{tuple(out.shape)}"
    if depth > 2:
        return type(out).__name__
    if isinstance(out, Mapping):
        inner = ", ".join(f"{k!r}: {describe_output(v, depth + 1)}" for k, v in out.items())
        return f"{type(out).__name__}({{{inner}}})"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(describe_output(v, depth + 1) for v in out)
        return f"{type(out).__name__}[{inner}]"
    fields = (
        {k: v for k, v in vars(out).items() if not k.startswith("_")}
        if hasattr(out, "__dict__")
        else {}
    )
    if fields:
        inner = ", ".join(f"{k}: {describe_output(v, depth + 1)}" for k, v in fields.items())
        return f"{type(out).__name__}({inner})"
    return type(out).__name__


def select_output(out: Any, selector: OutputSelector = None, *, method: str = "") -> torch.Tensor:
    """The tensor in ``out`` that ``selector`` names (see the module docstring)."""
    if selector is None:
        found = _auto(out)
        if found is None:
            raise InvalidModelError(
                f"{_who(method)}cannot tell which part of the model's output to explain: it "
                f"returned {describe_output(out)}. Pass output=KEY (a dict key or attribute), "
                "output=INDEX (a tuple position) or output=callable(out) -> tensor."
            )
        return found
    if callable(selector) and not isinstance(selector, (str, int)):
        value = selector(out)
    elif isinstance(selector, str):
        if isinstance(out, Mapping) and selector in out:
            value = out[selector]
        elif not isinstance(out, Mapping) and hasattr(out, selector):
            value = getattr(out, selector)
        else:
            raise InvalidModelError(
                f"{_who(method)}output={selector!r} is not in the model's output "
                f"{describe_output(out)}."
            )
    elif isinstance(selector, int) and not isinstance(selector, bool):
        if not isinstance(out, Sequence) or isinstance(out, (str, bytes)):
            raise InvalidModelError(
                f"{_who(method)}output={selector} is an index, but the model returned "
                f"{describe_output(out)}, not a tuple or list."
            )
        if not -len(out) <= selector < len(out):
            raise InvalidModelError(
                f"{_who(method)}output={selector} is out of range for the model's output "
                f"{describe_output(out)}."
            )
        value = out[selector]
    else:
        raise InvalidModelError(
            f"{_who(method)}output must be None, a key, an index or a callable, got {selector!r}."
        )
    if not isinstance(value, torch.Tensor):
        raise InvalidModelError(
            f"{_who(method)}output={selector!r} selected {describe_output(value)}, not a "
            f"tensor; the model returned {describe_output(out)}."
        )
    return value


def _auto(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        for key in _PREFERRED_KEYS:
            if key in tensors:
                return tensors[key]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        return None
    if isinstance(out, (tuple, list)):
        return _auto(out[0]) if out else None
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def _who(method: str) -> str:
    return f"Method {method!r}: " if method else ""


def selector_label(selector: OutputSelector) -> str | int | None:
    """``selector`` as plain data for records (callables by name)."""
    if selector is None or isinstance(selector, (str, int)):
        return selector
    return getattr(selector, "__qualname__", None) or type(selector).__name__

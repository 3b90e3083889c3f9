"""Explain functions for the metrics that re-run a method.

:func:`max_sensitivity` and :func:`cascading_randomisation` take an ``ExplainFn``,
``(model, inputs, target) -> attributions``; :func:`method_explain_fn` makes one from
any installed esegeta method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from esegeta_core.evaluation._common import ExplainFn

__all__ = ["ExplainFn", "method_explain_fn"]


def method_explain_fn(method: str, /, **params: Any) -> ExplainFn:
    """An ``ExplainFn`` that runs ``explain(model, inputs, method, target=target, **params)``.

    ``params`` are the method's parameters and ``explain``'s keywords (``seed``,
    ``amp``, ``patches``, ...); the model must already return ``(B, classes)`` scores.
    The method name is checked now, not at the first call.
    """
    from esegeta_core.api import explain
    from esegeta_core.plugin.manager import get_registry

    get_registry().get(method)

    def run(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kwargs = {"progress": False, **params}
        return explain(model, inputs, method, target=target, **kwargs).attributions

    run.__name__ = f"explain_{method.replace('.', '_')}"
    return run

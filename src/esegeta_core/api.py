"""``explain()``: the one call that runs any installed method on any model.

Data flows one way: validate the model, inputs and parameters; wrap a segmentation
model so that it returns ``B x classes``; normalise the target; move everything to the
model's device; run the method once; restore the model exactly as it was found.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from esegeta_core.errors import (
    EsegetaError,
    InvalidInputError,
    InvalidModelError,
    InvalidParamsError,
    MethodFailedError,
    UnsupportedRankError,
)
from esegeta_core.explainer import Explainer, MethodParams, MethodResult
from esegeta_core.explanation import Explanation
from esegeta_core.layers import resolve_layer
from esegeta_core.model_state import ModelState
from esegeta_core.plugin.manager import Registry, get_registry
from esegeta_core.targets import ScoreFn, TargetLike, Task, normalise_target, score_model

log = logging.getLogger(__name__)


def explain(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str,
    target: TargetLike = None,
    *,
    task: Task = "classification",
    wrapper: str | ScoreFn | None = None,
    seed: int | None = None,
    **params: Any,
) -> Explanation:
    """Explain ``model`` on ``inputs`` with the installed method ``method``.

    Args:
        model: any ``torch.nn.Module``; it is put in eval mode for the call and left
            exactly as it was found (mode, hooks, ``requires_grad``, ``.grad``).
        inputs: a batch shaped ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        method: a method name from :func:`list_methods`, such as
            ``"captum.integrated_gradients"`` (a unique short name also works).
        target: ``None`` (each item's predicted class), an int, one class per item, or
            a :class:`~esegeta_core.Region` (segmentation: a class inside a mask).
        task: ``"classification"`` or ``"segmentation"``.
        wrapper: how a segmentation output becomes per-class scores:
            ``"multi_class"`` (default for segmentation), ``"threshold"``, or a callable.
        seed: seeds torch's generators for the call only (stochastic methods).
        **params: the method's parameters (see ``esegeta methods NAME``).
    """
    registry = get_registry()
    cls = registry.get(method)
    plugin = registry.plugin_of[cls.name]
    _check_model(model, cls.name)
    x = _check_inputs(inputs, cls, registry)
    valid = validate_params(cls, params)
    state = ModelState.capture(model)
    try:
        model.eval()
        device = model_device(model)
        x = x.to(device)
        scored = score_model(model, task, wrapper, target)
        with torch.no_grad():
            scores = scored(x)
        _check_scores(scores, x, task, cls.name)
        t = normalise_target(target, scores)
        for field in valid.layer_fields():
            value = getattr(valid, field)
            for path in value if isinstance(value, (list, tuple)) else [value]:
                if path is not None:
                    resolve_layer(model, path, method=cls.name)
        with _seeded(seed, device):
            start = time.perf_counter()
            result = cls().attribute(scored, x, t, valid)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    except EsegetaError:
        raise
    except Exception as exc:
        raise MethodFailedError(
            f"Method {cls.name!r} (plugin {plugin!r}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        removed = state.restore()
        if removed:
            log.warning(
                "method %s (plugin %s) left %d hook(s) on the model; esegeta removed them",
                cls.name,
                plugin,
                removed,
            )
    extras: dict[str, Any] = {}
    if isinstance(result, MethodResult):
        extras = dict(result.extras)
        result = result.attributions
    if not isinstance(result, torch.Tensor):
        raise MethodFailedError(
            f"Method {cls.name!r} (plugin {plugin!r}) returned {type(result).__name__}, "
            "not a tensor: this is a bug in the plugin."
        )
    return Explanation(
        attributions=result,
        method=cls.name,
        plugin=plugin,
        target=t,
        params=valid,
        seconds=seconds,
        input_shape=tuple(x.shape),
        output=cls.output,
        extras=extras,
    )


def validate_params(cls: type[Explainer], params: dict[str, Any]) -> MethodParams:
    """``cls.Params(**params)``, with errors that name the method and its parameters."""
    try:
        return cls.Params(**params)
    except ValidationError as exc:
        fields = (
            ", ".join(f"{n}: {f.description}" for n, f in cls.Params.model_fields.items()) or "none"
        )
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidParamsError(
            f"Invalid parameters for method {cls.name!r}: {problems}. "
            f"Its parameters are: {fields}. See `esegeta methods {cls.name}`."
        ) from exc


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _check_model(model: object, method: str) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidModelError(
            f"Method {method!r}: the model must be a torch.nn.Module, got "
            f"{type(model).__name__}. Wrap plain functions in a Module."
        )


def _check_inputs(inputs: object, cls: type[Explainer], registry: Registry) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs must be a torch.Tensor, got "
            f"{type(inputs).__name__}. Convert with torch.as_tensor(...)."
        )
    if inputs.ndim not in (4, 5):
        hint = " Add the batch dimension with inputs.unsqueeze(0)." if inputs.ndim == 3 else ""
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs must be a batch shaped (B, C, H, W) or "
            f"(B, C, D, H, W), got {tuple(inputs.shape)}.{hint}"
        )
    if not inputs.is_floating_point():
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs must be floating point, got {inputs.dtype}. "
            "Convert with inputs.float()."
        )
    if inputs.numel() == 0:
        raise InvalidInputError(f"Method {cls.name!r}: inputs are empty {tuple(inputs.shape)}.")
    if not bool(torch.isfinite(inputs).all()):
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs contain NaN or infinite values. Clean them first "
            "(for example torch.nan_to_num)."
        )
    rank = inputs.ndim - 2
    if rank not in cls.ranks:
        able = sorted(
            n for n, c in registry.methods.items() if rank in c.ranks and c.family == cls.family
        ) or sorted(n for n, c in registry.methods.items() if rank in c.ranks)
        raise UnsupportedRankError(
            f"Method {cls.name!r} (plugin {registry.plugin_of[cls.name]!r}) supports "
            f"{_ranks(cls.ranks)} inputs only, got a {rank}D input {tuple(inputs.shape)}. "
            f"Methods that handle {rank}D: {', '.join(able[:8]) or 'none installed'}."
        )
    return inputs.detach()


def _ranks(ranks: tuple[int, ...]) -> str:
    return "/".join(f"{r}D" for r in ranks)


def _check_scores(scores: object, x: torch.Tensor, task: str, method: str) -> None:
    if not isinstance(scores, torch.Tensor):
        raise InvalidModelError(
            f"Method {method!r}: the model returned {type(scores).__name__}, expected a "
            "tensor. Wrap the model so that forward returns the logits tensor."
        )
    if scores.ndim != 2 or scores.shape[0] != x.shape[0]:
        hint = (
            " This looks like a segmentation output: pass task='segmentation'."
            if task == "classification" and scores.ndim == x.ndim
            else " Pass wrapper=... that maps the output to (B, classes) scores."
        )
        raise InvalidModelError(
            f"Method {method!r}: the model's scores must be shaped (B={x.shape[0]}, "
            f"classes), got {tuple(scores.shape)}.{hint}"
        )


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield

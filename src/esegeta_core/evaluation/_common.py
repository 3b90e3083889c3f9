"""Plumbing shared by the metrics: validation, model state, scoring, chunking.

Every metric validates its arguments here (so that messages look alike), runs the
model in eval mode through :func:`eval_mode` (which restores the model exactly), moves
tensors to the model's device and calls the model in chunks of at most ``batch_size``
inputs, so that memory stays bounded however many perturbations a metric needs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from esegeta_core.devices import model_device
from esegeta_core.errors import (
    InvalidInputError,
    InvalidModelError,
    InvalidParamsError,
    InvalidTargetError,
)
from esegeta_core.input_checks import check_batch, check_model
from esegeta_core.model_state import ModelState
from esegeta_core.runtime.precision import float32_math
from esegeta_core.toolkit import gather_target

ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(model, inputs, target) -> attributions``: re-runs an explanation method.

``inputs`` is a ``(N, C, *spatial)`` batch on the model's device, ``target`` a ``(N,)``
long tensor; the result is shaped like ``inputs`` or ``(N, 1, *spatial)``.
"""

Score = Literal["softmax", "raw"]
"""What a metric reads off the model: the target's softmax probability or raw score."""


@contextlib.contextmanager
def eval_mode(model: nn.Module, metric: str, amp: str | None = None) -> Iterator[torch.device]:
    """Run the body with ``model`` in eval mode; restore mode, hooks and grads after.
    On CUDA the body computes in true float32 (TF32 off) unless ``amp`` says otherwise
    (:func:`~esegeta_core.runtime.precision.float32_math`): a metric compares scores
    that TF32 would round by about 1e-3 each.

    Yields the model's device.
    """
    check_model(model, f"Metric {metric!r}")
    state = ModelState.capture(model)
    try:
        model.eval()
        device = model_device(model)
        with float32_math(amp, device):
            yield device
    finally:
        state.restore()


def check_inputs(metric: str, inputs: object) -> torch.Tensor:
    """``inputs`` must be a finite floating ``(B, C, H, W)`` or ``(B, C, D, H, W)`` tensor
    (:func:`~esegeta_core.input_checks.check_batch`, the messages naming the metric)."""
    return check_batch(inputs, f"Metric {metric!r}")


def check_target(metric: str, target: object, batch: int, device: torch.device) -> torch.Tensor:
    """A ``(B,)`` long tensor on ``device``; an int or a sequence is accepted too."""
    if isinstance(target, bool) or target is None:
        raise InvalidTargetError(
            f"Metric {metric!r}: target must be a (B,) long tensor of class indices "
            f"(or an int), got {target!r}."
        )
    if isinstance(target, int):
        t = torch.full((batch,), target, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidTargetError(
                f"Metric {metric!r}: target must be a (B,) long tensor, got {type(target)}."
            ) from exc
        if t.ndim == 0:
            t = t.expand(batch)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InvalidTargetError(
            f"Metric {metric!r}: target must hold integer class indices, got {t.dtype}."
        )
    if t.shape != (batch,):
        raise InvalidTargetError(
            f"Metric {metric!r}: target must be shaped (B,) = ({batch},), got {tuple(t.shape)}."
        )
    if bool((t < 0).any()):
        raise InvalidTargetError(f"Metric {metric!r}: target has negative class indices.")
    return t.to(device=device, dtype=torch.long)


def check_attributions(
    metric: str, attributions: object, inputs: torch.Tensor, *, spatial_only: bool = False
) -> torch.Tensor:
    """Attributions shaped like ``inputs`` or ``(B, 1, *spatial)`` (or ``(B, *spatial)``).

    ``(B, *spatial)`` gains the channel dimension. With ``spatial_only`` a map must not
    have more channels than one or the input's.
    """
    if not isinstance(attributions, torch.Tensor):
        raise InvalidInputError(
            f"Metric {metric!r}: attributions must be a torch.Tensor, got "
            f"{type(attributions).__name__}."
        )
    a = attributions.detach()
    spatial = tuple(inputs.shape[2:])
    if a.ndim == inputs.ndim - 1 and tuple(a.shape[1:]) == spatial:
        a = a.unsqueeze(1)
    ok = (
        a.ndim == inputs.ndim
        and a.shape[0] == inputs.shape[0]
        and tuple(a.shape[2:]) == spatial
        and a.shape[1] in (1, inputs.shape[1])
    )
    if not ok:
        raise InvalidInputError(
            f"Metric {metric!r}: attributions of shape {tuple(attributions.shape)} do not "
            f"match the inputs {tuple(inputs.shape)}. Pass maps shaped like the inputs or "
            f"(B, 1, *spatial) at input resolution (Explanation.saliency() gives the latter)."
        )
    if not a.is_floating_point():
        a = a.float()
    if not bool(torch.isfinite(a).all()):
        raise InvalidInputError(f"Metric {metric!r}: attributions contain NaN or infinite values.")
    return a


def spatial_map(attributions: torch.Tensor) -> torch.Tensor:
    """``(B, 1, *spatial)``: channels reduced by summing (what every spatial metric ranks)."""
    if attributions.shape[1] == 1:
        return attributions
    return attributions.sum(dim=1, keepdim=True)


def check_mask(metric: str, mask: object, batch: int, spatial: Sequence[int]) -> torch.Tensor:
    """A ``(B, *spatial)`` boolean mask from ``(B, 1, *spatial)`` or ``(B, *spatial)``."""
    if not isinstance(mask, torch.Tensor):
        raise InvalidInputError(
            f"Metric {metric!r}: mask must be a torch.Tensor, got {type(mask).__name__}."
        )
    m = mask.detach()
    spatial = tuple(spatial)
    if m.ndim == len(spatial) + 2 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != len(spatial) + 1 or m.shape[0] != batch or tuple(m.shape[1:]) != spatial:
        raise InvalidInputError(
            f"Metric {metric!r}: mask of shape {tuple(mask.shape)} does not match the maps "
            f"(B={batch}, spatial {spatial}). Pass (B, 1, *spatial) or (B, *spatial)."
        )
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise InvalidInputError(
                f"Metric {metric!r}: mask must be boolean or hold only 0 and 1. "
                "Threshold it first, e.g. mask > 0.5."
            )
        m = m != 0
    return m


def check_positive_int(metric: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParamsError(
            f"Metric {metric!r}: {name} must be an integer >= {minimum}, got {value!r}."
        )
    return value


def check_nonnegative(metric: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidParamsError(f"Metric {metric!r}: {name} must be a number >= 0, got {value!r}.")
    if not math.isfinite(value):
        raise InvalidParamsError(f"Metric {metric!r}: {name} must be finite, got {value!r}.")
    return float(value)


def check_score(metric: str, score: object) -> Score:
    if score not in ("softmax", "raw"):
        raise InvalidParamsError(
            f"Metric {metric!r}: score must be 'softmax' (the target's probability) or "
            f"'raw' (the model's score), got {score!r}."
        )
    return score  # type: ignore[return-value]


def class_scores(metric: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's ``(N, classes)`` scores, checked."""
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidModelError(
            f"Metric {metric!r}: the model must return (N, classes) scores, got {shape}. "
            "Wrap a segmentation model with esegeta_core.ScoreModel first."
        )
    return out


def target_scores(
    metric: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, score: Score
) -> torch.Tensor:
    """``(N,)``: the target's softmax probability or raw score for each row of ``x``."""
    out = class_scores(metric, model, x)
    if bool((target >= out.shape[1]).any()):
        raise InvalidTargetError(
            f"Metric {metric!r}: target class {int(target.max())} is out of range for a "
            f"model with {out.shape[1]} classes."
        )
    if score == "softmax":
        out = torch.softmax(out.float(), dim=1)
    return gather_target(out, target)


def chunks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def run_explain(
    metric: str,
    explain_fn: ExplainFn,
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """``explain_fn`` over ``inputs`` in chunks of ``batch_size``, detached and checked."""
    if not callable(explain_fn):
        raise InvalidParamsError(
            f"Metric {metric!r}: explain_fn must be a callable (model, inputs, target) -> "
            f"attributions, got {type(explain_fn).__name__}."
        )
    parts = []
    for part in chunks(inputs.shape[0], batch_size):
        with torch.enable_grad():
            a = explain_fn(model, inputs[part], target[part])
        a = getattr(a, "attributions", a)  # an Explanation works too
        if not isinstance(a, torch.Tensor):
            raise InvalidParamsError(
                f"Metric {metric!r}: explain_fn returned {type(a).__name__}, expected a "
                "tensor shaped like its inputs or (N, 1, *spatial)."
            )
        parts.append(check_attributions(metric, a, inputs[part]).to(inputs.device))
    return torch.cat(parts)


def cpu(t: torch.Tensor) -> torch.Tensor:
    """Results are small: hand them back detached, on the CPU, as ordinary tensors (a
    copy, so that no inference-mode tensor escapes)."""
    return t.detach().to("cpu", copy=True)

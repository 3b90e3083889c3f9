"""Checks on what the user's model does during a method call.

The scores must be an ``(N, classes)`` tensor (a segmentation output needs
``task="segmentation"`` or a wrapper), and, after a failure, the model is run alone on
the probe: if its own forward pass fails, the input does not fit the model, which the
user fixes, not the method's plugin.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from esegeta_core.errors import EsegetaError, InvalidInputError, InvalidModelError
from esegeta_core.targets import check_target_range


def check_scores(
    scores: object, x: torch.Tensor, task: str, method: str, *, batch: bool = True
) -> torch.Tensor:
    """``scores``, once it is an ``(N, classes)`` tensor, ``N`` the batch of ``x``.

    ``batch=False``: a method's own pass may stack several inputs per item (steps,
    samples), so only the scores' rank is checked, not their batch size."""
    if not isinstance(scores, torch.Tensor):
        raise InvalidModelError(
            f"Method {method!r}: the model returned {type(scores).__name__}, expected a "
            "tensor. Wrap the model so that forward returns the logits tensor."
        )
    if scores.ndim != 2 or (batch and scores.shape[0] != x.shape[0]):
        hint = (
            " This looks like a segmentation output: pass task='segmentation'."
            if task == "classification" and scores.ndim == x.ndim
            else " Pass wrapper=... that maps the output to (B, classes) scores."
        )
        raise InvalidModelError(
            f"Method {method!r}: the model's scores must be shaped (B={x.shape[0]}, "
            f"classes), got {tuple(scores.shape)}.{hint}"
        )
    return scores


@contextlib.contextmanager
def checking_scores(
    scored: nn.Module, x: torch.Tensor, t: torch.Tensor, task: str, method: str
) -> Iterator[None]:
    """Check the first scores the method's own forward pass produces (a tensor of
    ``(N, classes)``, the targets in range) instead of spending a forward pass on it.
    The hook removes itself once it has checked (so later passes may take
    :meth:`~esegeta_core.targets.ScoreModel.target_scores`' short cut, which a hook on
    the scores rules out), and in any case on the way out, before the model's state is
    restored."""
    checked = False

    def hook(module: nn.Module, args: object, output: object) -> None:
        nonlocal checked
        if checked:
            return
        checked = True
        handle.remove()
        scores = check_scores(output, x, task, method, batch=False)
        check_target_range(t, scores.shape[1], method)

    handle = scored.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is CUDA running out of memory (never the input's fault)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def blame_input(
    plain: nn.Module, probe: torch.Tensor, x: torch.Tensor, method: str, exc: BaseException
) -> None:
    """After a failure, run the model alone on the probe (an item or the first patch):
    if its own forward pass fails, raise :class:`~esegeta_core.errors.InvalidInputError`
    saying how to fix the input; return if the model runs (the method failed)."""
    try:
        with torch.no_grad():
            plain(probe)
    except EsegetaError:
        return
    except Exception as err:
        if is_oom(err):
            return
        raise InvalidInputError(_model_fails_alone(probe, x, method, err)) from err


def _model_fails_alone(probe: torch.Tensor, x: torch.Tensor, method: str, err: Exception) -> str:
    """The message for a model whose own forward pass fails on ``probe``."""
    lines = str(err).strip().splitlines()
    first = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if tuple(probe.shape[2:]) == tuple(x.shape[2:]):
        where = f"an input of shape {tuple(x.shape)}"
        bigger = (
            "a larger input (resize, e.g. torch.nn.functional.interpolate(inputs, "
            "size=...), or pad it)"
        )
    else:
        where = f"a patch of shape {tuple(probe.shape)} (of the input {tuple(x.shape)})"
        bigger = "larger patches (patches={'size': ...})"
    return (
        f"Method {method!r}: the model's forward pass failed on {where} ({first}), on "
        "its own, without the method. If the input is too small for the model's "
        f"down-sampling, use {bigger}; if its channel count is wrong, give the channels "
        "the model expects; otherwise the model itself fails on such inputs."
    )

"""Precision for any method: float32 by default, opt-in autocast or TF32, float32
results, float32 fallback.

``amp="bf16"`` or ``"fp16"`` runs the method under ``torch.autocast`` on the model's
device (fp16 only on CUDA; bf16 on CUDA and CPU). Attributions always come back as
float32. A result with NaN or infinite values, the usual symptom of fp16 overflow in
gradients, is recomputed in float32 with a logged warning, so enabling AMP never
silently returns a broken map.

Without ``amp`` a CUDA model computes in true float32: PyTorch's default lets cuDNN
run float32 convolutions on TF32 tensor cores (a 10-bit mantissa), whose rounding,
about 1e-3 of each score, changes with the pass size (another algorithm). A
perturbation map is a difference of scores: on an H200 its maps moved by 3% of their
largest value between pass sizes (``benchmarks/bench_perturbation.py --device cuda``).
``amp="tf32"`` allows TF32 convolutions and matrix products for speed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import torch

from esegeta_core.errors import InvalidParamsError

log = logging.getLogger(__name__)

Precision = Literal["bf16", "fp16", "tf32"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("bf16", "fp16", "tf32")

T = TypeVar("T")


def check_precision(
    amp: str | None, device: torch.device, method: str = "", *, kind: str = "Method"
) -> None:
    """Raise a clear error for an unknown or unsupported precision; messages start
    with ``kind`` and the name (``"Method 'x'"``, ``"Metric 'deletion'"``)."""
    if amp is None:
        return
    if amp not in PRECISIONS:
        raise InvalidParamsError(
            f"{kind} {method!r}: amp must be 'bf16', 'fp16', 'tf32' or None, got {amp!r}."
        )
    if amp == "fp16" and device.type != "cuda":
        raise InvalidParamsError(
            f"{kind} {method!r}: amp='fp16' needs a CUDA device (the model is on "
            f"{device}); use amp='bf16' on CPU."
        )


_tf32_lock = threading.Lock()
_tf32_users: list[bool] = []  # the TF32 setting of each call running now, in order
_tf32_saved: tuple[bool, bool] = (False, False)


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _set_tf32(convolutions: bool, matmuls: bool) -> None:
    torch.backends.cudnn.allow_tf32 = convolutions
    torch.backends.cuda.matmul.allow_tf32 = matmuls


@contextlib.contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """TF32 convolutions and matrix products allowed or not while the block runs; the
    process's settings come back after. Calls in threads share the flags: while any
    call that wants float32 runs, TF32 stays off."""
    global _tf32_saved
    with _tf32_lock:
        if not _tf32_users:
            _tf32_saved = _tf32_flags()
        _tf32_users.append(allowed)
        _set_tf32(all(_tf32_users), all(_tf32_users))
    try:
        yield
    finally:
        with _tf32_lock:
            _tf32_users.remove(allowed)
            wanted = all(_tf32_users)
            _set_tf32(*((wanted, wanted) if _tf32_users else _tf32_saved))


def reduced(device: torch.device) -> bool:
    """Whether passes on ``device`` compute below float32 now (autocast or TF32)."""
    if device.type != "cuda":
        return torch.is_autocast_enabled(device.type)
    return torch.is_autocast_enabled("cuda") or any(_tf32_flags())


@contextlib.contextmanager
def float32_math(amp: str | None, device: torch.device) -> Iterator[None]:
    """On CUDA: TF32 off for ``amp=None`` (true float32) and on for ``"tf32"``; nothing
    elsewhere, or for bf16 and fp16 (autocast's float32 operations keep the process's
    setting). A job holds it for all of its passes (the prediction pass whose scores
    a perturbation method subtracts from, the checks, the method), so that no score is
    rounded otherwise than the rest."""
    if device.type == "cuda" and amp not in _DTYPES:
        with tf32(amp == "tf32"):
            yield
    else:
        yield


@contextlib.contextmanager
def autocast(amp: str | None, device: torch.device) -> Iterator[None]:
    """The precision of ``amp`` on ``device``: ``torch.autocast`` for bf16 and fp16,
    else :func:`float32_math`."""
    if amp in _DTYPES:
        with torch.autocast(device_type=device.type, dtype=_DTYPES[amp]):
            yield
    else:
        with float32_math(amp, device):
            yield


def is_finite(result: object) -> bool:
    """True unless ``result`` (a tensor, or an object with ``attributions``) has NaN/inf."""
    tensor = getattr(result, "attributions", result)
    return not isinstance(tensor, torch.Tensor) or bool(torch.isfinite(tensor).all())


def to_float32(result: T) -> T:
    """Cast the attributions of ``result`` to float32 (tensors or ``MethodResult``)."""
    if isinstance(result, torch.Tensor):
        return result.float() if result.is_floating_point() else result  # type: ignore[return-value]
    tensor = getattr(result, "attributions", None)
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
        result.attributions = tensor.float()  # type: ignore[attr-defined]
    return result


def run_with_precision(
    run: Callable[[], T], amp: str | None, device: torch.device, method: str = ""
) -> T:
    """Run in ``amp``'s precision (:func:`autocast`); recompute in float32 (with a
    warning) a result of bf16 or fp16 that is not finite."""
    with autocast(amp, device):
        result = run()
    if amp not in _DTYPES:  # float32, with or without TF32: nothing to convert
        return result
    if is_finite(result):
        return to_float32(result)
    log.warning(
        "method %s gave NaN or infinite values under amp=%s; recomputing in float32",
        method,
        amp,
    )
    with autocast(None, device):
        return to_float32(run())

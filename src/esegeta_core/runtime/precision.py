"""Mixed precision for any method: opt-in autocast, float32 results, float32 fallback.

``amp="bf16"`` or ``"fp16"`` runs the method under ``torch.autocast`` on the model's
device (fp16 only on CUDA; bf16 on CUDA and CPU). Attributions always come back as
float32. A result with NaN or infinite values, the usual symptom of fp16 overflow in
gradients, is recomputed in float32 with a logged warning, so enabling AMP never
silently returns a broken map.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import torch

from esegeta_core.errors import InvalidParamsError

log = logging.getLogger(__name__)

Precision = Literal["bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T")


def check_precision(
    amp: str | None, device: torch.device, method: str = "", *, kind: str = "Method"
) -> None:
    """Raise a clear error for an unknown or unsupported precision; messages start
    with ``kind`` and the name (``"Method 'x'"``, ``"Metric 'deletion'"``)."""
    if amp is None:
        return
    if amp not in _DTYPES:
        raise InvalidParamsError(
            f"{kind} {method!r}: amp must be 'bf16', 'fp16' or None, got {amp!r}."
        )
    if amp == "fp16" and device.type != "cuda":
        raise InvalidParamsError(
            f"{kind} {method!r}: amp='fp16' needs a CUDA device (the model is on "
            f"{device}); use amp='bf16' on CPU."
        )


@contextlib.contextmanager
def autocast(amp: str | None, device: torch.device) -> Iterator[None]:
    """``torch.autocast`` for ``amp`` on ``device``, or nothing when ``amp`` is None."""
    if amp is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[amp]):
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
    """Run under autocast; recompute in float32 (with a warning) if the result is not finite."""
    if amp is None:
        return run()
    with autocast(amp, device):
        result = run()
    if is_finite(result):
        return to_float32(result)
    log.warning(
        "method %s gave NaN or infinite values under amp=%s; recomputing in float32",
        method,
        amp,
    )
    return to_float32(run())

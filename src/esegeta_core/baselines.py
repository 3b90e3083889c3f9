"""Reference inputs ("baselines") for path and perturbation methods, N-dimensional.

Named choices so that configs and the CLI can pick one without building tensors:
``zeros``, ``mean`` (per item and channel), ``blurred`` (Gaussian blur of the input,
the choice of Sturmfels et al., https://distill.pub/2020/attribution-baselines/),
``uniform`` (uniform noise in the input's range) and ``gaussian`` (input plus noise).
A tensor (broadcastable to the input) is used as is.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from esegeta_core.errors import InvalidParamsError

BaselineName = Literal["zeros", "mean", "blurred", "uniform", "gaussian"]
BaselineLike = BaselineName | float | torch.Tensor

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over every spatial dimension of ``(B, C, *spatial)``."""
    if sigma <= 0:
        return x.clone()
    rank = x.ndim - 2
    radius = max(1, math.ceil(3 * sigma))
    coords = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    out = x
    for dim in range(rank):
        shape = [1] * rank
        shape[dim] = kernel.numel()
        k = kernel.view(1, 1, *shape).repeat(channels, 1, *([1] * rank))
        pad = [0, 0] * rank
        # F.pad pads the last dimension first
        pad[2 * (rank - 1 - dim)] = radius
        pad[2 * (rank - 1 - dim) + 1] = radius
        size = out.shape[2 + dim]
        mode = "reflect" if size > radius else "replicate"
        out = _CONV[rank](F.pad(out, pad, mode=mode), k, groups=channels)
    return out


def make_baseline(
    baseline: BaselineLike,
    inputs: torch.Tensor,
    *,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
    method: str = "",
) -> torch.Tensor:
    """A baseline tensor shaped like ``inputs`` (same device and dtype).

    ``sigma`` is the blur width for ``blurred`` (default: 1/16 of the smallest
    spatial size, at least 1) and the noise scale for ``gaussian`` (default 0.1 of the
    input's standard deviation).
    """
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs).clone()
        except RuntimeError as exc:
            raise InvalidParamsError(
                f"Method {method!r}: baseline of shape {tuple(baseline.shape)} does not "
                f"broadcast to the inputs {tuple(inputs.shape)}."
            ) from exc
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if baseline == "zeros":
        return torch.zeros_like(inputs)
    if baseline == "mean":
        dims = tuple(range(2, inputs.ndim))
        return inputs.mean(dim=dims, keepdim=True).expand_as(inputs).clone()
    if baseline == "blurred":
        width = sigma or max(1.0, min(inputs.shape[2:]) / 16)
        return gaussian_blur(inputs, width)
    if baseline == "uniform":
        lo, hi = float(inputs.min()), float(inputs.max())
        noise = torch.rand(inputs.shape, generator=generator, device="cpu", dtype=inputs.dtype)
        return (lo + (hi - lo) * noise).to(inputs.device)
    if baseline == "gaussian":
        scale = sigma or 0.1 * float(inputs.std())
        noise = torch.randn(inputs.shape, generator=generator, device="cpu", dtype=inputs.dtype)
        return inputs + scale * noise.to(inputs.device)
    raise InvalidParamsError(
        f"Method {method!r}: unknown baseline {baseline!r}; choose zeros, mean, blurred, "
        "uniform, gaussian, a number or a tensor."
    )

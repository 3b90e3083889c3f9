"""What every gradient method shares: post-processing, SmoothGrad / VarGrad and
``create_graph``, in one implementation (the parameters: :class:`GradientParams`).

A method supplies a *base* attribution function ``(model, x, target, create_graph)
-> attributions`` for a batch; :func:`run_gradient_method` post-processes it and,
when asked, averages it over noisy copies of the input, ``noise_batch_size`` copies
per pass (SmoothGrad, Smilkov et al. https://arxiv.org/abs/1706.03825; VarGrad,
Adebayo et al. https://arxiv.org/abs/1810.03307). The noise standard deviation is
``noise_level`` times each item's input range, as in the SmoothGrad paper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from esegeta_cnnvis.params import GradientParams, PostProcess
from esegeta_core.explainer import Workload

BaseFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, bool], torch.Tensor]
"""A batched attribution: ``(model, inputs, target, create_graph) -> attributions``."""


def smoothed_workload(
    params: GradientParams, shape: tuple[int, ...], inner: Workload | None = None
) -> Workload:
    """The workload of a gradient method on inputs of ``shape``: ``inner`` (one pass per
    item by default) on every noisy copy when smoothing, ``noise_batch_size`` copies of
    the batch per pass."""
    inner = inner or Workload()
    if params.smoothing == "none":
        return inner
    copies = params.noise_samples
    together = min(params.noise_batch_size, copies)
    per_copy = max(1, (inner.inputs or shape[0]) // shape[0])
    return Workload(
        passes=(inner.passes or 1) * copies,
        inputs=shape[0] * together * per_copy,
        extra=inner.extra,
        counts=(*inner.counts, "noise_samples"),
        fix=f"{inner.fix}, or lower noise_samples" if inner.fix else "",
        batch=(*inner.batch, "noise_batch_size"),
    )


def postprocess(a: torch.Tensor, how: PostProcess) -> torch.Tensor:
    """One of :data:`PostProcess` on a ``(B, C, *spatial)`` attribution."""
    if how == "abs":
        return a.abs()
    if how == "square":
        return a * a
    if how == "channel_norm":
        return a.pow(2).sum(1, keepdim=True).sqrt()
    if how == "channel_max":
        return a.abs().amax(1, keepdim=True)
    return a


def _item_range(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    return (x.amax(dims, keepdim=True) - x.amin(dims, keepdim=True)).detach()


def _chunks(total: int, size: int) -> Iterable[int]:
    done = 0
    while done < total:
        step = min(size, total - done)
        yield step
        done += step


def run_gradient_method(
    base: BaseFn,
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    params: GradientParams,
) -> torch.Tensor:
    """``base`` post-processed and smoothed as ``params`` say; detached unless
    ``params.create_graph``."""
    cg = params.create_graph
    if params.smoothing == "none":
        out = postprocess(base(model, inputs, target, cg), params.postprocess)
        return out if cg else out.detach()
    batch = inputs.shape[0]
    sigma = params.noise_level * _item_range(inputs)
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    for k in _chunks(params.noise_samples, params.noise_batch_size):
        noise = torch.randn((k, *inputs.shape), device=inputs.device, dtype=inputs.dtype)
        noisy = (inputs.unsqueeze(0) + sigma.unsqueeze(0) * noise).flatten(0, 1)
        a = base(model, noisy, target.repeat(k), cg)
        a = postprocess(a, params.postprocess).unflatten(0, (k, batch))
        if not cg:
            a = a.detach()
        s = a.sum(0)
        total = s if total is None else total + s
        if params.smoothing != "smoothgrad":
            s2 = (a * a).sum(0)
            squares = s2 if squares is None else squares + s2
    n = params.noise_samples
    assert total is not None
    if params.smoothing == "smoothgrad":
        return total / n
    assert squares is not None
    if params.smoothing == "smoothgrad_sq":
        return squares / n
    mean = total / n
    return (squares / n - mean * mean).clamp(min=0)

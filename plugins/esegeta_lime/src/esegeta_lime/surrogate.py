"""LIME's neighbourhood sampling and surrogate fit for one item, any rank.

This reproduces ``lime.lime_image.LimeImageExplainer`` step by step, but over segment
ids of any spatial rank and with the perturbations made as tensors on the model's
device: a random 0/1 matrix (first row all ones) switches segments on and off,
switched-off segments take the "hidden" image's values, and ``lime.lime_base.LimeBase``
(LIME's own kernel, feature selection and weighted ridge fit) turns scores into segment
weights.

The perturbed samples are never made all at once: each forward pass writes its own
samples into one reused buffer (the core's ``PassBuffer``) and keeps only the target's score
(the surrogate reads no other class). The passes go through the core's pass planner
(:func:`~esegeta_core.runtime.passes.method_passes`): ``batch_size`` samples per pass,
or the measured fastest size and layout under ``explain(auto_batch=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from esegeta_core.runtime.host_blas import one_blas_thread
from esegeta_core.runtime.pass_buffer import PassBuffer
from esegeta_core.runtime.passes import method_passes
from esegeta_core.toolkit import gather_target, target_pass_scores
from esegeta_lime.params import LimeParams


@dataclass
class ItemFit:
    """The surrogate of one item: per-segment weights (0 for segments the feature
    selection dropped), LIME's ranked ``(segment, weight)`` list and fit statistics."""

    weights: torch.Tensor
    ranked: list[tuple[int, float]]
    intercept: float
    score: float
    local_pred: float


def hidden_image(
    item: torch.Tensor, segments: torch.Tensor, hide_color: float | None
) -> torch.Tensor:
    """What a switched-off segment shows: ``hide_color`` everywhere, or (None) each
    segment's per-channel mean, as LIME does."""
    if hide_color is not None:
        return torch.full_like(item, hide_color)
    channels = item.shape[0]
    flat = item.reshape(channels, -1).double()
    ids = segments.reshape(-1)
    n = int(ids.max()) + 1
    sums = torch.zeros(channels, n, dtype=flat.dtype, device=item.device).index_add_(1, ids, flat)
    counts = torch.bincount(ids, minlength=n).clamp_min(1)
    return (sums / counts)[:, ids].reshape(item.shape).to(item.dtype)


def sample_scores(
    model: Callable[[torch.Tensor], torch.Tensor],
    item: torch.Tensor,
    hidden: torch.Tensor,
    segments: torch.Tensor,
    data: np.ndarray,
    label: int,
    params: LimeParams,
) -> np.ndarray:
    """The ``(num_samples,)`` float64 scores of class ``label`` (its softmax probability
    with ``use_softmax``) for every on/off row of ``data``, each pass's perturbed copies
    of ``item`` written into one reused buffer."""
    rows = torch.as_tensor(data, device=item.device).bool()
    buffer = PassBuffer(item)

    def chunk(start: int, stop: int, channels_last: bool) -> torch.Tensor:
        batch = buffer.take(stop - start, channels_last)
        keep = rows[start:stop][:, segments].unsqueeze(1)
        torch.where(keep, item, hidden, out=batch)
        labels = torch.full((stop - start,), label, device=batch.device)
        if not params.use_softmax:  # a copy, never a view of the buffer
            return target_pass_scores(model, batch, labels)
        return gather_target(torch.softmax(model(batch), dim=1), labels)

    with torch.no_grad():
        scores = method_passes(rows.shape[0], chunk, params.batch_size, item[None])
    return scores.detach().to(device="cpu", dtype=torch.float64).numpy()  # AMP-safe


def fit_item(
    model: Callable[[torch.Tensor], torch.Tensor],
    item: torch.Tensor,
    segments: torch.Tensor,
    label: int,
    params: LimeParams,
    random_state: np.random.RandomState,
) -> ItemFit:
    """Explain class ``label`` of one item ``(C, *spatial)`` over ``segments``
    (``*spatial`` long ids 0..n-1); ``random_state`` is consumed as LIME does."""
    from lime.lime_base import LimeBase
    from sklearn.metrics import pairwise_distances

    n = int(segments.max()) + 1
    data = random_state.randint(0, 2, params.num_samples * n).reshape((params.num_samples, n))
    data[0, :] = 1
    hidden = hidden_image(item, segments, params.hide_color)
    # LimeBase reads only the explained class's column of the labels
    labels = sample_scores(model, item, hidden, segments, data, label, params)[:, None]
    width = params.kernel_width

    def kernel(d: np.ndarray) -> np.ndarray:
        return np.sqrt(np.exp(-(d**2) / width**2))

    base = LimeBase(kernel, random_state=random_state)
    # on one BLAS thread: none is left spinning against the next item's passes
    with one_blas_thread():
        distances = pairwise_distances(
            data, data[0].reshape(1, -1), metric=params.distance_metric
        ).ravel()
        intercept, ranked, score, local_pred = base.explain_instance_with_data(
            data,
            labels,
            distances,
            0,
            params.num_features,
            feature_selection=params.feature_selection,
        )
    weights = torch.zeros(n, dtype=torch.float64)
    for feature, weight in ranked:
        weights[int(feature)] = float(weight)
    return ItemFit(
        weights=weights,
        ranked=[(int(f), float(w)) for f, w in ranked],
        intercept=float(intercept),
        score=float(score),
        local_pred=float(np.ravel(local_pred)[0]),
    )


def top_segments(ranked: list[tuple[int, float]], params: LimeParams, sign: int) -> list[int]:
    """The first ``num_features`` segments of LIME's ranking with the given sign and
    ``|weight| > min_weight`` (as ``ImageExplanation.get_image_and_mask``)."""
    chosen = [f for f, w in ranked if w * sign > 0 and abs(w) > params.min_weight]
    return chosen[: params.num_features]

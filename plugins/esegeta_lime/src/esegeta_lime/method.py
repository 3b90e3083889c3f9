"""``lime.lime``: LIME over superpixels (2D) and supervoxels (3D).

One code path for both ranks: segment each item, sample LIME's on/off neighbourhood
over the segments, score the perturbed copies pass by pass on the model's device, fit
LIME's weighted linear surrogate (:mod:`esegeta_lime.surrogate`). The attribution is
each pixel's/voxel's segment weight for the target class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from esegeta_core import Explainer, InvalidParamsError, MethodResult
from esegeta_core.explainer import Workload
from esegeta_core.targets import summed_scores
from esegeta_core.tracing import ModelTrace
from esegeta_lime.params import LimeParams
from esegeta_lime.segmentation import segment
from esegeta_lime.surrogate import fit_item, top_segments


def draw_seed(params: LimeParams) -> int:
    """``random_seed``, or one drawn from torch's default generator (seeded by
    ``explain(..., seed=...)``)."""
    if params.random_seed is not None:
        return params.random_seed
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


class Lime(Explainer[LimeParams]):
    """LIME: a sparse linear model of the class probability over superpixels or supervoxels.

    Each item is cut into segments (quickshift, SLIC, Felzenszwalb or a user mask;
    SLIC supervoxels for volumes), ``num_samples`` random subsets of segments are kept
    while the others are hidden, and a locally weighted ridge regression of the
    target class's probability on the on/off pattern gives one weight per segment.
    The attributions (shaped like the input) hold each pixel's segment weight on every
    channel. Extras: ``positive_mask`` / ``negative_mask`` ((B, 1, *spatial) bool, the
    top ``num_features`` segments of each sign), ``segments`` ((B, 1, *spatial) ids),
    ``segment_weights`` (one (n_segments,) tensor per item), ``intercept``, ``score``
    (weighted R^2 of the surrogate) and ``local_pred`` ((B,) each), ``use_softmax``
    (what the default None chose: softmax for a classifier, raw for a segmentation).
    """

    name = "lime.lime"
    count_params = ("num_samples",)
    forward_only = True
    family = "perturbation"
    output = "input"
    ranks = (2, 3)
    cost = "high"
    paper = "https://arxiv.org/abs/1602.04938"
    deterministic = False
    batch_params = ("batch_size",)
    # the perturbed samples are made per pass, in a reused buffer (method_passes)
    pass_params = ("batch_size",)
    pass_unit = "pass"  # whole perturbed inputs per pass
    own_passes = True

    def workload(
        self, params: LimeParams, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """``num_samples`` passes per item, items one at a time, ``batch_size`` samples
        per pass; LIME keeps every sample's on/off row over the segments (int64, plus a
        bool copy, the distances' and the weighted ridge fit's float64 copies: about 40
        bytes per row and segment)."""
        n = params.num_samples
        segments = estimated_segments(params, shape)
        slic = isinstance(params.segmentation, str) and params.segmentation == "slic"
        return Workload(
            passes=n,
            inputs=min(params.batch_size, n),
            extra=n * segments * 40,
            counts=("num_samples", "n_segments") if slic else ("num_samples",),
            fix="lower num_samples (the sample matrix also grows with the segments)",
            batch=("batch_size",),
        )

    def check_model(
        self, model: torch.nn.Module, params: LimeParams, trace: ModelTrace | None
    ) -> None:
        """Refuse the softmax of a segmentation's summed class scores (see
        :func:`~esegeta_core.targets.summed_scores`): every sample would score 0 or 1
        and the surrogate fit a step or a constant."""
        if params.use_softmax and summed_scores(model):
            raise InvalidParamsError(
                f"Method {self.name!r} (plugin 'lime'): use_softmax=True squashes a "
                "segmentation model's class scores, sums of logits over every pixel, to 0 "
                "or 1 whatever the sample, so the surrogate would fit a step or a "
                "constant. Use use_softmax=False (what the default None takes for "
                "segmentation)."
            )

    def attribute(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: LimeParams,
    ) -> MethodResult:
        if params.use_softmax is None:
            params = params.model_copy(update={"use_softmax": not summed_scores(model)})
        seed = draw_seed(params)
        random_state = np.random.RandomState(seed)
        segments = segment(inputs, params, seed, self.name)
        maps, positive, negative, weights = [], [], [], []
        intercept, score, local_pred = [], [], []
        for item, ids, label in zip(inputs, segments, target.tolist(), strict=True):
            fit = fit_item(model, item, ids[0], int(label), params, random_state)
            w = fit.weights.to(device=inputs.device, dtype=inputs.dtype)
            if params.positive_only:
                w = w.clamp_min(0)
            maps.append(w[ids].expand_as(item))
            positive.append(_mask(ids, top_segments(fit.ranked, params, +1)))
            negative.append(_mask(ids, top_segments(fit.ranked, params, -1)))
            weights.append(fit.weights)
            intercept.append(fit.intercept)
            score.append(fit.score)
            local_pred.append(fit.local_pred)
        return MethodResult(
            torch.stack(maps),
            positive_mask=torch.stack(positive),
            negative_mask=torch.stack(negative),
            segments=segments,
            segment_weights=weights,
            intercept=torch.tensor(intercept, dtype=torch.float64),
            score=torch.tensor(score, dtype=torch.float64),
            local_pred=torch.tensor(local_pred, dtype=torch.float64),
            random_seed=seed,
            use_softmax=params.use_softmax,
        )


def estimated_segments(params: LimeParams, shape: tuple[int, ...]) -> int:
    """About how many segments an item of ``shape`` is cut into, without segmenting:
    ``n_segments`` for SLIC, the ids of a given mask, at most one per ``min_size``
    pixels for Felzenszwalb, and for quickshift one per kernel area."""
    if isinstance(params.segmentation, torch.Tensor):
        return int(torch.unique(params.segmentation).numel())
    pixels = math.prod(shape[2:])
    if params.segmentation == "slic":
        return params.n_segments
    if params.segmentation == "felzenszwalb":
        return max(1, pixels // params.min_size)
    return max(1, int(pixels / (math.pi * params.kernel_size**2)))


def _mask(ids: torch.Tensor, chosen: list[int]) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(chosen, dtype=ids.dtype, device=ids.device))

"""Segment ids per item: scikit-image's quickshift, SLIC or Felzenszwalb, or a user mask.

The segmentation only decides which pixels/voxels move together; it sees a view of
each item scaled to [0, 1]. 2D items with 1 or 3 channels are segmented as RGB in Lab
space (grey repeated three times, as LIME's ``gray2rgb``); any other channel count,
and every volume, is segmented on its real channels without colour conversion
(quickshift sees them scaled to [0, 100], Lab's lightness range, so that ``max_dist``
means the same). The perturbation itself always acts on the real C-channel tensor.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings

import numpy as np
import torch

from esegeta_core import InvalidParamsError
from esegeta_core.feature_masks import check_mask
from esegeta_lime.params import LimeParams

logger = logging.getLogger(__name__)


def segment(inputs: torch.Tensor, params: LimeParams, seed: int, method: str) -> torch.Tensor:
    """``(B, 1, *spatial)`` long segment ids, numbered 0..n-1 within each item; an item
    in one segment is refused (:func:`_check_several`)."""
    kind = params.segmentation
    if isinstance(kind, torch.Tensor):
        mask = check_mask(kind, inputs, method=method)
        items = [torch.unique(m, return_inverse=True)[1] for m in mask]
        return _check_several(torch.stack(items), params, method)
    rank = inputs.ndim - 2
    if rank != 2 and kind != "slic":
        raise InvalidParamsError(
            f"Method {method!r}: segmentation={kind!r} works on 2D images only (as in "
            f"scikit-image); for {rank}D inputs use segmentation='slic' (supervoxels) or "
            "pass a tensor of segment ids."
        )
    masks = []
    for item in inputs.detach().float().cpu():
        labels = _algorithm(item, params, seed)
        ids = torch.as_tensor(np.ascontiguousarray(labels), dtype=torch.long)
        masks.append(torch.unique(ids, return_inverse=True)[1].unsqueeze(0))
    return _check_several(torch.stack(masks), params, method).to(inputs.device)


def _check_several(ids: torch.Tensor, params: LimeParams, method: str) -> torch.Tensor:
    """``ids`` when every item has at least two segments. LIME switches segments on and
    off: an item in one segment gets one weight, a constant map that says nothing about
    where the evidence is (SLIC does this on pixel noise with few segments asked, even
    smoothed: 13 of the zoo's 26 RGB 64 px noise items at n_segments=8)."""
    single = [i for i, item in enumerate(ids) if int(item.max()) == 0]
    if not single:
        return ids
    kind = params.segmentation
    how = "the segment ids given" if isinstance(kind, torch.Tensor) else f"segmentation={kind!r}"
    fix = (
        "give ids with at least two segments per item"
        if isinstance(kind, torch.Tensor)
        else f"ask for more segments (n_segments, now {params.n_segments}), set sigma or "
        "compactness, choose another segmentation ('felzenszwalb', 'quickshift'), or pass "
        "a tensor of segment ids"
    )
    raise InvalidParamsError(
        f"Method {method!r} (plugin 'lime'): {how} put all of item(s) {single} in one "
        "segment, so LIME would give the whole item one weight: a constant map. To "
        f"explain it, {fix}."
    )


def _view(item: torch.Tensor) -> tuple[np.ndarray, bool]:
    """The item channels-last in [0, 1], and whether it is an RGB view (Lab-able)."""
    lo, hi = item.min(), item.max()
    scaled = (item - lo) / (hi - lo) if hi > lo else torch.zeros_like(item)
    rgb = item.ndim == 3 and item.shape[0] in (1, 3)
    if rgb and item.shape[0] == 1:
        scaled = scaled.expand(3, *scaled.shape[1:])
    return scaled.movedim(0, -1).double().numpy(), rgb


def _algorithm(item: torch.Tensor, params: LimeParams, seed: int) -> np.ndarray:
    from skimage import segmentation as sk

    image, rgb = _view(item)
    sigma = {} if params.sigma is None else {"sigma": params.sigma}
    kind = params.segmentation
    if kind == "slic":
        compactness = params.compactness
        if compactness is None:
            compactness = 10.0 if rgb else 0.1
        slic = functools.partial(
            sk.slic,
            image,
            n_segments=params.n_segments,
            compactness=compactness,
            channel_axis=-1,
            convert2lab=rgb,
            start_label=0,
        )
        labels = slic(**sigma)
        if params.sigma is None and len(np.unique(labels)) < max(2, params.n_segments // 10):
            # on pixel noise SLIC's clusters fragment and its connectivity step merges
            # them all into one segment: smooth first (sigma=1), as users of noisy
            # (medical) images would, rather than explain with one segment
            logger.warning(
                "lime.lime: SLIC found %d segment(s) for n_segments=%d on a noisy input; "
                "retrying with sigma=1 (set sigma to choose the smoothing yourself).",
                len(np.unique(labels)),
                params.n_segments,
            )
            labels = slic(sigma=1.0)
        return labels
    if kind == "quickshift":
        # scikit-image 0.22 renamed quickshift's random_seed to rng
        takes_rng = "rng" in inspect.signature(sk.quickshift).parameters
        seeding = {"rng" if takes_rng else "random_seed": seed}
        return sk.quickshift(
            image if rgb else image * 100.0,  # the range of Lab's L, so knobs mean the same
            kernel_size=params.kernel_size,
            max_dist=params.max_dist,
            ratio=params.ratio,
            convert2lab=rgb,
            channel_axis=-1,
            **seeding,
            **sigma,
        )
    with warnings.catch_warnings():
        # "image with third dimension of 5 ... interpreted as multichannel": intended
        warnings.filterwarnings("ignore", message="Got image with third dimension")
        return sk.felzenszwalb(
            image, scale=params.scale, min_size=params.min_size, channel_axis=-1, **sigma
        )

"""Feature masks for Captum's perturbation methods: grid cells, SLIC superpixels or a
user tensor, all ``(B, 1, *spatial)`` long ids shared by every channel.

Grid and tensor masks come from :mod:`esegeta_core.feature_masks`; superpixels use
scikit-image's SLIC (Achanta et al. 2012), imported only when asked for, which handles
2D images and 3D volumes alike through ``channel_axis``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esegeta_core import InvalidParamsError
from esegeta_core.feature_masks import check_mask, grid_mask


def superpixel_mask(
    inputs: torch.Tensor, n_segments: int, compactness: float, *, method: str = ""
) -> torch.Tensor:
    """SLIC superpixels (2D) or supervoxels (3D) per item, ids 0..n-1 per item.

    Each item is scaled to [0, 1] first so that ``compactness`` means the same for any
    intensity range; channels are features of one pixel (no Lab conversion, so the same
    settings work for 1, 3 or more channels).
    """
    try:
        from skimage.segmentation import slic
    except ImportError as exc:
        raise InvalidParamsError(
            f"Method {method!r}: feature_mask='superpixel' needs scikit-image "
            "(pip install scikit-image); or use feature_mask='grid'."
        ) from exc
    masks = []
    for item in inputs.detach().float().cpu():
        lo, hi = item.min(), item.max()
        scaled = (item - lo) / (hi - lo) if hi > lo else torch.zeros_like(item)
        image = scaled.movedim(0, -1).numpy()  # (*spatial, C)
        labels = slic(
            image,
            n_segments=n_segments,
            compactness=compactness,
            channel_axis=-1,
            convert2lab=False,
            start_label=0,
        )
        ids = torch.as_tensor(labels, dtype=torch.long)
        _, ids = torch.unique(ids, return_inverse=True)
        masks.append(ids.unsqueeze(0))
    return torch.stack(masks).to(inputs.device)


def build_feature_mask(
    kind: str | torch.Tensor,
    inputs: torch.Tensor,
    *,
    cell: int | Sequence[int],
    n_segments: int,
    compactness: float,
    method: str = "",
) -> torch.Tensor:
    """The feature mask chosen by ``kind`` (``"grid"``, ``"superpixel"`` or a tensor)."""
    if isinstance(kind, torch.Tensor):
        return check_mask(kind, inputs, method=method)
    if kind == "grid":
        return grid_mask(inputs, cell, method=method)
    if kind == "superpixel":
        return superpixel_mask(inputs, n_segments, compactness, method=method)
    raise InvalidParamsError(
        f"Method {method!r}: unknown feature_mask {kind!r}; use 'grid', 'superpixel' or a tensor."
    )


def count_features(mask: torch.Tensor) -> int:
    """The largest number of features of any item of a ``(B, 1, *spatial)`` mask."""
    return max(int(torch.unique(item).numel()) for item in mask)

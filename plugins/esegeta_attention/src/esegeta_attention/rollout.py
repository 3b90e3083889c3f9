"""The arithmetic of the attention methods, on plain tensors (no model involved).

Shapes: ``attn`` is ``(B, heads, N, N)`` (rows are queries, columns keys, each row sums
to 1), fused matrices and the blocks' factors are ``(B, N, N)``, the rows a map is read
from ``(B, 1, N)`` and maps ``(B, 1, *grid)``. Products over the blocks are only ever
needed at one row (the class token's, or the mean of the patch tokens' rows), so they are
computed from the left, a vector times each block's matrix, last block first.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from esegeta_core import InvalidParamsError
from esegeta_core.layouts import Layout

HeadFusion = Literal["mean", "max", "min"]
Query = Literal["auto", "class", "mean"]


def fuse_heads(attn: torch.Tensor, how: HeadFusion) -> torch.Tensor:
    """``(B, heads, N, N)`` -> ``(B, N, N)``: the mean, maximum or minimum over heads."""
    if how == "mean":
        return attn.mean(dim=1)
    if how == "max":
        return attn.amax(dim=1)
    return attn.amin(dim=1)


def discard_lowest(fused: torch.Tensor, ratio: float, keep: int | None) -> torch.Tensor:
    """Zero the ``int(ratio * N * N)`` lowest entries of each item's ``(N, N)`` matrix,
    never the entry ``(keep, keep)`` (the class token's attention to itself, as in
    jacobgil/vit-explain); ``keep=None``: no entry is exempt.

    The entries are found by a selection (the count-th smallest value of each item, a
    linear-time partition), not a sort; when values tie at that threshold, by a top-k
    that breaks the tie exactly."""
    b, n, _ = fused.shape
    cells = n * n
    count = min(int(ratio * cells), cells - 1 if keep is not None else cells)
    if count <= 0:
        return fused
    flat = fused.reshape(b, cells)
    ranked = flat
    if keep is not None:
        ranked = flat.clone()
        ranked[:, keep * n + keep] = float("inf")
    drop = ranked <= _kth_smallest(ranked, count)[:, None]
    if bool((drop.sum(dim=1) == count).all()):
        return flat.masked_fill(drop, 0.0).view(b, n, n)
    lowest = ranked.topk(count, dim=1, largest=False).indices  # ties at the threshold
    return flat.scatter(1, lowest, 0.0).view(b, n, n)


def _kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest value (1-based) of each row of ``values`` ``(B, M)``: numpy's
    introselect on the CPU (several times faster than torch's ``kthvalue`` and ``topk``
    there), torch's ``kthvalue`` elsewhere."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        rows = np.partition(values.detach().numpy(), k - 1, axis=1)[:, k - 1]
        return torch.from_numpy(np.ascontiguousarray(rows))
    return values.kthvalue(k, dim=1).values


def rollout_matrix(fused: torch.Tensor) -> torch.Tensor:
    """One block's factor of attention rollout (Abnar & Zuidema 2020): the residual
    connection as the identity added to the attention, rows renormalised to sum to 1
    (``0.5 A + 0.5 I`` for rows of ``A`` that sum to 1)."""
    a = fused.clone()
    a.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return a / a.sum(dim=-1, keepdim=True)


def gae_cam(attn: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One block's term of Chefer et al. 2021's rule for self-attention:
    ``mean_heads((grad * A)^+)``, ``(B, N, N)``."""
    return (grad * attn).clamp(min=0).mean(dim=1)


def query_rows(layout: Layout, class_token: bool, like: torch.Tensor) -> torch.Tensor:
    """``(B, 1, N)`` row vectors ``v`` such that ``v @ M`` is the row a map is read from:
    the class token's (the first token), or the mean of the patch tokens' rows."""
    b, n = like.shape[0], like.shape[-1]
    v = torch.zeros(b, 1, n, dtype=torch.float32, device=like.device)
    if class_token:
        v[:, 0, 0] = 1.0
    else:
        v[:, 0, layout.extra :] = 1.0 / (n - layout.extra)
    return v


def rolled_rows(v: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    """``v @ (A_L @ ... @ A_1)`` for the blocks' factors ``[A_1, ..., A_L]``, computed from
    the left (vector-matrix products, ``O(B N^2)`` per block instead of ``O(B N^3)``)."""
    for a in reversed(factors):
        v = torch.bmm(v, a)
    return v


def gae_rows(v: torch.Tensor, cams: list[torch.Tensor]) -> torch.Tensor:
    """``v @ R`` for Chefer's ``R = I``, ``R <- R + cam_l @ R`` (l = 1..L), that is
    ``R = (I + cam_L) ... (I + cam_1)``, computed from the left."""
    for cam in reversed(cams):
        v = v + torch.bmm(v, cam)
    return v


def uses_class_token(layout: Layout, query: Query, method: str) -> bool:
    """Whether the map is the class token's row (``query="auto"``: when the model has
    tokens before the patch grid, the first of which is the class token in timm,
    torchvision, Hugging Face and DeiT) or the mean over the grid's query rows."""
    if query == "mean":
        return False
    if query == "class" and layout.extra == 0:
        raise InvalidParamsError(
            f"Method {method!r}: query='class', but this model has no class token (its "
            f"{'x'.join(map(str, layout.grid))} tokens are all patches). Use query='mean' "
            "or 'auto'."
        )
    return layout.extra > 0


def row_map(rows: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``(B, 1, N)`` rows -> ``(B, 1, *grid)``: their entries over the patch tokens."""
    return rows[:, 0, layout.extra :].reshape(rows.shape[0], 1, *layout.grid)


__all__ = [
    "HeadFusion",
    "Query",
    "discard_lowest",
    "fuse_heads",
    "gae_cam",
    "gae_rows",
    "query_rows",
    "rolled_rows",
    "rollout_matrix",
    "row_map",
    "uses_class_token",
]

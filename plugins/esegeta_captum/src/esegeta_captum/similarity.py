"""Captum's default LIME and KernelSHAP sample weights, for every sample at once.

Captum's ``LimeBase`` calls ``similarity_func`` once per interpretable sample, on the
perturbed input it built for that sample. Its two defaults end in a host read per
sample: LIME's exponential kernel (``get_exp_kernel_similarity_function``) returns
``math.exp`` of a device tensor, KernelSHAP's Shapley kernel calls ``.item()`` on the
sample's size. On a GPU that is a synchronisation per sample between the passes.

Both only depend on which features a sample keeps, so they are computed here from the
``(n_samples, features)`` coalitions in a few tensor operations on the input's device:

- KernelSHAP's kernel is ``inf_weight`` for the empty and the full coalition, 1 for the
  others (Lundberg and Lee 2017, https://arxiv.org/abs/1705.07874): exactly Captum's;
- LIME's kernel (Ribeiro et al. 2016, https://arxiv.org/abs/1602.04938) is
  ``exp(-d^2 / (2 w^2))`` of the cosine or Euclidean distance ``d`` between the input
  and the perturbed input (kept features from the input, the others from the
  baseline). Every term of those distances is a per-feature sum of the input's and the
  baseline's elements, weighted by the sample's coalition; summed in float64 it equals
  Captum's float32 value to float32 rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch

EXP_KERNEL = "get_exp_kernel_similarity_function.<locals>.default_exp_kernel"
"""The ``__qualname__`` of Captum's default LIME similarity functions."""


def exp_kernel_settings(func: Any) -> tuple[str, float] | None:
    """``(distance_mode, kernel_width)`` of a similarity function made by Captum's
    ``get_exp_kernel_similarity_function``, else ``None``."""
    if getattr(func, "__qualname__", "") != EXP_KERNEL:
        return None
    cells = dict(zip(func.__code__.co_freevars, func.__closure__ or ()))
    try:
        mode, width = cells["distance_mode"].cell_contents, cells["kernel_width"].cell_contents
    except (KeyError, ValueError):  # another Captum's closure: call it per sample
        return None
    if mode not in ("cosine", "euclidean") or not isinstance(width, (int, float)):
        return None
    return mode, float(width)


def shapley_kernel(coalitions: torch.Tensor, inf_weight: float) -> torch.Tensor:
    """KernelSHAP's weight of each ``(n, features)`` coalition: ``inf_weight`` where it
    keeps no feature or all of them, else 1 (float32, as Captum's)."""
    kept = coalitions.sum(1)
    ends = (kept == 0) | (kept == coalitions.shape[1])
    one = torch.ones((), dtype=torch.float32, device=coalitions.device)
    return torch.where(ends, torch.full_like(one, inf_weight), one)


def exp_kernel(
    item: torch.Tensor,
    baselines: Any,
    feature_mask: torch.Tensor,
    coalitions: torch.Tensor,
    mode: str,
    width: float,
) -> torch.Tensor:
    """LIME's weight of each coalition: ``exp(-d^2 / (2 width^2))`` with ``d`` the
    ``mode`` distance between ``item`` ``(1, C, *spatial)`` and its perturbed input
    (features ``feature_mask`` ``0 .. features - 1``, broadcast to the item, kept where
    the coalition has a 1, else ``baselines``), as Captum computes it (flattened,
    float, cosine through ``torch``'s clamped norms)."""
    x = item.detach().to(torch.float64)
    b = torch.as_tensor(baselines, device=item.device).to(torch.float64)
    b = torch.broadcast_to(b, x.shape)
    ids = torch.broadcast_to(feature_mask.to(item.device), x.shape).reshape(-1).long()
    count = coalitions.shape[1]
    keep = coalitions.to(device=item.device, dtype=torch.float64)

    def per_feature(values: torch.Tensor) -> torch.Tensor:
        return torch.bincount(ids, weights=values.reshape(-1), minlength=count)[:count]

    if mode == "euclidean":
        squared = (1 - keep) @ per_feature((x - b) ** 2)
    else:
        xx = per_feature(x * x)
        dot = keep @ xx + (1 - keep) @ per_feature(x * b)
        norm = (keep @ xx + (1 - keep) @ per_feature(b * b)).sqrt()
        eps = 1e-8  # torch.nn.CosineSimilarity's default
        cosine = dot / (xx.sum().sqrt().clamp_min(eps) * norm.clamp_min(eps))
        squared = (1 - cosine) ** 2
    return torch.exp(-squared / (2 * width**2)).to(torch.float32)


def sample_weights(
    algorithm: Any, item: torch.Tensor, coalitions: torch.Tensor, options: dict[str, Any]
) -> torch.Tensor | None:
    """The weights of ``algorithm``'s similarity function for every coalition at once,
    or ``None`` when it is not one of Captum's defaults (call it per sample)."""
    func = algorithm.similarity_func
    shapley = getattr(algorithm, "kernel_shap_similarity_kernel", None)
    if shapley is not None and func == shapley:
        return shapley_kernel(coalitions, float(getattr(algorithm, "inf_weight", 1e6)))
    settings = exp_kernel_settings(func)
    if settings is None:
        return None
    mode, width = settings
    if not math.isfinite(width) or width == 0:
        return None
    return exp_kernel(item, options["baselines"], options["feature_mask"], coalitions, mode, width)

"""Similarity of two batches of maps: Spearman rank correlation and SSIM, N-D, batched.

Used by the randomisation sanity check to tell how much a map changed. Both take maps
``(B, C or 1, *spatial)`` (channels are summed) or ``(B, *spatial)`` and return ``(B,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esegeta_core.errors import InvalidInputError, InvalidParamsError

__all__ = ["spearman", "ssim"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _pair(metric: str, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps as ``(B, 1, *spatial)`` float64 on ``a``'s device."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        raise InvalidInputError(
            f"Metric {metric!r}: expected two tensors of one shape, got "
            f"{getattr(a, 'shape', type(a))} and {getattr(b, 'shape', type(b))}."
        )
    if a.ndim == 3:  # (B, H, W): one 2D map per item
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    if a.ndim not in (4, 5):
        raise InvalidInputError(
            f"Metric {metric!r}: maps must be (B, C, H, W), (B, C, D, H, W) or (B, H, W), "
            f"got {tuple(a.shape)}."
        )
    if a.device.type == "mps":  # no float64 there; these maps are small
        a = a.cpu()
    a = a.detach().double().sum(1, keepdim=True)
    b = b.detach().to(a.device).double().sum(1, keepdim=True)
    return a, b


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N along the last dim of ``(B, N)``, ties sharing their average rank."""
    b, n = x.shape
    values, order = torch.sort(x, dim=1, stable=True)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.long().cumsum(1) - 1 + torch.arange(b, device=x.device)[:, None] * n
    position = torch.arange(n, device=x.device, dtype=torch.float64).expand(b, n)
    sums = torch.zeros(b * n, device=x.device, dtype=torch.float64)
    sums.scatter_add_(0, group.flatten(), position.flatten())
    counts = torch.bincount(group.flatten(), minlength=b * n).double()
    mean = (sums / counts.clamp_min(1))[group]
    ranks = torch.empty_like(mean)
    ranks.scatter_(1, order, mean)
    return ranks + 1


def spearman(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """Spearman rank correlation per item, ``(B,)`` in [-1, 1].

    Of absolute values by default (Adebayo et al. 2018, https://arxiv.org/abs/1810.03292,
    who compare absolute maps because the sign of many methods is unstable). Ties get
    average ranks, as ``scipy.stats.spearmanr``. Where scipy gives NaN, a constant map
    (e.g. an all-zero gradient once the target class wins nowhere) against a varying one
    scores 0 (no rank agreement) and two constant maps score 1.
    """
    x, y = _pair("spearman", a, b)
    x, y = x.flatten(1), y.flatten(1)
    if absolute:
        x, y = x.abs(), y.abs()
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(1, keepdim=True), ry - ry.mean(1, keepdim=True)
    vx, vy = (rx * rx).sum(1), (ry * ry).sum(1)
    out = (rx * ry).sum(1) / torch.sqrt(vx * vy).clamp_min(1e-300)
    flat_x, flat_y = vx == 0, vy == 0
    out[flat_x ^ flat_y] = 0.0
    out[flat_x & flat_y] = 1.0
    return out.float().cpu()


def _gaussian_valid(x: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Separable Gaussian filter over the spatial dims of ``(B, K, *spatial)``, 'valid'."""
    rank = x.ndim - 2
    if radius == 0:
        return x
    coords = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    for dim in range(rank):
        shape = [1] * rank
        shape[dim] = kernel.numel()
        k = kernel.view(1, 1, *shape).repeat(channels, 1, *([1] * rank))
        x = _CONV[rank](x, k, groups=channels)
    return x


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    absolute: bool = True,
    sigma: float = 1.5,
    truncate: float = 3.5,
) -> torch.Tensor:
    """Structural similarity per item (Wang et al. 2004), N-D, ``(B,)``.

    Each map is made absolute (``absolute``) and scaled to [0, 1] by its own maximum
    (data range 1), as Adebayo et al. compare maps
    (https://arxiv.org/abs/1810.03292); then the mean SSIM over the positions where a
    Gaussian window (``sigma`` 1.5, radius ``int(truncate * sigma + 0.5)`` = 5, cut
    to fit small maps) fits entirely, with population covariances and
    K1 = 0.01, K2 = 0.03. This is ``skimage.metrics.structural_similarity`` with
    ``gaussian_weights=True, use_sample_covariance=False, data_range=1``
    (https://doi.org/10.1109/TIP.2003.819861).
    """
    if not (isinstance(sigma, (int, float)) and sigma > 0 and truncate > 0):
        raise InvalidParamsError(f"Metric 'ssim': sigma and truncate must be > 0, got {sigma}.")
    x, y = _pair("ssim", a, b)
    if absolute:
        x, y = x.abs(), y.abs()
    dims = tuple(range(2, x.ndim))
    x = x / x.amax(dim=dims, keepdim=True).abs().clamp_min(1e-300)
    y = y / y.amax(dim=dims, keepdim=True).abs().clamp_min(1e-300)
    radius = min(int(truncate * sigma + 0.5), (min(x.shape[2:]) - 1) // 2)
    stats = _gaussian_valid(torch.cat([x, y, x * x, y * y, x * y], 1), sigma, radius)
    mx, my, mxx, myy, mxy = stats.unbind(1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    out = s.flatten(1).mean(1)
    return out.float().cpu()

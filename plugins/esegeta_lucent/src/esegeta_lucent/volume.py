"""esegeta's own image parameterization and transforms for 3D (any rank, in fact).

Lucent's ``param.image`` and ``transform`` are 2D-only. These are their N-D
counterparts, written to match Lucent's behaviour so that a 3D visualization behaves
like a 2D one:

- :func:`pixel_param`: a learnable ``(B, C, *size)`` tensor, ``sigmoid`` to [0, 1].
- :func:`fourier_param`: a learnable half spectrum turned into an image with
  ``torch.fft.irfftn`` over all spatial dimensions, scaled by ``1 / f`` (so that low
  frequencies dominate, as in Lucid's ``fft_image``), divided by Lucid's constant 4.
- optional colour decorrelation with Lucid's 3x3 colour matrix (3 channels only).
- :func:`transforms`: pad, random jitter, random scale, random rotation (in one random
  plane), drawn from torch's random generator so that a seed fixes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from esegeta_core.toolkit import interpolation_mode

ImageFn = Callable[[], torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]


# Lucid's square root of the ImageNet colour correlation, normalised (lucent.optvis.param.color)
_COLOR = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = _COLOR / _COLOR.norm(dim=0).max()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def spectrum_scale(size: Sequence[int], decay_power: float = 1.0) -> torch.Tensor:
    """``1 / max(|f|, 1 / max(size)) ** decay_power`` on the rfftn frequency grid."""
    axes = [torch.fft.fftfreq(n) for n in size[:-1]] + [torch.fft.rfftfreq(size[-1])]
    grids = torch.meshgrid(*axes, indexing="ij")
    freqs = torch.sqrt(sum(g * g for g in grids))
    return 1.0 / freqs.clamp(min=1.0 / max(size)) ** decay_power


def pixel_param(
    shape: Sequence[int], sd: float, device: torch.device
) -> tuple[torch.Tensor, ImageFn]:
    """A learnable pixel/voxel tensor; the image function returns it unconstrained."""
    tensor = (torch.randn(*shape) * sd).to(device).requires_grad_(True)
    return tensor, lambda: tensor


def fourier_param(
    shape: Sequence[int], sd: float, device: torch.device
) -> tuple[torch.Tensor, ImageFn]:
    """A learnable half spectrum (real, imaginary) over all spatial dimensions."""
    batch, channels, *size = shape
    scale = spectrum_scale(size).to(device)
    spec_shape = (batch, channels, *scale.shape, 2)
    spectrum = (torch.randn(*spec_shape) * sd).to(device).requires_grad_(True)
    dims = tuple(range(2, 2 + len(size)))

    def image() -> torch.Tensor:
        scaled = torch.view_as_complex(spectrum) * scale
        return torch.fft.irfftn(scaled, s=size, dim=dims, norm="ortho") / 4.0

    return spectrum, image


def decorrelate_colors(image: torch.Tensor) -> torch.Tensor:
    """Map decorrelated colour channels to RGB with Lucid's colour matrix."""
    matrix = COLOR_CORRELATION.to(image.device, image.dtype)
    return torch.einsum("bc...,dc->bd...", image, matrix)


def image_param(
    shape: Sequence[int], *, fft: bool, decorrelate: bool, sd: float, device: torch.device
) -> tuple[list[torch.Tensor], ImageFn]:
    """Parameters and a function returning images in [0, 1], like Lucent's ``param.image``."""
    make = fourier_param if fft else pixel_param
    tensor, raw = make(shape, sd, device)

    def image() -> torch.Tensor:
        value = raw()
        if decorrelate:
            value = decorrelate_colors(value)
        return torch.sigmoid(value)

    return [tensor], image


def normalize_imagenet(image: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation (torchvision models), any rank, 3 channels."""
    view = (1, 3) + (1,) * (image.ndim - 2)
    mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(view)
    std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(view)
    return (image - mean) / std


def resize(size: Sequence[int]) -> Transform:
    """Resize to ``size`` (what the model sees), as Lucent's final ``Upsample``."""

    def inner(image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[2:]) == tuple(size):
            return image
        mode = interpolation_mode(image.ndim - 2)
        return F.interpolate(image, size=tuple(size), mode=mode, align_corners=True)

    return inner


def _randint(high: int) -> int:
    return int(torch.randint(high, (1,)).item())


def pad(width: int, value: float = 0.5) -> Transform:
    """Constant padding on every spatial side (Lucid pads with grey)."""
    return lambda image: F.pad(image, [width] * (2 * (image.ndim - 2)), value=value)


def jitter(d: int) -> Transform:
    """Shift by a random ``[0, d)`` voxels per axis, zero filled (Lucent's translate)."""

    def inner(image: torch.Tensor) -> torch.Tensor:
        out = image
        for dim in range(2, image.ndim):
            shift = _randint(d)
            if shift:
                size = image.shape[dim]
                out = torch.cat(
                    [torch.zeros_like(out.narrow(dim, 0, shift)), out.narrow(dim, 0, size - shift)],
                    dim=dim,
                )
        return out

    return inner


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by a random factor from ``scales``; zero-pad back when it shrinks."""

    def inner(image: torch.Tensor) -> torch.Tensor:
        factor = scales[_randint(len(scales))]
        shape = image.shape[2:]
        new = [math.ceil(factor * s) for s in shape]
        out = F.interpolate(
            image, size=new, mode=interpolation_mode(image.ndim - 2), align_corners=True
        )
        padding: list[int] = []
        for s, n in zip(reversed(shape), reversed(new)):
            p = max(0, math.ceil((s - n) / 2))
            padding += [p, p]
        return F.pad(out, padding) if any(padding) else out

    return inner


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate by a random angle (degrees) from ``angles`` in one random plane."""

    def inner(image: torch.Tensor) -> torch.Tensor:
        rank = image.ndim - 2
        angle = math.radians(angles[_randint(len(angles))])
        if angle == 0.0:
            return image
        planes = [(i, j) for i in range(rank) for j in range(i + 1, rank)]
        i, j = planes[_randint(len(planes))]
        theta = torch.eye(rank, rank + 1, device=image.device, dtype=image.dtype)
        c, s = math.cos(angle), math.sin(angle)
        theta[i, i], theta[i, j], theta[j, i], theta[j, j] = c, -s, s, c
        theta = theta.unsqueeze(0).expand(image.shape[0], -1, -1)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        return F.grid_sample(image, grid, align_corners=False)

    return inner


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply ``transforms`` in order."""

    def inner(image: torch.Tensor) -> torch.Tensor:
        for transform in transforms:
            image = transform(image)
        return image

    return inner

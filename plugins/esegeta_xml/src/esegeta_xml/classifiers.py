"""A small VGG-style classifier, 2D or 3D, for experiments that must run on a CPU.

Stages of (conv3x3 [+ BatchNorm] + ReLU) x2 followed by max pooling (like VGG and like the paper's
VGG-based classifier, https://doi.org/10.1016/j.patrec.2020.04.004), then global average
pooling and a linear layer. Its ``features`` ``nn.Sequential`` makes the VGG adapter
(:func:`esegeta_xml.points.vgg_points`) find the multiplication points by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from esegeta_xml.unet import _BN, _CONV, _POOL, check_spatial_dims

_GAP: dict[int, type[nn.Module]] = {
    1: nn.AdaptiveAvgPool1d,
    2: nn.AdaptiveAvgPool2d,
    3: nn.AdaptiveAvgPool3d,
}


class SmallVGG(nn.Module):
    """VGG-style classifier: ``features`` (stages ending in max pooling), ``pool``, ``fc``.

    Args:
        in_channels: input channels.
        classes: number of classes.
        spatial_dims: 2 or 3.
        widths: channels per stage (one stage per entry).
        batch_norm: a BatchNorm after each convolution (trains faster from scratch).

    ``conv_layer`` (the last convolution's ReLU) is a good layer for CAM methods.
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 2,
        spatial_dims: int = 2,
        widths: Sequence[int] = (16, 32, 64),
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        dims = check_spatial_dims(spatial_dims, "SmallVGG")
        conv, pool, bn = _CONV[dims], _POOL[dims], _BN[dims]
        layers: list[nn.Module] = []
        previous = in_channels
        for width in widths:
            for source in (previous, width):
                layers.append(conv(source, width, 3, padding=1))
                if batch_norm:
                    layers.append(bn(width))
                layers.append(nn.ReLU())
            layers.append(pool(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = _GAP[dims](1)
        self.fc = nn.Linear(previous, classes)
        self.conv_layer = f"features.{len(layers) - 2}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def small_vgg(
    in_channels: int = 3,
    classes: int = 2,
    spatial_dims: int = 2,
    widths: Sequence[int] = (16, 32, 64),
    batch_norm: bool = True,
) -> SmallVGG:
    """Factory for configs: ``esegeta_xml.classifiers:small_vgg``."""
    return SmallVGG(in_channels, classes, spatial_dims, widths, batch_norm)

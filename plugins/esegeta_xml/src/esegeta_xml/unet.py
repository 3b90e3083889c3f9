"""The explainer network of xML: a small U-Net whose one-channel output lies in [0, 1).

Rio-Torto, Fernandes & Teixeira, "Understanding the decisions of CNNs: an in-model
approach", Pattern Recognition Letters 133 (2020), https://doi.org/10.1016/j.patrec.2020.04.004.

Encoder: per level two (conv3x3 + ReLU) then max pooling (32/64/128 channels by
default). Decoder: per level a transposed convolution that doubles the resolution, the
encoder's feature map of that level *added* (not concatenated), two (conv3x3 + ReLU).
Head: conv1x1 -> BatchNorm -> tanh -> ReLU, so the map is in [0, 1). The BatchNorm's
bias starts at ``init_bias`` (2 to 10 in the paper): tanh saturates near one, so early
explanations keep every feature and the classifier trains as if there were no explainer.
The same code builds the 2D (``spatial_dims=2``) and 3D (``spatial_dims=3``) network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from esegeta_core.errors import InvalidInputError, InvalidParamsError

PAPER = "https://doi.org/10.1016/j.patrec.2020.04.004"

_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_UP: dict[int, type[nn.Module]] = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}
_POOL: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BN: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def check_spatial_dims(spatial_dims: int, who: str) -> int:
    """``spatial_dims`` as an int in (1, 2, 3), or an error naming ``who``."""
    if spatial_dims not in _CONV:
        raise InvalidParamsError(
            f"{who}: spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}."
        )
    return int(spatial_dims)


def conv_block(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """Two (3x3 convolution + ReLU), resolution kept (the paper's ``ConvMod``)."""
    conv = _CONV[spatial_dims]
    return nn.Sequential(
        conv(in_channels, out_channels, 3, padding=1),
        nn.ReLU(),
        conv(out_channels, out_channels, 3, padding=1),
        nn.ReLU(),
    )


class ExplainerUNet(nn.Module):
    """The xML explainer: input ``(B, C, *spatial)`` -> explanation ``(B, 1, *spatial)`` in [0, 1).

    Args:
        in_channels: channels of the classifier's input.
        spatial_dims: 2 for images, 3 for volumes.
        widths: channels per level (the paper: ``(32, 64, 128)``); one entry per level.
        init_bias: initial bias of the head's BatchNorm; high values (2 to 10) make the
            first explanations all (nearly) ones.

    Inputs whose spatial sizes are not multiples of ``2 ** len(widths)`` are padded
    (replicating the border) for the network and the map is cropped back, so any size
    works.
    """

    def __init__(
        self,
        in_channels: int = 3,
        spatial_dims: int = 2,
        widths: Sequence[int] = (32, 64, 128),
        init_bias: float = 3.0,
    ) -> None:
        super().__init__()
        dims = check_spatial_dims(spatial_dims, "ExplainerUNet")
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1 or in_channels < 1:
            raise InvalidParamsError(
                f"ExplainerUNet: widths must be one or more positive channel counts and "
                f"in_channels positive, got widths={widths}, in_channels={in_channels}."
            )
        self.spatial_dims = dims
        self.in_channels = int(in_channels)
        self.widths = widths
        self.init_bias = float(init_bias)
        pool, up = _POOL[dims], _UP[dims]
        self.down = nn.ModuleList()
        previous = self.in_channels
        for width in widths:
            self.down.append(conv_block(dims, previous, width))
            previous = width
        self.pool = pool(2)
        # decoder, deepest level first: up-sample from the level below (or from the
        # pooled bottom), add the skip of this level, convolve
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        below = widths[-1]
        for width in reversed(widths):
            self.up.append(up(below, width, kernel_size=2, stride=2))
            self.merge.append(conv_block(dims, width, width))
            below = width
        self.head = _CONV[dims](widths[0], 1, kernel_size=1)
        self.norm = _BN[dims](1)
        self.reset_bias()

    def reset_bias(self) -> None:
        """Set the head BatchNorm's bias to ``init_bias`` (explanations start near one)."""
        with torch.no_grad():
            self.norm.bias.fill_(self.init_bias)

    @property
    def multiple(self) -> int:
        """Spatial sizes the network needs without padding are multiples of this."""
        return 2 ** len(self.widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise InvalidInputError(
                f"ExplainerUNet({self.spatial_dims}D, in_channels={self.in_channels}) needs "
                f"inputs shaped (B, {self.in_channels}, *{self.spatial_dims} spatial dims), got "
                f"{tuple(x.shape)}. Build it with the classifier's in_channels/spatial_dims."
            )
        spatial = tuple(x.shape[2:])
        pad: list[int] = []
        for size in reversed(spatial):  # F.pad wants the last dimension first
            pad += [0, (-size) % self.multiple]
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(up(x) + skip)
        z = torch.relu(torch.tanh(self.norm(self.head(x))))
        if any(pad):
            z = z[(slice(None), slice(None), *(slice(0, n) for n in spatial))]
        return z

"""Small models for the synthetic benchmark, built in code (never downloaded).

Every ReLU is its own module (DeepLift, guided backprop and LRP need that), blocks are
named so that layer methods can address them (``"features.relu3"``), and each class
says which layer the CAM family should use (``cam_layer``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from esegeta_core.toolkit import interpolation_mode

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def _block(rank: int, cin: int, cout: int) -> OrderedDict[str, nn.Module]:
    """conv3 - batch norm - ReLU, named ``conv``, ``bn``, ``relu``."""
    return OrderedDict(
        conv=_CONV[rank](cin, cout, 3, padding=1, bias=False),
        bn=_BN[rank](cout),
        relu=nn.ReLU(),
    )


class ShapesNet(nn.Module):
    """A 2D classifier: four conv-BN-ReLU blocks (``width``, ``2 width``, max pooling,
    ``4 width``, max pooling, ``4 width``), global average pooling and one linear layer,
    so CAM, Grad-CAM and the rest of the family apply.

    ``cam_layer`` (``"features.relu4"``) is the last block's output, at a quarter of the
    input resolution (16 x 16 for 64 px images); it is exactly what the global average
    pooling sees, as CAM requires. Any input size divisible by 4 works.
    """

    cam_layer = "features.relu4"

    def __init__(self, in_channels: int = 3, classes: int = 4, width: int = 8) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width, 4 * width)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin = in_channels
        for i, cout in enumerate(widths, start=1):
            if i in (3, 4):
                layers[f"pool{i - 1}"] = nn.MaxPool2d(2)
            for key, module in _block(2, cin, cout).items():
                layers[f"{key}{i}"] = module
            cin = cout
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` images to ``(B, classes)`` logits."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class _Stage(nn.Sequential):
    """Two conv-BN-ReLU blocks."""

    def __init__(self, rank: int, cin: int, cout: int) -> None:
        first = _block(rank, cin, cout)
        second = _block(rank, cout, cout)
        super().__init__(
            OrderedDict(
                conv1=first["conv"],
                bn1=first["bn"],
                relu1=first["relu"],
                conv2=second["conv"],
                bn2=second["bn"],
                relu2=second["relu"],
            )
        )


class _UNet(nn.Module):
    """A U-Net of ``levels`` resolutions (2D or 3D), skips concatenated, logits out."""

    def __init__(self, rank: int, in_channels: int, classes: int, width: int, levels: int):
        super().__init__()
        self.rank = rank
        widths = [width * 2**i for i in range(levels)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_Stage(rank, cin, w))
            cin = w
        self.pool = _POOL[rank](2)
        mode = interpolation_mode(rank)
        self.upsample = nn.Upsample(scale_factor=2, mode=mode, align_corners=False)
        self.up = nn.ModuleList(
            _Stage(rank, widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels - 1))
        )
        self.head = _CONV[rank](widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` to ``(B, classes, *spatial)`` logits; every
        spatial size must be divisible by ``2 ** (levels - 1)``."""
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        for stage, skip in zip(self.up, reversed(skips[:-1])):
            x = stage(torch.cat([self.upsample(x), skip], dim=1))
        return self.head(x)


class ShapesUNet(_UNet):
    """A 2D U-Net (three levels) that labels every pixel background or a shape kind.

    ``cam_layer`` (``"down.2"``) is the bottleneck, the usual choice for Grad-CAM on
    segmentation models.
    """

    cam_layer = "down.2"

    def __init__(self, in_channels: int = 3, classes: int = 5, width: int = 8) -> None:
        super().__init__(2, in_channels, classes, width, levels=3)


class VesselUNet(_UNet):
    """A small 3D U-Net (two levels) that labels every voxel background or vessel.

    ``cam_layer`` (``"down.1"``) is the bottleneck.
    """

    cam_layer = "down.1"

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 4) -> None:
        super().__init__(3, in_channels, classes, width, levels=2)


class _TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``norm1``, multi-head self-attention (torch's
    ``nn.MultiheadAttention``), ``norm2``, a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ShapesViT(nn.Module):
    """A tiny vision transformer for the shapes images: 8 x 8 patches, a class token,
    learned position embeddings for ``image_size`` inputs, ``depth`` blocks, the class
    token's final state classifies. Inputs are standardised first (the shapes' grey
    levels, centred at 0.5 with a spread of about 0.15: a linear patch embedding of raw
    low-contrast images does not train).

    ``cam_layer`` (``"blocks.2"``) is the input of the last block: with a class-token
    head, the last block's own output gets no gradient at the patch tokens
    (pytorch-grad-cam's ``blocks[-1].norm1`` advice); ``layer="auto"`` finds it too.
    """

    cam_layer = "blocks.2"

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 4,
        dim: int = 48,
        depth: int = 4,
        heads: int = 3,
        patch: int = 8,
        image_size: int = 64,
    ) -> None:
        super().__init__()
        grid = image_size // patch
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = nn.Sequential(*(_TransformerBlock(dim, heads, 2 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` images to ``(B, classes)`` logits; the position
        embeddings are interpolated to the patch grid of other sizes (the training starts
        on small canvases, like the CNN's)."""
        patches = self.patch_embed((x - 0.5) / 0.15)
        tokens = patches.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self._positions(tuple(patches.shape[2:]))
        return self.head(self.norm(self.blocks(tokens))[:, 0])

    def _positions(self, grid: tuple[int, int]) -> torch.Tensor:
        own = self.pos_embed.shape[1] - 1
        side = int(own**0.5)
        if grid == (side, side):
            return self.pos_embed
        patch = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch = nn.functional.interpolate(patch, size=grid, mode="bilinear", align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
        return torch.cat([self.pos_embed[:, :1], patch], dim=1)

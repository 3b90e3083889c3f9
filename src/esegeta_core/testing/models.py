"""Tiny models for everyone's tests: 2D and 3D, classification and segmentation.

A few thousand parameters each, built in code (never downloaded), with every ReLU its
own module (DeepLift, guided backprop and LRP need that), a BatchNorm (so that a method
that leaves the model in the wrong mode is caught) and a documented convolutional
layer name, ``conv_layer``, for layer methods.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from esegeta_core.toolkit import interpolation_mode

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_GAP = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class TinyClassifier(nn.Module):
    """conv-bn-relu-pool-conv-relu, global average pooling, linear head.

    ``conv_layer`` (``"features.conv2"``) is the last convolution, the usual choice for
    CAM-style methods.
    """

    conv_layer = "features.conv2"

    def __init__(self, rank: int = 2, in_channels: int = 3, classes: int = 4, width: int = 8):
        super().__init__()
        conv, bn, pool, gap = _CONV[rank], _BN[rank], _POOL[rank], _GAP[rank]
        self.rank = rank
        self.features = nn.Sequential(
            OrderedDict(
                conv1=conv(in_channels, width, 3, padding=1),
                bn1=bn(width),
                relu1=nn.ReLU(),
                pool1=pool(2),
                conv2=conv(width, width, 3, padding=1),
                relu2=nn.ReLU(),
            )
        )
        self.pool = gap(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class TinySegmenter(nn.Module):
    """A two-level encoder-decoder that returns ``classes`` logits per pixel/voxel."""

    conv_layer = "encoder.conv2"

    def __init__(self, rank: int = 2, in_channels: int = 1, classes: int = 3, width: int = 8):
        super().__init__()
        conv, bn, pool = _CONV[rank], _BN[rank], _POOL[rank]
        self.rank = rank
        self.encoder = nn.Sequential(
            OrderedDict(
                conv1=conv(in_channels, width, 3, padding=1),
                bn1=bn(width),
                relu1=nn.ReLU(),
                pool1=pool(2),
                conv2=conv(width, width, 3, padding=1),
                relu2=nn.ReLU(),
            )
        )
        mode = interpolation_mode(rank)
        self.up = nn.Upsample(scale_factor=2, mode=mode, align_corners=False)
        self.head = conv(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.encoder(x)))


def tiny_model(
    task: str = "classification", rank: int = 2, *, seed: int = 0, **kwargs: int
) -> nn.Module:
    """A seeded tiny model in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model: nn.Module
        if task == "classification":
            model = TinyClassifier(rank=rank, **kwargs)
        else:
            model = TinySegmenter(rank=rank, **kwargs)
        # non-trivial BatchNorm statistics so that train and eval modes differ
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def tiny_input(
    task: str = "classification", rank: int = 2, *, batch: int = 2, size: int = 0, seed: int = 0
) -> torch.Tensor:
    """A seeded input batch for :func:`tiny_model` (16 px for 2D, 8 voxels for 3D)."""
    size = size or (16 if rank <= 2 else 8)
    channels = 3 if task == "classification" else 1
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, channels) + (size,) * rank, generator=gen)


class PassRecorder(nn.Module):
    """``model``, recording each forward pass's batch size (``sizes``) and where its
    inputs live (``pointers``: a reused pass buffer shows as one address): for tests of
    how a method or the pass planner splits its passes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[int] = []
        self.pointers: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        self.pointers.append(x.data_ptr())
        return self.model(x)

"""``ExplainerClassifier``: any classifier trained jointly with an xML explainer.

Rio-Torto, Fernandes & Teixeira, "Understanding the decisions of CNNs: an in-model
approach", Pattern Recognition Letters 133 (2020), https://doi.org/10.1016/j.patrec.2020.04.004.

The explainer (:class:`~esegeta_xml.unet.ExplainerUNet`) maps the input to a one-channel
explanation in [0, 1); the classifier sees the same input, and at every multiplication
point (:mod:`esegeta_xml.points`) its feature map is multiplied by the explanation
average-pooled to that map's resolution. The classifier is thus forced to decide from
what the explainer keeps, and the explanation is, by construction, what it used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from esegeta_core.errors import InvalidModelError
from esegeta_xml.points import check_points, find_points, multiplying
from esegeta_xml.unet import ExplainerUNet, check_spatial_dims


class ExplainerClassifier(nn.Module):
    """A classifier and its xML explainer; ``forward`` returns the classifier's logits.

    Args:
        classifier: any ``nn.Module`` returning ``(B, classes)`` logits (2D or 3D).
        in_channels: channels of the input (for the default explainer).
        spatial_dims: 2 for images, 3 for volumes.
        multiply_after: module paths of ``classifier`` whose outputs are multiplied by
            the explanation; ``None`` asks ``adapter`` for them.
        adapter: ``"auto"`` (torchvision-style ResNet or VGG-style, detected), ``"resnet"``
            or ``"vgg"``; used only when ``multiply_after`` is ``None``.
        explainer: your own explainer module (``(B, C, *spatial)`` -> ``(B, 1, *spatial)``
            in [0, 1]); default :class:`ExplainerUNet` with ``widths`` and ``init_bias``.
        widths: channels per level of the default explainer.
        init_bias: the default explainer's head BatchNorm bias at initialisation.

    ``explanation(x)`` gives the map alone, ``forward_with_explanation(x)`` both. The
    hooks that multiply exist only during a forward, so ``model.classifier`` used on
    its own is the plain classifier again (it was trained with the multiplications,
    though, so its outputs alone differ from the joint model's).
    """

    def __init__(
        self,
        classifier: nn.Module,
        *,
        in_channels: int = 3,
        spatial_dims: int = 2,
        multiply_after: Sequence[str] | None = None,
        adapter: str = "auto",
        explainer: nn.Module | None = None,
        widths: Sequence[int] = (32, 64, 128),
        init_bias: float = 3.0,
    ) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise InvalidModelError(
                f"ExplainerClassifier: the classifier must be a torch.nn.Module, got "
                f"{type(classifier).__name__}."
            )
        self.spatial_dims = check_spatial_dims(spatial_dims, "ExplainerClassifier")
        self.classifier = classifier
        self.explainer = explainer or ExplainerUNet(
            in_channels, self.spatial_dims, widths=widths, init_bias=init_bias
        )
        points = list(multiply_after) if multiply_after is not None else None
        if points is None:
            points = find_points(classifier, adapter)
        self.multiply_after: list[str] = check_points(classifier, points)

    def explanation(self, x: torch.Tensor) -> torch.Tensor:
        """The explanation ``(B, 1, *spatial)`` in [0, 1) for input ``x``."""
        return self.explainer(x)

    def forward_with_explanation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, explanation)``: one explainer pass, one classifier pass."""
        z = self.explainer(x)
        if z.ndim != x.ndim or z.shape[1] != 1 or tuple(z.shape[2:]) != tuple(x.shape[2:]):
            raise InvalidModelError(
                f"ExplainerClassifier: the explainer must return (B, 1, *spatial) maps "
                f"shaped like the input's spatial dims; input {tuple(x.shape)} gave "
                f"{tuple(z.shape)}."
            )
        with multiplying(self.classifier, self.multiply_after, z):
            logits = self.classifier(x)
        return logits, z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits with its features multiplied by the explanation."""
        return self.forward_with_explanation(x)[0]

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, multiply_after={self.multiply_after}"

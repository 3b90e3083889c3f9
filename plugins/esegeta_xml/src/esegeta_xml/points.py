"""Where the explanation multiplies the classifier's feature maps, and how.

xML couples the explainer and the classifier by element-wise multiplications: at each
*multiplication point* the classifier's feature map is multiplied by the explanation,
down-sampled by average pooling to that map's resolution (the paper argues for average
rather than max pooling: a region's weight is the share of it the explainer keeps).

A point is the output of one named sub-module of the classifier. Adapters name them:

- :func:`resnet_points`: torchvision ResNets (and classifiers laid out like them, 2D or
  3D): after the stem (``maxpool``, or ``stem`` for ``torchvision.models.video``
  ResNets) and after every residual block (``layer1.0``, ``layer1.1``, ...).
- :func:`vgg_points`: VGG-style networks with a ``features`` ``nn.Sequential``: after
  every stage, that is on the output of the module just before each max pooling.
- any other classifier: pass the module paths yourself (``multiply_after=[...]``). A
  point in the middle of a ``forward`` that is no module's output: put an
  ``nn.Identity()`` there in your model and name it.

:func:`multiplying` registers one forward hook per point for the duration of a ``with``
block only, so the classifier is back to itself (no hooks) outside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from esegeta_core.errors import InvalidModelError, LayerNotFoundError, did_you_mean
from esegeta_core.toolkit import replacing_output

_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_POOL_FN = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def is_resnet(classifier: nn.Module) -> bool:
    """Laid out like a torchvision ResNet: ``layer1`` .. ``layer4`` sequences of blocks
    after a stem (``conv1``/``bn1``/``maxpool``, or one ``stem`` module) and an ``fc``."""
    stages = all(
        isinstance(getattr(classifier, f"layer{i}", None), nn.Sequential) for i in (1, 2, 3, 4)
    )
    stem = isinstance(getattr(classifier, "maxpool", None), nn.Module) or isinstance(
        getattr(classifier, "stem", None), nn.Module
    )
    return stages and stem and isinstance(getattr(classifier, "fc", None), nn.Module)


def resnet_points(classifier: nn.Module) -> list[str]:
    """After the stem and after every residual block of a ResNet-like classifier."""
    if not is_resnet(classifier):
        raise InvalidModelError(
            f"resnet_points: {type(classifier).__name__} is not laid out like a torchvision "
            "ResNet (layer1..layer4 sequences, a stem 'maxpool' or 'stem', an 'fc'). Name "
            "the multiplication points yourself: multiply_after=['module.path', ...]."
        )
    stem = "maxpool" if isinstance(getattr(classifier, "maxpool", None), nn.Module) else "stem"
    points = [stem]
    for i in (1, 2, 3, 4):
        layer = getattr(classifier, f"layer{i}")
        points += [f"layer{i}.{name}" for name, _ in layer.named_children()]
    return points


def is_vgg(classifier: nn.Module) -> bool:
    """VGG-style: a ``features`` ``nn.Sequential`` with max pooling between stages."""
    features = getattr(classifier, "features", None)
    return isinstance(features, nn.Sequential) and any(
        isinstance(m, _MAXPOOL) for m in list(features.children())[1:]
    )


def vgg_points(classifier: nn.Module) -> list[str]:
    """After every stage of a VGG-style classifier, before its max pooling."""
    if not is_vgg(classifier):
        raise InvalidModelError(
            f"vgg_points: {type(classifier).__name__} has no 'features' nn.Sequential with "
            "max pooling layers. Name the multiplication points yourself: "
            "multiply_after=['module.path', ...]."
        )
    children = list(classifier.features.named_children())
    return [
        f"features.{children[i - 1][0]}"
        for i, (_, module) in enumerate(children)
        if i > 0 and isinstance(module, _MAXPOOL)
    ]


ADAPTERS = {"resnet": resnet_points, "vgg": vgg_points}
"""Adapter name -> function naming a classifier's multiplication points."""


def find_points(classifier: nn.Module, adapter: str = "auto") -> list[str]:
    """The multiplication points of ``classifier`` by ``adapter`` (``"resnet"``,
    ``"vgg"``, or ``"auto"``: whichever layout the classifier has)."""
    if adapter in ADAPTERS:
        return ADAPTERS[adapter](classifier)
    if adapter != "auto":
        raise InvalidModelError(
            f"Unknown adapter {adapter!r}: choose 'auto', 'resnet' or 'vgg', or pass "
            "multiply_after=['module.path', ...]."
        )
    if is_resnet(classifier):
        return resnet_points(classifier)
    if is_vgg(classifier):
        return vgg_points(classifier)
    raise InvalidModelError(
        f"xML cannot tell where to multiply the features of {type(classifier).__name__} "
        "by the explanation: it is neither a torchvision-style ResNet nor VGG-style. Pass "
        "the module paths whose outputs to multiply, e.g. "
        "ExplainerClassifier(classifier, multiply_after=['block1', 'block2']). Modules of "
        f"this classifier: {_sample(classifier)}."
    )


def check_points(classifier: nn.Module, points: Sequence[str]) -> list[str]:
    """``points`` as a list after checking that each names a sub-module."""
    if isinstance(points, str) or not points:
        raise InvalidModelError(
            "multiply_after must be a non-empty list of module paths of the classifier, "
            f"got {points!r}. Modules of this classifier: {_sample(classifier)}."
        )
    names = [n for n, _ in classifier.named_modules() if n]
    for path in points:
        try:
            classifier.get_submodule(path)
        except AttributeError:
            raise LayerNotFoundError(
                f"multiply_after: {path!r} is not a module of {type(classifier).__name__}."
                + did_you_mean(path, names)
                + f" Modules of this classifier: {_sample(classifier)}."
            ) from None
    return list(points)


def pool_to(explanation: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``explanation`` ``(B, 1, *spatial)`` average-pooled to ``features``' spatial size."""
    size = tuple(features.shape[2:])
    if tuple(explanation.shape[2:]) == size:
        return explanation
    return _POOL_FN[explanation.ndim - 2](explanation, size)


@contextlib.contextmanager
def multiplying(
    classifier: nn.Module, points: Sequence[str], explanation: torch.Tensor
) -> Iterator[None]:
    """Within the block, the outputs of ``points`` (module paths of ``classifier``) are
    multiplied by ``explanation`` average-pooled to their resolution; the forward hooks
    that do it are removed on exit, whatever happens."""
    cache: dict[tuple[int, ...], torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        for path in points:
            module = classifier.get_submodule(path)
            stack.enter_context(replacing_output(module, _multiplier(path, explanation, cache)))
        yield


def _multiplier(
    path: str, explanation: torch.Tensor, cache: dict[tuple[int, ...], torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The output of point ``path`` times ``explanation`` pooled to its resolution (one
    pooling per resolution, shared through ``cache``)."""

    def multiply(output: torch.Tensor) -> torch.Tensor:
        if (
            not isinstance(output, torch.Tensor)
            or output.ndim != explanation.ndim
            or output.shape[0] != explanation.shape[0]
        ):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            raise InvalidModelError(
                f"xML multiplication point {path!r}: its output must be a feature map "
                f"shaped (B={explanation.shape[0]}, C, *{explanation.ndim - 2} spatial "
                f"dims), got {type(output).__name__} {shape}. Pick a module that "
                "outputs convolutional feature maps."
            )
        size = tuple(output.shape[2:])
        if size not in cache:
            cache[size] = pool_to(explanation, output).to(output.dtype)
        return output * cache[size]

    return multiply


def _sample(model: nn.Module, limit: int = 16) -> str:
    names = [n for n, _ in model.named_modules() if n]
    shown = ", ".join(names[:limit])
    return (shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")) or "(none)"

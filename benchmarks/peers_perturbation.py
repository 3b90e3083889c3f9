"""The peers of ``bench_perturbation.py``: what a user would call instead of esegeta.

Each builder returns a no-argument callable that runs the peer once on the benchmark's
model and input, with the peer's defaults except what must match the esegeta row (the
windows, feature masks, sample and mask counts, the layer). Peers are imported when a
builder runs, so listing rows needs none of them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from esegeta_core.targets import MultiClassScores

_MULTI_CLASS = MultiClassScores()

Peer = Callable[[], Any]


def grid_mask(spatial: Sequence[int], cells: Sequence[int], device: torch.device) -> torch.Tensor:
    """``(1, 1, *spatial)`` integer feature ids of a grid of ``cells`` (one size per dim)."""
    ids = torch.zeros((), dtype=torch.long)
    for dim, (extent, cell) in enumerate(zip(spatial, cells, strict=True)):
        count = -(-extent // cell)
        shape = [1] * len(spatial)
        shape[dim] = extent
        ids = ids * count + (torch.arange(extent) // cell).view(shape)
    return ids.view(1, 1, *spatial).to(device)


def multi_class_sums(out: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` logits to ``(B, C)``: each class's logits summed where it wins.

    esegeta's own reduction (``MultiClassScores``), so that the peers and esegeta pay the
    same for it and the rows compare the methods' machinery. What a user would write
    (``out.argmax(1)`` and a scatter) is ~25x slower on a CPU: PyTorch's argmax over the
    class dimension of a 3D output costs several forward passes of a small U-Net."""
    return _MULTI_CLASS(out)


def captum(
    name: str,
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    layer: nn.Module | None = None,
    target: int | None = 0,
    **kwargs: Any,
) -> Peer:
    """Captum's ``captum.attr.<name>`` with its defaults (``perturbations_per_eval=1``),
    built and called as a user would, per explanation."""
    from captum import attr

    cls = getattr(attr, name)
    extra = {} if target is None else {"target": target}

    def run() -> Any:
        algorithm = cls(model) if layer is None else cls(model, layer)
        return algorithm.attribute(x, **extra, **kwargs)

    return run


def monai_occlusion(
    model: nn.Module, x: torch.Tensor, window: int, activate: bool | Callable[..., Any] = True
) -> Peer:
    """MONAI's ``OcclusionSensitivity``: its defaults (``n_batch=16``, Gaussian occlusion)
    but ``mask_size=window`` and ``overlap=0`` for the same windows as the esegeta row;
    no progress bar; run under ``torch.no_grad()`` (MONAI does not turn gradients off)."""
    from monai.visualize import OcclusionSensitivity

    sensitivity = OcclusionSensitivity(
        model, mask_size=window, overlap=0.0, verbose=False, activate=activate
    )

    def run() -> Any:
        with torch.no_grad():
            return sensitivity(x)

    return run


def torchray_rise(model: nn.Module, x: torch.Tensor, masks: int) -> Peer:
    """TorchRay's ``rise`` with its defaults (32 masks per pass, seed 0; every class
    scored and accumulated)."""
    from torchray.attribution.rise import rise

    def run() -> Any:
        return rise(model, x, num_masks=masks)

    return run


def lime_image(model: nn.Module, x: torch.Tensor, samples: int, n_segments: int) -> Peer:
    """lime's ``LimeImageExplainer().explain_instance`` on the one item, with its defaults
    (``batch_size=10``, ``hide_color=None``, ``num_features=100000``, cosine kernel)
    but ``labels=(0,)``, ``top_labels=None``, ``num_samples`` and the SLIC segmentation
    of ``lime.lime`` (Lab space, compactness 10); a classifier returning softmax
    probabilities of (n, H, W, C) arrays."""
    from lime import lime_image as li
    from skimage.segmentation import slic

    item = x[0].detach().float().cpu()
    low, high = item.min(), item.max()
    image = ((item - low) / (high - low)).permute(1, 2, 0).double().numpy()
    device = x.device

    def classifier(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).to(device, torch.float32)
        with torch.no_grad():
            return torch.softmax(model(batch), 1).cpu().numpy()

    def segmentation(img: np.ndarray) -> np.ndarray:
        return slic(
            img,
            n_segments=n_segments,
            compactness=10.0,
            channel_axis=-1,
            convert2lab=True,
            start_label=0,
        )

    def run() -> Any:
        return li.LimeImageExplainer().explain_instance(
            image,
            classifier,
            top_labels=None,
            labels=(0,),
            num_samples=samples,
            batch_size=10,
            segmentation_fn=segmentation,
        )

    return run


def grad_cam(kind: str, model: nn.Module, x: torch.Tensor, layer: str) -> Peer:
    """pytorch-grad-cam's ``ScoreCAM`` (16 masked inputs per pass) or ``AblationCAM``
    (32 per pass) at ``layer`` with ``ClassifierOutputTarget(0)``. It runs on a copy of
    the model (same weights): AblationCAM swaps the layer out during the call and leaves
    it swapped when it fails; its hooks are released after every call."""
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"score": ScoreCAM, "ablation": AblationCAM}[kind]
    net = copy.deepcopy(model)
    module = net.get_submodule(layer)
    targets = [ClassifierOutputTarget(0) for _ in range(x.shape[0])]

    def run() -> Any:
        cam = cls(net, target_layers=[module])
        try:
            return cam(input_tensor=x, targets=targets)
        finally:
            cam.activations_and_grads.release()

    return run

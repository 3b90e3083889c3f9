"""Vision transformers built in code with random weights, offered as fixtures: each
fixture named after a model gives its builder (a fresh model per call), and
``model_builders`` every model the tests compare against references, by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest
import torch
from torch import nn

from esegeta_core.devices import torch_threads


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small models are as fast on one thread; several oversubscribe a shared machine."""
    with torch_threads(1):
        yield


# ---------------------------------------------------------------------------- models


def _timm_vit(**kwargs: object) -> nn.Module:
    import timm

    torch.manual_seed(0)
    args = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 5, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def _timm_deit() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
        depth=2, num_classes=5,
    ).eval()  # fmt: skip


def _torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=5,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises it
    return model.eval()


def _monai_unetr() -> nn.Module:
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    return UNETR(
        in_channels=1, out_channels=3, img_size=32, feature_size=8, hidden_size=96,
        mlp_dim=192, num_heads=4, spatial_dims=3,
    ).eval()  # fmt: skip


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=3, intermediate_size=96, num_labels=5,
    )  # fmt: skip
    return ViTForImageClassification(config).eval()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "timm_vit": _timm_vit,
    "timm_deit_distilled": _timm_deit,
    "timm_vit_registers": lambda: _timm_vit(reg_tokens=4),
    "torchvision_vit": _torchvision_vit,
    "monai_unetr_3d": _monai_unetr,
    "huggingface_vit": _hf_vit,
}
"""Every model the methods are compared on, by name."""


@pytest.fixture(scope="session")
def model_builders() -> Mapping[str, Callable[[], nn.Module]]:
    """Every model the methods are compared on: name -> builder."""
    return BUILDERS


@pytest.fixture(scope="session")
def timm_vit() -> Callable[..., nn.Module]:
    """timm's ViT-Tiny (2 blocks, 32x32 input, 8x8 patches); keywords go to timm."""
    return _timm_vit


@pytest.fixture(scope="session")
def torchvision_vit() -> Callable[[], nn.Module]:
    """torchvision's VisionTransformer (2 blocks, 32x32 input, 8x8 patches)."""
    return _torchvision_vit


@pytest.fixture(scope="session")
def monai_unetr() -> Callable[[], nn.Module]:
    """MONAI's 3D UNETR (32^3 input, no class token)."""
    return _monai_unetr

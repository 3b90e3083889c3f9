"""RISE, Score-CAM and Ablation-CAM with planned passes on a CUDA GPU (issue 19),
skipped without one (CI has none): the ``auto_batch`` maps equal the fixed-batch maps
on a torchvision ResNet-18 and a MONAI DenseNet in 3D, on the model's device."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import esegeta_core as ec
from esegeta_core.model_state import count_hooks
from esegeta_core.runtime import passes, precision

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (CI and this machine have none)"
)


@pytest.fixture(autouse=True)
def _fresh_plans_in_float32() -> Iterator[None]:
    """No plans cached, and no TF32 (its rounding differs with the pass size)."""
    passes.clear_plans()
    with precision.tf32(False):  # the process's flags come back after
        yield
    passes.clear_plans()


def _resnet() -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=5).eval().cuda()


def _densenet3d() -> nn.Module:
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    net = DenseNet(
        spatial_dims=3, in_channels=1, out_channels=3, init_features=8, growth_rate=8,
        block_config=(2, 2, 2, 2),
    )  # fmt: skip
    return net.eval().cuda()


VOLUME = (2, 1, 32, 32, 32)
CASES = [
    ("cnnvis.rise", _resnet, (2, 3, 32, 32), 1, {"num_masks": 300, "mask_seed": 5}),
    ("cnnvis.rise", _densenet3d, VOLUME, 1, {"num_masks": 100, "mask_seed": 5}),
    ("cnnvis.score_cam", _resnet, (2, 3, 32, 32), 1, {"layer": "layer2"}),
    ("cnnvis.score_cam", _densenet3d, VOLUME, 1, {"layer": "features.transition1"}),
    ("cnnvis.ablation_cam", _resnet, (2, 3, 32, 32), 1, {"layer": "layer3"}),
    # class 2: the random DenseNet's Ablation-CAM maps of classes 0 and 1 are all zero
    ("cnnvis.ablation_cam", _densenet3d, VOLUME, 2, {"layer": "features.transition2"}),
]


@pytest.mark.parametrize(("method", "build", "shape", "target", "params"), CASES)
def test_auto_batch_on_cuda_equals_the_fixed_batch(method, build, shape, target, params) -> None:
    model = build()
    torch.manual_seed(1)
    x = torch.rand(*shape, device="cuda")
    fixed = ec.explain(model, x, method, target, batch_size=8, progress=False, **params)
    planned = ec.explain(model, x, method, target, auto_batch=True, progress=False, **params)
    want, got = fixed.attributions, planned.attributions
    assert got.device.type == "cuda" and bool(torch.isfinite(got).all())
    assert float(want.abs().max()) > 0  # not an empty map
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    assert planned.extras["pass_plan"]["inputs_per_pass"] >= 1
    assert count_hooks(model) == 0 and not model.training

"""Planned perturbation passes on a CUDA GPU (issue 19), skipped without one (CI has
none): ``auto_batch`` maps equal the fixed-batch maps on real architectures, 2D and 3D,
equal the CPU's, and a real out-of-memory error in a planned pass is split and retried
with the same map."""

from __future__ import annotations

import logging
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

GRID = {"feature_mask": "grid", "grid_cell": 8}
METHODS = {
    "captum.occlusion": {"window": 8, "strides": 4},
    "captum.feature_ablation": GRID,
    "captum.shapley_value_sampling": {**GRID, "n_samples": 2},
    "captum.kernel_shap": {**GRID, "n_samples": 64},
    "captum.lime": {**GRID, "n_samples": 64, "alpha": 1e-5},  # the default 0.01 zeroes it
}


@pytest.fixture(autouse=True)
def _fresh_plans() -> None:
    passes.clear_plans()


@pytest.fixture
def float32() -> Iterator[None]:
    """No TF32 around the test: cuDNN's TF32 convolutions round scores at about 1e-3 of
    their size, differently for each pass size (a choice of algorithm), which would
    hide what these tests compare (the process's flags come back after)."""
    with precision.tf32(False):
        yield


def _close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    scale = max(float(want.abs().max()), 1e-12)
    assert got.shape == want.shape and bool(torch.isfinite(got).all())
    assert float((got - want).abs().max()) <= rel * scale


def _resnet() -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=10).eval().cuda()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_auto_batch_on_cuda_equals_the_fixed_batch(method: str, float32: None) -> None:
    model = _resnet()
    x = torch.rand(2, 3, 32, 32, device="cuda")
    target = torch.tensor([1, 7])
    kw = {**METHODS[method], "progress": False}
    torch.manual_seed(3)
    fixed = ec.explain(model, x, method, target, **kw)
    torch.manual_seed(3)
    auto = ec.explain(model, x, method, target, auto_batch=True, **kw)
    assert auto.attributions.device.type == "cuda"
    assert float(fixed.attributions.abs().max()) > 0  # not an empty map
    _close(auto.attributions, fixed.attributions, 1e-4)
    assert auto.extras["pass_plan"]["inputs_per_pass"] >= 1
    assert count_hooks(model) == 0 and not model.training


@pytest.mark.parametrize("method", ["captum.occlusion", "captum.feature_ablation"])
def test_planned_cuda_maps_equal_the_cpus(method: str, float32: None) -> None:
    model = _resnet()
    x = torch.rand(2, 3, 32, 32, device="cuda")
    target = torch.tensor([1, 7])
    kw = {**METHODS[method], "progress": False}
    gpu = ec.explain(model, x, method, target, auto_batch=True, **kw)
    cpu = ec.explain(model.cpu(), x.cpu(), method, target, **kw)
    _close(gpu.attributions.cpu(), cpu.attributions, 1e-3)  # cuDNN's sums round otherwise


def test_3d_segmentation_occlusion_on_cuda_equals_the_fixed_batch(float32: None) -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    model = UNet(
        spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2)
    )
    model = model.eval().cuda()
    x = torch.rand(2, 1, 32, 32, 32, device="cuda")
    kw = {"task": "segmentation", "window": 8, "strides": 8, "progress": False}
    fixed = ec.explain(model, x, "captum.occlusion", 1, **kw)
    auto = ec.explain(model, x, "captum.occlusion", 1, auto_batch=True, **kw)
    assert float(fixed.attributions.abs().max()) > 0
    _close(auto.attributions, fixed.attributions, 1e-4)


class _Wide(nn.Module):
    """4 MB of activations per 64 x 64 input: passes of a few dozen fill a small cap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 256, 3, padding=1)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_a_real_out_of_memory_in_a_planned_pass_is_split_and_the_map_unchanged(
    caplog: pytest.LogCaptureFixture, float32: None
) -> None:
    """The allocator is capped a little above what the test holds, so that the planner's
    passes (it plans from the card's free memory, far above the cap) run out of memory:
    each such pass is split in halves and retried, and the map is the uncapped one."""
    torch.manual_seed(0)
    model = _Wide().eval().cuda()
    x = torch.rand(1, 3, 64, 64, device="cuda")
    kw = {"window": 4, "strides": 4, "progress": False}  # 256 windows, 257 passes
    want = ec.explain(model, x, "captum.occlusion", 3, perturbations_per_eval=4, **kw)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    room = torch.cuda.memory_reserved() + 96 * 2**20  # about 20 inputs' activations
    torch.cuda.set_per_process_memory_fraction(room / total)
    try:
        with caplog.at_level(logging.WARNING):
            got = ec.explain(model, x, "captum.occlusion", 3, auto_batch=True, **kw)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert "out of memory" in caplog.text
    _close(got.attributions, want.attributions, 1e-5)


def test_where_the_process_allows_tf32_the_map_still_does_not_depend_on_the_pass_size() -> None:
    """PyTorch's default lets cuDNN use TF32; without ``amp`` a call computes in float32
    all the same (on an H200, TF32 moved this method's maps by 3% between pass sizes).
    No ``float32`` fixture: the process's own flags are what this test is about."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        model = _resnet()
        x = torch.rand(2, 3, 32, 32, device="cuda")
        target = torch.tensor([1, 7])
        kw = {**METHODS["captum.occlusion"], "progress": False}
        one = ec.explain(model, x, "captum.occlusion", target, perturbations_per_eval=1, **kw)
        auto = ec.explain(model, x, "captum.occlusion", target, auto_batch=True, **kw)
        _close(auto.attributions, one.attributions, 1e-4)
        assert torch.backends.cudnn.allow_tf32  # the process's setting, back after the call
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

"""GPU paths, skipped without CUDA (CI has no GPU): maps on the model's device and equal
to the CPU's, mixed precision on CUDA, patches with the volume on the GPU, scheduler
slots on GPUs."""

from __future__ import annotations

import pytest
import torch

import esegeta_core as ec
from esegeta_core.runtime.scheduler import default_devices, run_jobs
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.testing.jobs import scripted_runner

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (CI and this machine have none)"
)


@pytest.mark.parametrize("rank", [2, 3])
def test_maps_come_back_on_the_models_device_and_equal_the_cpus(demo, rank):
    x = tiny_input("classification", rank)  # on the CPU: explain() moves it
    cpu = ec.explain(tiny_model("classification", rank), x, "demo.grad_x_input", target=1)
    model = tiny_model("classification", rank).cuda()
    e = ec.explain(model, x, "demo.grad_x_input", target=1)
    assert e.attributions.device.type == "cuda"
    torch.testing.assert_close(e.attributions.cpu(), cpu.attributions, atol=1e-5, rtol=1e-4)
    assert next(model.parameters()).device.type == "cuda" and not model.training


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_gives_float32_maps_close_to_float32(demo, amp):
    model = tiny_model("classification", 3).cuda()
    x = tiny_input("classification", 3, size=16).cuda()
    ref = ec.explain(model, x, "demo.grad_x_input", target=1).attributions
    e = ec.explain(model, x, "demo.grad_x_input", target=1, amp=amp)
    assert e.attributions.dtype == torch.float32 and bool(torch.isfinite(e.attributions).all())
    corr = torch.corrcoef(torch.stack([ref.flatten(), e.attributions.flatten()]))[0, 1]
    assert float(corr) >= 0.99


def test_patches_on_the_gpu_equal_the_cpu(demo):
    x = tiny_input("segmentation", 3, size=16)
    kw = {"target": 1, "task": "segmentation", "patches": {"size": 8}, "progress": False}
    cpu = ec.explain(tiny_model("segmentation", 3), x, "demo.grad_x_input", **kw)
    gpu = ec.explain(tiny_model("segmentation", 3).cuda(), x.cuda(), "demo.grad_x_input", **kw)
    assert gpu.attributions.device.type == "cuda"
    torch.testing.assert_close(gpu.attributions.cpu(), cpu.attributions, atol=1e-5, rtol=1e-4)


def test_scheduler_runs_jobs_on_gpu_slots():
    devices = default_devices(jobs_per_gpu=2)
    assert devices and all(d.startswith("cuda:") for d in devices)
    jobs = [(f"j{i}", {"value": i}) for i in range(4)]
    results = run_jobs(jobs, scripted_runner, devices=devices, progress=False)
    assert [r.status for r in results] == ["ok"] * 4
    assert {r.device for r in results} <= set(devices)


@pytest.mark.parametrize("amp", [None, "fp16"])
def test_tuned_curves_on_cuda_equal_fixed_passes(amp):
    from esegeta_core.evaluation import deletion
    from esegeta_core.runtime import passes

    model = tiny_model("classification", 2).cuda()
    gen = torch.Generator().manual_seed(0)
    x, a = torch.rand(16, 3, 16, 16, generator=gen), torch.rand(16, 1, 16, 16, generator=gen)
    passes.clear_plans()
    auto = deletion(model, x.cuda(), 1, a.cuda(), steps=64, amp=amp)  # 16 x 65: tunes
    fixed = deletion(model, x.cuda(), 1, a.cuda(), steps=64, batch_size=64, amp=amp)
    assert len(passes._plans[model]) == 1
    torch.testing.assert_close(auto.curve, fixed.curve, atol=1e-2 if amp else 1e-5, rtol=0)


class _SeesTF32(torch.nn.Module):
    """A model that notes whether cuDNN may use TF32 while it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.backends.cudnn.allow_tf32)
        return self.conv(x).mean((2, 3))


@pytest.mark.parametrize(("amp", "tf32"), [(None, False), ("tf32", True)])
def test_a_call_on_cuda_computes_without_tf32_unless_amp_allows_it(demo, amp, tf32):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = not tf32
    try:
        model = _SeesTF32().cuda()
        x = torch.rand(2, 3, 8, 8, device="cuda")
        # target None: the prediction pass too (a perturbation method's reference)
        ec.explain(model, x, "demo.grad_x_input", target=None, amp=amp)
        assert len(model.seen) >= 2 and set(model.seen) == {tf32}
        assert torch.backends.cudnn.allow_tf32 is (not tf32)  # the process's, restored
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

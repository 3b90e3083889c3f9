"""Benchmark: cnnvis gradient methods and RISE against their compute floor.

Each method is timed side by side (interleaved, best of ``--repeats``) with the bare
passes it needs at the same batch sizes (its "floor"):

- vanilla / guided / deconvnet / gradient x input: one forward + backward;
- integrated gradients: ceil(n_steps / internal_batch_size) forward + backward passes
  on batch x internal_batch_size inputs;
- SmoothGrad: ceil(noise_samples / noise_batch_size) forward + backward passes;
- RISE: one forward per mask, batch_size masks per pass (masks given, not generated);
- RISE vs TorchRay's ``rise`` on the same number of masks and batch size (2D only).

Models: torchvision ``resnet18(weights=None)`` (2D) and a small two-level 3D U-Net
defined here (segmentation, scored like ``explain`` does). Run as a script::

    python benchmarks/bench_cnnvis_gradients.py --device cpu --quick --out bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable

import torch
from torch import nn

from esegeta_core import MultiClassScores, ScoreModel, get_registry


class UNet3D(nn.Module):
    """Two levels (16 / 32 channels), conv-BN-ReLU blocks, trilinear up-sampling."""

    def __init__(self, in_channels: int = 1, classes: int = 3) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(i, o, 3, padding=1), nn.BatchNorm3d(o), nn.ReLU(),
                nn.Conv3d(o, o, 3, padding=1), nn.BatchNorm3d(o), nn.ReLU(),
            )  # fmt: skip

        self.enc = block(in_channels, 16)
        self.down = nn.MaxPool3d(2)
        self.mid = block(16, 32)
        self.up = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.dec = block(48, 16)
        self.head = nn.Conv3d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        m = self.up(self.mid(self.down(e)))
        return self.head(self.dec(torch.cat([e, m], 1)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def compare(
    ours: Callable[[], object], floor: Callable[[], object], device: torch.device, repeats: int
) -> tuple[float, float]:
    """Best-of-N seconds of ``ours`` and ``floor`` after a warm-up, interleaved in
    alternating order; cheap cases get more repeats (up to about 3 s each)."""
    warm = _time(ours, device)
    floor()
    repeats = max(repeats, min(15, int(3.0 / max(warm, 1e-3))))
    best_ours = best_floor = math.inf
    for i in range(repeats):
        order = [(0, ours), (1, floor)] if i % 2 == 0 else [(1, floor), (0, ours)]
        for which, fn in order:
            t = _time(fn, device)
            if which == 0:
                best_ours = min(best_ours, t)
            else:
                best_floor = min(best_floor, t)
    return best_ours, best_floor


def fwd_bwd(model: nn.Module, x: torch.Tensor, target: torch.Tensor, passes: int, per: int):
    """``passes`` bare forward + backward passes on ``x`` repeated ``per`` times."""
    xs = x.repeat(per, *([1] * (x.ndim - 1)))
    ts = target.repeat(per)

    def run() -> None:
        for _ in range(passes):
            xg = xs.detach().requires_grad_(True)
            score = model(xg).gather(1, ts[:, None]).sum()
            torch.autograd.grad(score, xg)

    return run


def forwards(model: nn.Module, x: torch.Tensor, masks: torch.Tensor, batch: int):
    """RISE floor: one forward per mask per item, ``batch`` masks per pass."""

    def run() -> None:
        with torch.no_grad():
            for i in range(x.shape[0]):
                for s in range(0, masks.shape[0], batch):
                    model(x[i : i + 1] * masks[s : s + batch])

    return run


def bench_model(
    model_name: str,
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    repeats: int,
    *,
    batch: int,
    steps: int,
    ibs: int,
    samples: int,
    nbs: int,
    masks_2d: int,
    masks_3d: int,
    mask_batch: int,
) -> list[dict[str, object]]:
    """Every case on one model; prints a table row per case."""
    registry = get_registry()
    rows: list[dict[str, object]] = []
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    target = torch.arange(batch, device=device) % classes
    masks_n = masks_2d if x.ndim == 4 else masks_3d

    def method(name: str, tgt: torch.Tensor = target, xx: torch.Tensor = x, **params):
        cls = registry.get(name)
        p = cls.Params(**params)
        return lambda: cls().attribute(model, xx, tgt, p)

    one = fwd_bwd(model, x, target, 1, 1)
    cases: list[tuple[str, Callable[[], object], Callable[[], object], str]] = [
        ("vanilla_backprop", method("cnnvis.vanilla_backprop"), one, "1 fwd+bwd"),
        ("guided_backprop", method("cnnvis.guided_backprop"), one, "1 fwd+bwd"),
        ("deconvnet", method("cnnvis.deconvnet"), one, "1 fwd+bwd"),
        ("gradient_x_input", method("cnnvis.gradient_x_input"), one, "1 fwd+bwd"),
        (
            f"integrated_gradients n_steps={steps} ibs={ibs}",
            method("cnnvis.integrated_gradients", n_steps=steps, internal_batch_size=ibs),
            fwd_bwd(model, x, target, math.ceil(steps / ibs), ibs),
            f"{math.ceil(steps / ibs)} fwd+bwd at batch {batch * ibs}",
        ),
        (
            f"smoothgrad samples={samples} nbs={nbs}",
            method("cnnvis.smoothgrad", noise_samples=samples, noise_batch_size=nbs),
            fwd_bwd(model, x, target, math.ceil(samples / nbs), nbs),
            f"{math.ceil(samples / nbs)} fwd+bwd at batch {batch * nbs}",
        ),
    ]
    spatial = tuple(x.shape[2:])
    from esegeta_cnnvis.rise import rise_masks

    fixed = rise_masks(masks_n, (7,) * len(spatial), spatial, 0.5, device=device)
    one_item, one_target = x[:1], target[:1]
    cases.append(
        (
            f"rise masks={masks_n} batch={mask_batch} (1 item)",
            method("cnnvis.rise", one_target, one_item, num_masks=masks_n, batch_size=mask_batch),
            forwards(model, one_item, fixed, mask_batch),
            f"{masks_n} forwards, {mask_batch} per pass",
        )
    )
    if x.ndim == 4:
        from torchray.attribution.rise import rise as torchray_rise

        cases.append(
            (
                f"rise vs torchray masks={masks_n} batch={mask_batch} (1 item)",
                method(
                    "cnnvis.rise",
                    one_target,
                    one_item,
                    num_masks=masks_n,
                    batch_size=mask_batch,
                    scores="sigmoid",
                ),
                lambda: torchray_rise(
                    model, one_item, num_masks=masks_n, batch_size=mask_batch, num_cells=7
                ),
                "torchray.attribution.rise.rise",
            )
        )
    for label, ours, floor, what in cases:
        t_ours, t_floor = compare(ours, floor, device, repeats)
        row = {
            "model": model_name,
            "input": list(x.shape if "rise" not in label else one_item.shape),
            "method": label,
            "reference": what,
            "ours_s": round(t_ours, 4),
            "reference_s": round(t_floor, 4),
            "ratio": round(t_ours / t_floor, 3),
        }
        rows.append(row)
        print(
            f"{model_name:12s} {label:48s} {t_ours:8.3f}s {t_floor:8.3f}s "
            f"x{row['ratio']:.2f}  ({what})",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small sizes for a few-minute run")
    ap.add_argument("--size", type=int, default=0, help="2D image size (default 224, quick 112)")
    ap.add_argument("--size3d", type=int, default=0, help="3D volume size (default 64, quick 32)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default 4, quick 2)")
    ap.add_argument("--repeats", type=int, default=0, help="timed repeats (default 3, quick 2)")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    args = ap.parse_args()

    device = torch.device(args.device)
    quick = args.quick
    size = args.size or (112 if quick else 224)
    size3d = args.size3d or (32 if quick else 64)
    batch = args.batch or (2 if quick else 4)
    repeats = args.repeats or (2 if quick else 3)
    steps, ibs = (16, 8) if quick else (32, 8)
    samples, nbs = (8, 4) if quick else (16, 8)
    masks_2d, masks_3d, mask_batch = (400, 200, 50) if quick else (2000, 1000, 100)
    torch.manual_seed(0)

    from torchvision.models import resnet18

    models = {
        "resnet18-2d": (
            resnet18(weights=None).eval().to(device),
            torch.rand(batch, 3, size, size, device=device),
        ),
        "unet-3d": (
            ScoreModel(UNet3D().eval().to(device), MultiClassScores()),
            torch.rand(batch, 1, size3d, size3d, size3d, device=device),
        ),
    }
    sizes = {
        "batch": batch, "steps": steps, "ibs": ibs, "samples": samples, "nbs": nbs,
        "masks_2d": masks_2d, "masks_3d": masks_3d, "mask_batch": mask_batch,
    }  # fmt: skip
    rows = []
    for model_name, (model, x) in models.items():
        rows += bench_model(model_name, model, x, device, repeats, **sizes)
    if args.out:
        meta = {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "quick": quick,
            "repeats": repeats,
        }
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()

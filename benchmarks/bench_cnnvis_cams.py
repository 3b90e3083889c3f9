"""Speed of esegeta-cnnvis's CAMs against their compute floor and against pytorch-grad-cam.

Two models: torchvision's ResNet-18 (random weights, batch 1) and a small 3D U-Net
(2 levels, 16/32 channels) explained through ``ScoreModel(model, MultiClassScores())``.
For each CAM, its ``attribute`` call is timed side by side with the bare passes it
cannot avoid (its "floor"):

- gradient CAMs: one forward + one backward of the target score to the input;
- guided Grad-CAM: two of those (Grad-CAM, then guided backpropagation);
- CAM, Eigen-CAM: one forward;
- Score-CAM / Ablation-CAM: one forward, plus ``ceil(B*K / batch_size)`` forwards of
  ``batch_size`` inputs (one per channel, at the method's batch size).

Also Score-CAM against pytorch-grad-cam's ``ScoreCAM`` on the same model, layer,
target and batch size (its 5D input crashes: recorded as such). Timings are medians
over interleaved repeats; ratios are ours / reference. Run::

    python benchmarks/bench_cnnvis_cams.py --device cpu --quick --out cams.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's ScoreCAM progress bars

import torch
from esegeta_cnnvis import cams
from torch import nn

import esegeta_core
from esegeta_core import validate_params

GRADIENT = ["grad_cam", "grad_cam_pp", "xgrad_cam", "hires_cam", "layer_cam"]
BATCHED = ["score_cam", "ablation_cam"]
METHODS = ["cam", *GRADIENT, "guided_grad_cam", "eigen_cam", *BATCHED]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1),
        nn.BatchNorm3d(cout),
        nn.ReLU(),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.BatchNorm3d(cout),
        nn.ReLU(),
    )


class UNet3d(nn.Module):
    """A two-level 3D U-Net: 16 channels at full resolution, 32 at half."""

    def __init__(self, in_channels: int = 1, classes: int = 3) -> None:
        super().__init__()
        self.enc = _block(in_channels, 16)
        self.pool = nn.MaxPool3d(2)
        self.bottleneck = _block(16, 32)
        self.up = nn.ConvTranspose3d(32, 16, 2, stride=2)
        self.dec = _block(32, 16)
        self.head = nn.Conv3d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        up = self.up(self.bottleneck(self.pool(skip)))
        return self.head(self.dec(torch.cat([skip, up], 1)))


def _say(*parts: object, flush: bool = True) -> None:
    print(*parts, flush=flush)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict:
    """Median seconds of each function, run interleaved after one warm-up each."""
    for fn in fns.values():
        fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _floor(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str, channels: int, bs: int
) -> Callable[[], None]:
    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        xg = x.detach().requires_grad_(True)
        score = model(xg).gather(1, target.view(-1, 1)).sum()
        torch.autograd.grad(score, xg)

    def batched() -> None:
        forward()
        rows = x.shape[0] * channels
        chunk = x[:1].expand(min(bs, rows), *x.shape[1:]).contiguous()
        with torch.no_grad():
            for start in range(0, rows, bs):
                model(chunk[: min(bs, rows - start)])

    if method in GRADIENT:
        return forward_backward
    if method == "guided_grad_cam":
        return lambda: (forward_backward(), forward_backward())  # type: ignore[func-returns-value]
    if method in BATCHED:
        return batched
    return forward


def _channels(model: nn.Module, x: torch.Tensor, layer: str) -> int:
    out: list[torch.Tensor] = []
    handle = esegeta_core.resolve_layer(model, layer).register_forward_hook(
        lambda _m, _i, o: out.append(o)
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    return out[0].shape[1]


def bench_model(
    label: str,
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    cam_layer: str,
    bs: int,
    repeats: int,
    device: torch.device,
) -> list[dict]:
    model = model.to(device).eval()
    x = x.to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    rows = []
    by_name = {cls.name: cls for cls in cams.CAM_METHODS}
    for method in METHODS:
        cls = by_name[f"cnnvis.{method}"]
        use_layer = cam_layer if method == "cam" else layer
        params: dict[str, Any] = {"layer": use_layer}
        if method in BATCHED:
            params["batch_size"] = bs
        valid = validate_params(cls, params)
        k = _channels(model, x, use_layer)
        explainer = cls()
        timed = _time(
            {
                "ours": lambda e=explainer, v=valid: e.attribute(model, x, target, v),
                "floor": _floor(model, x, target, method, k, bs),
            },
            repeats,
            device,
        )
        rows.append(
            {
                "model": label,
                "method": f"cnnvis.{method}",
                "layer": use_layer,
                "channels": k,
                "ours_s": timed["ours"],
                "reference": "floor",
                "reference_s": timed["floor"],
                "ratio": timed["ours"] / timed["floor"],
            }
        )
        _say(_row(rows[-1]), flush=True)
    rows.append(_vs_pytorch_grad_cam(label, model, x, target, layer, bs, repeats, device))
    _say(_row(rows[-1]), flush=True)
    return rows


def _vs_pytorch_grad_cam(
    label: str,
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    layer: str,
    bs: int,
    repeats: int,
    device: torch.device,
) -> dict:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    row: dict[str, Any] = {
        "model": label,
        "method": "cnnvis.score_cam",
        "layer": layer,
        "reference": "pytorch_grad_cam.ScoreCAM",
    }
    module = esegeta_core.resolve_layer(model, layer)
    valid = validate_params(cams.ScoreCam, {"layer": layer, "batch_size": bs})
    targets = [ClassifierOutputTarget(int(t)) for t in target]
    theirs = ScoreCAM(model, [module])
    theirs.batch_size = bs
    try:
        timed = _time(
            {
                "ours": lambda: cams.ScoreCam().attribute(model, x, target, valid),
                "theirs": lambda: theirs(input_tensor=x, targets=targets),
            },
            repeats,
            device,
        )
    except Exception as exc:  # noqa: BLE001 - recording the reference's failure is the point
        row.update(ours_s=None, reference_s=None, ratio=None, error=f"{type(exc).__name__}: {exc}")
        return row
    finally:
        theirs.activations_and_grads.release()
    row.update(ours_s=timed["ours"], reference_s=timed["theirs"])
    row["ratio"] = timed["ours"] / timed["theirs"]
    return row


def _row(r: dict) -> str:
    if r.get("ratio") is None:
        return f"{r['model']:<10} {r['method']:<24} vs {r['reference']:<26} {r.get('error', '')}"
    return (
        f"{r['model']:<10} {r['method']:<24} vs {r['reference']:<26} "
        f"{r['ours_s'] * 1e3:9.1f} ms {r['reference_s'] * 1e3:9.1f} ms  x{r['ratio']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small inputs (CPU: < 5 min)")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (default 3/5)")
    parser.add_argument("--batch-size", type=int, default=32, help="Score/Ablation-CAM chunk")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from torchvision.models import resnet18

    device = torch.device(args.device)
    torch.manual_seed(0)
    size2d, size3d = (64, 32) if args.quick else (224, 64)
    # quick: ResNet's layer3 (256 channels, 4x4) keeps Score/Ablation-CAM to seconds on CPU
    layer2d = "layer3" if args.quick else "layer4"
    repeats = args.repeats or (3 if args.quick else 5)
    _say(
        f"device={device} quick={args.quick} resnet18 1x3x{size2d}x{size2d} ({layer2d}), "
        f"unet3d 1x1x{size3d}^3, batch_size={args.batch_size}, repeats={repeats}",
        flush=True,
    )
    rows = bench_model(
        "resnet18",
        resnet18(weights=None),
        torch.rand(1, 3, size2d, size2d),
        layer2d,
        "layer4",
        args.batch_size,
        repeats,
        device,
    )
    unet = esegeta_core.ScoreModel(UNet3d(), esegeta_core.MultiClassScores())
    rows += bench_model(
        "unet3d",
        unet,
        torch.rand(1, 1, size3d, size3d, size3d),
        "bottleneck",
        "dec",
        args.batch_size,
        repeats,
        device,
    )
    result = {
        "device": str(device),
        "quick": args.quick,
        "size2d": size2d,
        "size3d": size3d,
        "batch_size": args.batch_size,
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    worst = max((r["ratio"] for r in rows if r["reference"] == "floor"), default=math.nan)
    _say(f"worst ratio to floor: x{worst:.2f}")


if __name__ == "__main__":
    main()

"""Channel ablation at a wide layer: esegeta vs Captum vs the compute floor, side by side.

    python benchmarks/bench_layer_ablation.py --out benchmarks/results/layer_ablation_cpu.json

Every channel of the layer is ablated once per item (Ablation-CAM; Captum's layer feature
ablation with one group per channel). The floor is what that costs done plainly: one
whole forward pass per ablated copy, at the best of a few pass sizes. esegeta runs the
layers before the ablated one once per item and only the rest of the model per copy
(:mod:`esegeta_core.layer_replay`), so it can run below that floor; Captum runs whole
passes, ``perturbations_per_eval`` (default 1) copies at a time. Models have random
weights (built in code, nothing downloaded).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esegeta_core import explain
from esegeta_core.layers import resolve_layer


def _time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _floor(model: nn.Module, x: torch.Tensor, copies: int, sizes: tuple[int, ...]) -> float:
    """Seconds for ``copies`` whole forward passes per item, at the best pass size."""
    best = float("inf")
    for size in sizes:
        batch = x[:1].expand(size, *x.shape[1:]).contiguous()
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(x.shape[0]):
                for _ in range(0, copies, size):
                    model(batch)
        best = min(best, time.perf_counter() - start)
    return best


def _captum(model: nn.Module, layer: nn.Module, x: torch.Tensor, t: torch.Tensor, ppe: int):
    from captum.attr import LayerFeatureAblation

    with torch.no_grad():
        channels = _output(model, layer, x[:1]).shape[1]
    mask = torch.arange(channels).view(1, channels, *([1] * (x.ndim - 2)))
    algorithm = LayerFeatureAblation(model, layer)

    def run() -> None:
        for i in range(x.shape[0]):  # Captum needs one item at a time with ppe > 1
            algorithm.attribute(
                x[i : i + 1], target=t[i : i + 1], layer_mask=mask, perturbations_per_eval=ppe
            )

    return run


def _output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, o: seen.append(o))
    model(x)
    handle.remove()
    return seen[0]


def cases(quick: bool) -> list[tuple[str, nn.Module, torch.Tensor, str]]:
    import torchvision

    torch.manual_seed(0)
    size = 48 if quick else 64
    out = [
        (f"torchvision resnet50, layer4 (2048 ch), 2x3x{size}x{size}",
         torchvision.models.resnet50(num_classes=10).eval(), torch.rand(2, 3, size, size),
         "layer4"),
        (f"torchvision densenet121, features (1024 ch), 2x3x{size}x{size}",
         torchvision.models.densenet121(num_classes=10).eval(), torch.rand(2, 3, size, size),
         "features"),
    ]  # fmt: skip
    if not quick:
        import monai.networks.nets as nets

        out.append(
            ("monai DenseNet121 3D, features (1024 ch), 1x1x32^3",
             nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval(),
             torch.rand(1, 1, 32, 32, 32), "features"),
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, two models")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for label, model, x, layer_path in cases(args.quick):
        t = torch.zeros(x.shape[0], dtype=torch.long)
        layer = resolve_layer(model, layer_path)
        with torch.no_grad():
            channels = _output(model, layer, x[:1]).shape[1]
        explain(model, x[:1], "captum.saliency", 0)  # warm up the plugins
        floor = _floor(model, x, channels, (16, 32, 64))

        def ours(method: str, m=model, x=x, t=t, layer=layer_path) -> Callable[[], Any]:
            return lambda: explain(m, x, method, t, layer=layer)

        timings = {
            "cnnvis.ablation_cam": _time(ours("cnnvis.ablation_cam"), args.repeats),
            "captum.layer_feature_ablation": _time(
                ours("captum.layer_feature_ablation"), args.repeats
            ),
            "Captum LayerFeatureAblation, perturbations_per_eval=32": _time(
                _captum(model, layer, x, t, 32), 1
            ),
        }
        if not args.quick:
            timings["Captum LayerFeatureAblation, perturbations_per_eval=1 (default)"] = _time(
                _captum(model, layer, x, t, 1), 1
            )
        row = {
            "case": label,
            "channels": channels,
            "floor_seconds": round(floor, 3),
            "seconds": {k: round(v, 3) for k, v in timings.items()},
            "ratio_to_floor": {k: round(v / floor, 3) for k, v in timings.items()},
        }
        rows.append(row)
        print(json.dumps(row, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()

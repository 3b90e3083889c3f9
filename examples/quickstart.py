"""Quick start: explain a 2D classifier and a 3D segmentation model with several methods.

Run with `nox -s demo`, or `python examples/quickstart.py` once esegeta-core and
esegeta-captum are installed. Models are tiny and built in code: no downloads.
"""

from __future__ import annotations

import logging

import torch

import esegeta_core as ec
from esegeta_core.testing import tiny_input, tiny_model

METHODS_2D = {
    "captum.saliency": {},
    "captum.integrated_gradients": {"n_steps": 32, "baselines": "blurred"},
    "captum.occlusion": {"window": 4, "strides": 2},
    "captum.layer_grad_cam": {"layer": "features.conv2"},
    "captum.gradient_shap": {"n_samples": 16},
}
# other backends join when installed (`nox -s demo` installs them all)
OPTIONAL_2D = {
    "cnnvis.grad_cam": {"layer": "features.conv2"},
    "cnnvis.score_cam": {"layer": "features.conv2"},
    "torchray.rise": {"num_masks": 200},
    "lime.lime": {"num_samples": 64, "segmentation": "slic", "n_segments": 16},
}
METHODS_3D = {
    "captum.saliency": {},
    "captum.integrated_gradients": {"n_steps": 16},
    "captum.layer_grad_cam": {"layer": "encoder.conv2"},
}


def summarise(
    title: str, model: torch.nn.Module, x: torch.Tensor, methods: dict, **kwargs: object
) -> None:
    print(f"\n{title}: input {tuple(x.shape)}")
    print(f"{'method':32} {'target':>8} {'seconds':>8}  {'map':>18}  {'max |map|':>10}")
    for name, params in methods.items():
        e = ec.explain(model, x, name, seed=0, **kwargs, **params)
        heat = e.saliency()
        print(
            f"{name:32} {e.target.tolist()!s:>8} {e.seconds:8.3f}  "
            f"{tuple(heat.shape)!s:>18}  {float(heat.abs().max()):10.4f}"
        )


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    installed = {m.name for m in ec.list_methods()}
    missing = [m for m in {**METHODS_2D, **METHODS_3D} if m not in installed]
    if missing:
        raise SystemExit(f"install esegeta-captum first (missing {', '.join(missing)})")
    optional = {name: p for name, p in OPTIONAL_2D.items() if name in installed}
    summarise(
        "2D classification (predicted classes)",
        tiny_model("classification", 2),
        tiny_input("classification", 2, batch=3),
        {**METHODS_2D, **optional},
    )
    seg, volume = tiny_model("segmentation", 3), tiny_input("segmentation", 3, size=16)
    with torch.no_grad():  # the class that wins most voxels: its score is not empty
        winner = int(seg(volume).argmax(1).flatten().mode().values)
    summarise(
        f"3D segmentation, class {winner} via the multi_class wrapper",
        seg,
        volume,
        METHODS_3D,
        target=winner,
        task="segmentation",
    )
    mask = torch.zeros(16, 16, 16)
    mask[4:12, 4:12, 4:12] = 1
    summarise(
        "3D segmentation, class 2 inside a region",
        seg,
        volume,
        {"captum.saliency": {}},
        target=ec.Region(2, mask),
        task="segmentation",
    )


if __name__ == "__main__":
    main()

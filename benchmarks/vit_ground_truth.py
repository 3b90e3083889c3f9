"""Transformer methods on the synthetic ground truth: pointing game and AOPC.

The tiny vision transformer of the synthetic benchmark (``pretrained("shapes_vit")``:
8 x 8 patches, four blocks, a class token; trained on first use, about 75 s on the
CPU, then cached) explains held-out shapes images with each method; the maps are scored
by TorchRay's pointing game (at the recipe's tolerance, 4 px) against the known object
masks and by AOPC (8 px cells replaced by noise, most relevant first), beside a map that
always points at the image centre. ``tests/test_transformer_ground_truth.py`` asserts
these results with margins. Run::

    python benchmarks/vit_ground_truth.py --out benchmarks/results/vit_ground_truth.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch

from esegeta_core import explain
from esegeta_core.evaluation import pointing_game
from esegeta_core.evaluation.curves import aopc
from esegeta_core.synthetic import pretrained

METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("attention rollout", "attention.rollout", {}),
    ("gradient-weighted rollout (GAE)", "attention.gae", {}),
    ("raw attention, last block", "attention.raw", {}),
    ("token Grad-CAM (cnnvis, layer auto)", "cnnvis.grad_cam", {}),
    ("token Grad-CAM (Captum, layer auto)", "captum.layer_grad_cam", {}),
    ("integrated gradients (32 steps)", "captum.integrated_gradients", {"n_steps": 32}),
    ("saliency", "captum.saliency", {}),
]


def centre_map(n: int, size: int, sigma: float = 8.0) -> torch.Tensor:
    """A Gaussian at the image centre for every item: the baseline every map must beat."""
    axis = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    peak = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma**2))
    return peak.expand(n, 1, size, size).clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="held-out images")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out images")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    vit = pretrained("shapes_vit", progress=True)
    data = vit.test_data(args.n, seed=args.seed)
    size = data.images.shape[-1]
    rows = []
    maps = {}
    for label, method, params in METHODS:
        start = time.perf_counter()
        e = explain(vit.model, data.images, method, data.labels, progress=False, **params)
        maps[label] = (method, params, e.saliency(), time.perf_counter() - start)
    maps["centre baseline"] = ("centre", {}, centre_map(args.n, size), 0.0)
    for label, (method, params, m, seconds) in maps.items():
        hits = pointing_game(m, data.masks, tolerance=vit.pointing_tolerance).hit
        drop = aopc(vit.model, data.images, data.labels, m, grid=8, seed=0).aopc
        rows.append(
            {
                "label": label,
                "method": method,
                "params": params,
                "pointing_game": round(float(hits.float().mean()), 4),
                "aopc": round(float(drop.mean()), 4),
                "seconds": round(seconds, 2),
            }
        )
        print(f"{label:40s} pointing {rows[-1]['pointing_game']:.3f}  AOPC {rows[-1]['aopc']:.3f}")
    result = {
        "benchmark": "vit_ground_truth",
        "model": vit.describe(),
        "n": args.n,
        "seed": args.seed,
        "pointing_tolerance_px": vit.pointing_tolerance,
        "aopc": {"grid": 8, "fill": "noise", "seed": 0},
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

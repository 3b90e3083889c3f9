"""xML against post-hoc methods on the core's synthetic shapes benchmark.

Trains an ExplainerClassifier (a small VGG-style classifier + the xML explainer) on
``esegeta_core.synthetic.make_shapes`` in the paper's three phases, then explains a
held-out set of the *same trained model* with ``xml.explainer`` (its own map) and with
post-hoc methods (Grad-CAM, Integrated Gradients, saliency, SmoothGrad, RISE, and a
random map as the floor), and scores every map with

- AOPC (MoRF; cells of ``--grid`` pixels ranked by mean relevance and replaced by
  noise, cumulatively, most relevant first; the target's softmax drop; higher is better),
- POMPOM (share of meaningful pixels outside the object, a pixel being meaningful
  above 5% of its map's maximum so that maps in any unit compare; lower is better),
- the pointing game (the map's maximum inside the object mask; higher is better).

Needs esegeta-xml, esegeta-cnnvis and esegeta-captum. Usage (about 11 minutes on one
CPU thread):

    python plugins/esegeta_xml/benchmarks/compare_shapes.py --out xml-shapes-bench

The table (Markdown) goes to stdout and ``OUT/table.md``; every number to
``OUT/results.json``; training checkpoints and metrics to ``OUT/train``. Training
resumes if ``OUT/train`` already holds a finished or partial run of the same config.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from esegeta_xml import ExplainerClassifier, train
from esegeta_xml.data import TensorItems

from esegeta_core import explain
from esegeta_core.evaluation import aopc, pointing_game, pompom
from esegeta_core.synthetic.shapes import make_shapes

log = logging.getLogger("compare_shapes")


def training_config(args: argparse.Namespace) -> dict[str, Any]:
    """The xML training config of this benchmark."""
    widths = [int(w) for w in args.widths.split(",")]
    return {
        "output_dir": str(Path(args.out) / "train"),
        "data": {
            "source": "shapes",
            "n_train": args.n_train,
            "n_val": args.n_val,
            "size": args.size,
            "seed": 0,
            "weak_mask": "boxes",
        },
        "model": {
            "classifier": "esegeta_xml.classifiers:small_vgg",
            "kwargs": {"in_channels": 3, "classes": 4, "widths": widths},
            "widths": widths,
            "init_bias": 3.0,
        },
        "loss": {"kind": args.loss, "beta": args.beta, "gamma": args.gamma},
        "phases": {
            "classifier": {"epochs": args.epochs[0], "lr_classifier": args.lr, "patience": 5},
            "explainer": {
                "epochs": args.epochs[1],
                "alpha": args.alpha,
                "lr_explainer": args.lr_explainer,
                "patience": 3,
            },
            "both": {
                "epochs": args.epochs[2],
                "lr_classifier": args.lr_joint,
                "lr_explainer": args.lr_joint,
                "patience": 3,
            },
        },
        "optimizer": "adam",
        "batch_size": 16,
        "device": "cpu",
        "seed": 0,
        "progress": not args.no_progress,
    }


def methods(model: ExplainerClassifier, args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """(label, method, params) of every map compared; ``random`` is a uniform-noise map."""
    layer = f"classifier.{model.classifier.conv_layer}"
    return [
        ("xML (in-model)", "xml.explainer", {}),
        (f"Grad-CAM ({layer})", "cnnvis.grad_cam", {"layer": layer}),
        ("Integrated Gradients", "captum.integrated_gradients", {"n_steps": 32}),
        ("Saliency", "captum.saliency", {}),
        ("SmoothGrad", "cnnvis.smoothgrad", {"noise_samples": 16}),
        ("RISE", "cnnvis.rise", {"num_masks": args.rise_masks, "batch_size": 250}),
        ("random map", "random", {}),
    ]


def explain_all(
    model: ExplainerClassifier, x: torch.Tensor, y: torch.Tensor, method: str, params: dict
) -> tuple[torch.Tensor, float]:
    """``(B, 1, H, W)`` maps for the true classes, and the seconds per image."""
    start = time.perf_counter()
    maps = []
    for i in range(0, len(x), 32):
        xb, yb = x[i : i + 32], y[i : i + 32]
        if method == "random":
            g = torch.Generator().manual_seed(i)
            maps.append(torch.rand((len(xb), 1, *xb.shape[2:]), generator=g))
            continue
        e = explain(model, xb, method, target=yb, seed=0, progress=False, **params)
        maps.append(e.saliency().detach().cpu())
    return torch.cat(maps), (time.perf_counter() - start) / len(x)


def score_maps(
    model: ExplainerClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    maps: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Mean AOPC, POMPOM and pointing-game hit rate over the held-out set.

    AOPC: cells of ``grid`` pixels, one cell per step, noise; the core's curve
    ``f(x_0), ..., f(x_L)`` over all cells is cut after the first ``aopc_fraction`` of
    the cells ("a certain number of perturbation steps", as the paper allows): once
    most of the image is noise every map scores the same, which only dilutes the
    differences. ``aopc_all`` keeps every step.
    """
    curves = torch.cat(
        [
            aopc(
                model,
                x[i : i + 32],
                y[i : i + 32],
                maps[i : i + 32],
                grid=args.grid,
                perturbation="noise",
                batch_size=256,
                seed=0,
            ).curve
            for i in range(0, len(x), 32)
        ]
    )
    steps = max(1, math.ceil(args.aopc_fraction * (curves.shape[1] - 1)))
    drop = curves[:, :1] - curves
    a = drop[:, : steps + 1].mean(1)
    pom = pompom(maps, masks, eps=0.05, relative=True)
    hit = pointing_game(maps, masks, tolerance=1).hit
    return {
        "aopc": float(a.mean()),
        "aopc_sem": float(a.std() / math.sqrt(len(a))),
        "aopc_steps": steps,
        "aopc_all": float(drop.mean(1).mean()),
        "pompom": float(pom.mean()),
        "pointing_game": float(hit.nanmean()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="xml-shapes-bench", help="output folder")
    parser.add_argument("--n-train", type=int, default=1024, help="training images")
    parser.add_argument("--n-val", type=int, default=256, help="validation images")
    parser.add_argument("--n-test", type=int, default=128, help="held-out images explained")
    parser.add_argument("--size", type=int, default=48, help="image side")
    parser.add_argument("--widths", default="8,16,32", help="classifier and explainer widths")
    parser.add_argument(
        "--epochs",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[30, 8, 8],
        help="epochs of the classifier, explainer and joint phases",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument(
        "--lr-explainer", type=float, default=1e-2, help="learning rate of the explainer phase"
    )
    parser.add_argument(
        "--lr-joint", type=float, default=1e-3, help="learning rate of the joint phase (both)"
    )
    parser.add_argument("--alpha", type=float, default=0.25, help="alpha of the explainer phase")
    parser.add_argument("--beta", type=float, default=0.9, help="sparsity vs. TV weight")
    parser.add_argument("--gamma", type=float, default=1.0, help="weak-mask weight (hybrid)")
    parser.add_argument("--loss", choices=["unsupervised", "hybrid"], default="unsupervised")
    parser.add_argument("--grid", type=int, default=8, help="AOPC cell size (pixels)")
    parser.add_argument(
        "--aopc-fraction", type=float, default=0.25, help="AOPC over this share of the cells"
    )
    parser.add_argument("--rise-masks", type=int, default=500, help="RISE masks")
    parser.add_argument(
        "--methods", default="", help="comma-separated subset of method names (default all)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    result = train(training_config(args))
    train_seconds = time.perf_counter() - start
    model = result.model.eval()

    test = make_shapes(args.n_test, size=args.size, seed=1000)
    items = TensorItems(test.images, test.labels, test.masks)
    x, y, masks = items.images, items.labels, items.masks
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    log.info("trained in %.0f s; held-out accuracy %.3f", train_seconds, accuracy)

    rows = []
    chosen = [m for m in args.methods.split(",") if m]
    for label, method, params in methods(model, args):
        if chosen and method not in chosen:
            continue
        maps, per_image = explain_all(model, x, y, method, params)
        scores = score_maps(model, x, y, masks, maps, args)
        rows.append({"label": label, "method": method, "params": params, **scores})
        rows[-1]["seconds_per_image"] = per_image
        log.info("%s: %s", label, {k: round(v, 4) for k, v in scores.items()})

    table = [
        "| method | AOPC (higher better) | POMPOM (lower better) | pointing game | s / image |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["label"] if r["method"] == "random" else f"{r['label']} (`{r['method']}`)"
        table.append(
            f"| {name} | {r['aopc']:.3f} ± {r['aopc_sem']:.3f} | {r['pompom']:.3f} | "
            f"{r['pointing_game']:.3f} | {r['seconds_per_image']:.4f} |"
        )
    summary = (
        f"Held-out accuracy of the joint model: {accuracy:.3f} ({len(y)} images, "
        f"{args.size} px, 4 classes); training {train_seconds:.0f} s on "
        f"{args.threads} thread(s)."
    )
    text = "\n".join(table) + "\n\n" + summary + "\n"
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "accuracy": accuracy,
                "train_seconds": train_seconds,
                "phases": [p.__dict__ for p in result.phases],
                "rows": rows,
            },
            indent=2,
            default=str,
        )
    )
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

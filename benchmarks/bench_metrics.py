"""Speed of esegeta's perturbation curves against Quantus on the same work.

Work: 64 RGB images of 66 x 66 (random, seeded), a small CNN built here (three
conv-ReLU stages of 16/32/64 channels, global average pooling, 10 classes, random
weights), a random attribution map per image (no ties) and about 100 steps:

- deletion: pixels removed most relevant first in 99 steps of 44 pixels, each replaced
  by the image's minimum (Quantus's ``"black"``), softmax score of the predicted
  class; against ``quantus.PixelFlipping(features_in_step=132)`` (132 = 44 pixels x 3
  channels: the one-channel map is broadcast over channels, so a step flips whole
  pixels there too). 99 steps and 66 x 66 because Quantus wants its step to divide
  H*W while it flips C*H*W values: whole pixels in exactly 100 steps are impossible.
- AOPC: the 121 cells of 6 x 6 pixels removed most relevant first (121 steps); against
  ``quantus.RegionPerturbation(patch_size=6, regions_evaluation=121)`` (MoRF).

Fairness: same model, inputs, maps, order and fill values; the curves agree (the
maximum absolute difference is printed). Quantus runs with its default of 64 images
per pass (one pass per step). esegeta runs with its default ``batch_size="auto"``: it
tunes the pass size and memory layout on its own first passes and runs the rest in the
fastest (``esegeta_core.runtime.passes``; the cache of tuned plans is cleared before
every call, so each timed call tunes again). Rows:

- ours (auto) vs Quantus (64 per pass): what a user gets from either by default;
- ours with 64 per pass, contiguous, the same passes as Quantus: the machinery's
  difference only;
- the deletion work on 8 of the images (short work: tuning has little to pay for it);
- ours with ``amp="bf16"`` (mixed precision, opt-in), with how far its curves are
  from float32's (largest point and per-image mean differences, and the rank
  correlation of the per-image means);
- ours vs the "floor": 100 bare forward passes of the 64 images (the way Quantus
  batches), which no implementation running passes of 64 can beat;
- (not ``--quick``) Quantus at its own best pass size of 8, 16 or 32 (found by hand),
  and both with the model in ``channels_last``.

A last row repeats the deletion work with a model whose forward pass costs next to
nothing (global average pooling and a linear layer): what remains is each
implementation's own machinery (ranking, perturbing, scoring), the part a metrics
library controls.

Run::

    python benchmarks/bench_metrics.py --quick --out metrics.json
    python benchmarks/bench_metrics.py --device cuda --quick   # both libraries on a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from esegeta_core.evaluation import aopc, deletion
from esegeta_core.runtime import passes


def small_cnn(classes: int = 10) -> nn.Module:
    """Three conv-ReLU(-pool) stages of 16/32/64 channels, GAP, a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, classes),
    ).eval()


def free_model(classes: int = 10) -> nn.Module:
    """Global average pooling and a linear head: a forward pass that costs ~nothing."""
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, classes)).eval()


def _time(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per function, run interleaved."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _bf16_error(full: torch.Tensor, half: torch.Tensor) -> dict[str, float]:
    """How far bf16 curves are from float32 ones: the largest difference of a point,
    of a per-image mean (AUC-like), and the rank correlation of the per-image means."""
    from scipy.stats import spearmanr

    m_full, m_half = full.mean(1), half.mean(1)
    return {
        "bf16_max_point_diff": float((full - half).abs().max()),
        "bf16_max_mean_diff": float((m_full - m_half).abs().max()),
        "bf16_spearman_of_means": float(spearmanr(m_full, m_half).statistic),
    }


def _floor(model: nn.Module, x: torch.Tensor, passes: int) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            for _ in range(passes):
                model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    return run


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    import quantus

    size, steps, n = args.size, args.steps, args.images
    device = torch.device(args.device)
    model = small_cnn().to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=gen).to(device)
    a = torch.rand(n, 1, size, size, generator=gen).to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    black = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    xn, tn = x.cpu().numpy(), t.cpu().numpy()
    an = np.broadcast_to(a.cpu().numpy(), x.shape).copy()
    pixels_per_step = size * size // steps
    cell = args.cell
    cells = math.ceil(size / cell) ** 2
    common = {"disable_warnings": True, "display_progressbar": False}
    q_kw = {"model": model, "x_batch": xn, "y_batch": tn, "a_batch": an, "device": args.device}
    rows = []

    def row(work: str, ours_s: float, ref: str, ref_s: float, **extra: Any) -> None:
        rows.append(
            {
                "work": work,
                "ours_s": ours_s,
                "reference": ref,
                "reference_s": ref_s,
                "speedup": ref_s / ours_s,
                **extra,
            }
        )
        r = rows[-1]
        print(
            f"{work:<38} ours {ours_s:8.2f} s   {ref:<26} {ref_s:8.2f} s   "
            f"speed-up {r['speedup']:5.2f}x",
            flush=True,
        )

    # deletion vs PixelFlipping ---------------------------------------------------------
    pf = quantus.PixelFlipping(features_in_step=3 * pixels_per_step, **common)

    def ours_deletion(
        bs: int | str = "auto",
        m: nn.Module = model,
        tt: torch.Tensor = t,
        amp: str | None = None,
    ) -> torch.Tensor:
        passes.clear_plans()  # every call tunes its passes again
        return deletion(m, x, tt, a, steps=steps, perturbation=black, batch_size=bs, amp=amp).curve

    def quantus_deletion(m: nn.Module = model, tt: torch.Tensor = t, bs: int = n) -> Any:
        return pf(**{**q_kw, "model": m, "y_batch": tt.cpu().numpy()}, batch_size=bs, softmax=True)

    # warm-up (first-call costs of oneDNN and Quantus) on two images, then a check that
    # both compute the same curves
    deletion(model, x[:2], t[:2], a[:2], steps=steps, perturbation=black[:2])
    pf(**{**q_kw, "x_batch": xn[:2], "y_batch": tn[:2], "a_batch": an[:2]}, softmax=True)
    check = np.abs(ours_deletion()[:, 1:].numpy() - np.array(quantus_deletion())).max()
    (plan,) = passes._plans[model].values()
    print(f"esegeta's tuned plan: {plan}", flush=True)
    timed = _time(
        {
            "ours": ours_deletion,
            "ours64": lambda: ours_deletion(64),
            "ours_bf16": lambda: ours_deletion(amp="bf16"),
            "quantus": quantus_deletion,
            "floor": _floor(model, x, steps + 1),
        },
        args.repeats,
    )
    work = f"deletion {n}x3x{size}x{size}, {steps} steps"
    extra = {"plan": str(plan)}
    row(
        work,
        timed["ours"],
        "quantus.PixelFlipping",
        timed["quantus"],
        max_abs_diff=float(check),
        **extra,
    )
    row(work + ", 64/pass", timed["ours64"], "quantus.PixelFlipping", timed["quantus"])
    row(
        work + ", amp=bf16",
        timed["ours_bf16"],
        "quantus.PixelFlipping",
        timed["quantus"],
        **_bf16_error(ours_deletion(), ours_deletion(amp="bf16")),
    )
    row(work, timed["ours"], f"floor ({steps + 1} x 64)", timed["floor"], **extra)
    if not args.quick:
        # Quantus at its own best pass size (a user would have to find it by hand)
        q_sizes = {bs: lambda bs=bs: quantus_deletion(bs=bs) for bs in (8, 16, 32)}
        q_timed = _time(q_sizes, args.repeats)
        q_best = min(q_timed, key=q_timed.__getitem__)
        row(
            work,
            timed["ours"],
            f"quantus, {q_best}/pass (its best)",
            q_timed[q_best],
            quantus_by_pass={str(k): v for k, v in q_timed.items()},
        )

    # short work: 8 images, where tuning has only a few hundred inputs to pay for itself
    few = 8

    def ours_few() -> torch.Tensor:
        passes.clear_plans()
        return deletion(
            model, x[:few], t[:few], a[:few], steps=steps, perturbation=black[:few]
        ).curve

    def quantus_few() -> Any:
        kw = {"x_batch": xn[:few], "y_batch": tn[:few], "a_batch": an[:few]}
        return pf(**{**q_kw, **kw}, softmax=True)

    timed = _time({"ours": ours_few, "quantus": quantus_few}, max(3, args.repeats))
    row(f"deletion {few} images, {steps} steps", timed["ours"], "quantus.PixelFlipping",
        timed["quantus"])  # fmt: skip

    # AOPC vs RegionPerturbation --------------------------------------------------------
    rp = quantus.RegionPerturbation(
        patch_size=cell,
        regions_evaluation=cells,
        perturb_baseline="black",
        order="morf",
        **common,
    )

    def ours_aopc(amp: str | None = None) -> torch.Tensor:
        passes.clear_plans()
        r = aopc(model, x, t, a, grid=cell, perturbation=black, amp=amp)
        return r.curve[:, :1] - r.curve[:, 1:]

    def quantus_aopc() -> Any:
        return rp(**q_kw, batch_size=n, softmax=True)

    check = np.abs(ours_aopc().numpy() - np.array(quantus_aopc())).max()
    timed = _time(
        {
            "ours": ours_aopc,
            "ours_bf16": lambda: ours_aopc("bf16"),
            "quantus": quantus_aopc,
        },
        args.repeats,
    )
    work = f"AOPC {n}x3x{size}x{size}, {cells} cells of {cell}px"
    row(
        work,
        timed["ours"],
        "quantus.RegionPerturbation",
        timed["quantus"],
        max_abs_diff=float(check),
    )
    row(
        work + ", amp=bf16",
        timed["ours_bf16"],
        "quantus.RegionPerturbation",
        timed["quantus"],
        **_bf16_error(
            torch.cat([torch.zeros(n, 1), ours_aopc()], 1),
            torch.cat([torch.zeros(n, 1), ours_aopc("bf16")], 1),
        ),
    )

    # the machinery alone: the same deletion work with a model that costs ~nothing
    free = free_model().to(device)
    with torch.no_grad():
        t_free = free(x).argmax(1)

    def ours_free() -> torch.Tensor:
        return ours_deletion(m=free, tt=t_free)

    def quantus_free() -> Any:
        return quantus_deletion(m=free, tt=t_free)

    check = np.abs(ours_free()[:, 1:].numpy() - np.array(quantus_free())).max()
    timed = _time({"ours": ours_free, "quantus": quantus_free}, args.repeats)
    row(
        "deletion, model cost ~0 (machinery)",
        timed["ours"],
        "quantus.PixelFlipping",
        timed["quantus"],
        max_abs_diff=float(check),
    )

    if not args.quick:  # both with the model in channels_last
        model.to(memory_format=torch.channels_last)
        timed = _time({"ours": ours_deletion, "quantus": quantus_deletion}, args.repeats)
        row(
            "deletion, channels_last model",
            timed["ours"],
            "quantus.PixelFlipping",
            timed["quantus"],
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, headline rows only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=66)
    parser.add_argument("--steps", type=int, default=99)
    parser.add_argument("--cell", type=int, default=6, help="AOPC cell size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both libraries)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.size * args.size) % args.steps or args.steps % 3:
        # Quantus's step (3 values per pixel) must divide H*W: whole pixels per step
        parser.error("steps must divide size * size and be a multiple of 3")
    logging.getLogger("quantus").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")
    rows = bench(args)
    if args.out:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": args.device,
            "machine": platform.machine(),
            "quick": args.quick,
            "repeats": args.repeats,
        }
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()

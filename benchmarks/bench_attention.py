"""Speed of esegeta-attention's methods against their compute floor.

Two models with random weights: timm's ViT-Tiny at 224 px (12 blocks, 197 tokens;
batch 4) and a MONAI UNETR on a 3D volume (12 blocks, no class token; task
segmentation, scored through ``ScoreModel(model, MultiClassScores())``). Each method's
``attribute`` call is timed side by side with the bare passes it cannot avoid (its
"floor"), run on a copy of the model prepared by hand, with the attention probabilities
materialised (unfused) where the method needs them:

- ``attention.raw``: one forward pass (no gradients) with the last block unfused;
- ``attention.rollout``: one forward pass (no gradients) with every block unfused;
- ``attention.gae``: one forward pass with every block unfused and the probabilities
  kept, plus one backward pass of the target scores to those probabilities (what the
  method needs). ``floor_input_s`` is also reported: the backward pass continued to
  the input (a plain saliency pass).

Timings are medians over interleaved repeats after a warm-up; ratios are ours / floor
(target: at most 1.1). Run::

    python benchmarks/bench_attention.py --out benchmarks/results/attention_cpu.json
    python benchmarks/bench_attention.py --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from esegeta_attention import METHODS
from torch import nn

from esegeta_core import validate_params
from esegeta_core.targets import MultiClassScores, ScoreModel

RUNS: list[tuple[str, dict[str, Any]]] = [
    ("attention.raw", {}),
    ("attention.rollout", {}),
    ("attention.rollout", {"discard_ratio": 0.9, "head_fusion": "max"}),
    ("attention.gae", {}),
]
"""(method, parameters): rollout with its defaults (Abnar & Zuidema) and with
jacobgil/vit-explain's usual setting (the discarding costs a top-k per block)."""


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def _time(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run interleaved after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm ``Attention`` or MONAI ``SABlock`` modules, in order (the benchmark's two)."""
    return [m for m in model.modules() if type(m).__name__ in ("Attention", "SABlock")]


def _unfused_copy(scored: ScoreModel, which: str) -> tuple[ScoreModel, list[torch.Tensor]]:
    """A copy of ``scored`` whose attention is materialised (``which``: "last" or "all"),
    and the list its probabilities are appended to on every forward pass."""
    twin = copy.deepcopy(scored)
    blocks = _attention_modules(twin)
    kept: list[torch.Tensor] = []
    for i, block in enumerate(blocks):
        if which == "last" and i != len(blocks) - 1:
            continue
        if hasattr(block, "fused_attn"):
            block.fused_attn = False
        if hasattr(block, "use_flash_attention"):
            block.use_flash_attention = False
        drop = block.attn_drop if hasattr(block, "attn_drop") else block.drop_weights
        drop.register_forward_hook(lambda _m, _a, out: kept.append(out))
    return twin, kept


def _floors(scored: ScoreModel, x: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    last, _ = _unfused_copy(scored, "last")
    every, _ = _unfused_copy(scored, "all")
    grad_model, kept = _unfused_copy(scored, "all")

    def forward(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(x)

        return run

    def backward(to_input: bool) -> Callable[[], None]:
        def run() -> None:
            kept.clear()
            xg = x.detach().requires_grad_(True)
            score = grad_model(xg).gather(1, target[:, None]).sum()
            torch.autograd.grad(score, [xg] if to_input else list(kept))
            kept.clear()

        return run

    return {
        "attention.raw": forward(last),
        "attention.rollout": forward(every),
        "attention.gae": backward(False),
        "gae_to_input": backward(True),
    }


def bench_model(
    label: str, scored: ScoreModel, x: torch.Tensor, repeats: int
) -> list[dict[str, Any]]:
    scored = scored.eval()
    with torch.no_grad():
        scores = scored(x)
    target = torch.stack([scores[i].argsort()[-1 - i % 2] for i in range(x.shape[0])])
    floors = _floors(scored, x, target)
    by_name = {cls.name: cls for cls in METHODS}
    rows = []
    for name, params in RUNS:
        cls = by_name[name]
        valid = validate_params(cls, params)
        explainer = cls()
        fns = {
            "ours": lambda e=explainer, v=valid: e.attribute(scored, x, target, v),
            "floor": floors[name],
        }
        if name == "attention.gae":
            fns["floor_input"] = floors["gae_to_input"]
        timed = _time(fns, repeats)
        row = {
            "model": label,
            "method": name,
            "params": valid.public_dict(),
            "input": list(x.shape),
            "ours_s": timed["ours"],
            "floor_s": timed["floor"],
            "ratio": timed["ours"] / timed["floor"],
        }
        if "floor_input" in timed:
            row["floor_input_s"] = timed["floor_input"]
            row["ratio_to_input_floor"] = timed["ours"] / timed["floor_input"]
        rows.append(row)
        _say(_row(row))
    return rows


def _row(row: dict[str, Any]) -> str:
    extra = (
        f"  (to input: floor {row['floor_input_s']:.3f}s, ratio {row['ratio_to_input_floor']:.2f})"
        if "floor_input_s" in row
        else ""
    )
    changed = {k: v for k, v in row["params"].items() if k in ("discard_ratio", "head_fusion")}
    setting = ",".join(f"{k}={v}" for k, v in changed.items() if v not in (0.0, "mean"))
    return (
        f"{row['model']:<34} {row['method']:<18} {setting:<30} ours {row['ours_s']:.3f}s  "
        f"floor {row['floor_s']:.3f}s  ratio {row['ratio']:.2f}{extra}"
    )


def vit(size: int, depth: int) -> ScoreModel:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=size, depth=depth, num_classes=10
    )
    return ScoreModel(model.eval(), None)


def unetr(size: int, hidden: int, heads: int) -> ScoreModel:
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    model = UNETR(
        in_channels=1, out_channels=3, img_size=size, feature_size=16, hidden_size=hidden,
        mlp_dim=4 * hidden, num_heads=heads, spatial_dims=3,
    )  # fmt: skip
    return ScoreModel(model.eval(), MultiClassScores())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    repeats = args.repeats or (3 if args.quick else 7)
    gen = torch.Generator().manual_seed(0)
    vit_px, (vol, hidden, heads) = (112, (64, 192, 4)) if args.quick else (224, (96, 384, 6))
    cases = [
        (f"timm vit_tiny {vit_px}px x4", vit(vit_px, 12),
         torch.rand(4, 3, vit_px, vit_px, generator=gen)),
        (f"monai UNETR {vol}^3 x1 (hidden {hidden})", unetr(vol, hidden, heads),
         torch.rand(1, 1, vol, vol, vol, generator=gen)),
    ]  # fmt: skip
    rows: list[dict[str, Any]] = []
    for label, scored, x in cases:
        rows += bench_model(label, scored, x, repeats)
    result = {
        "benchmark": "bench_attention",
        "quick": args.quick,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "max_ratio": max(r["ratio"] for r in rows),
    }
    _say(f"max ratio {result['max_ratio']:.2f} (target <= 1.1)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()

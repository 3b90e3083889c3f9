"""Every installed method on the model zoo: the table behind the README's zoo figures.

    python benchmarks/zoo.py --out benchmarks/results/zoo.json          # the full zoo
    python benchmarks/zoo.py --fast                                     # the CI subset
    python benchmarks/zoo.py --model torchvision.resnet50 --method captum.deep_lift
    python benchmarks/zoo.py --markdown benchmarks/results/zoo.json     # tables for the README

Writes one record per (model, method) call (status ok / not_applicable / refused /
failed, the reason, seconds) and the summary; prints the summary and every call that
was not ok. ``nox -s zoo`` runs the full zoo.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

from esegeta_core.testing.zoo import ZOO, ZooResult, as_records, run_zoo, summarize


def markdown(calls: list[dict]) -> str:
    """Per model: calls by status; then every call that was not ok, grouped by reason."""
    models: dict[str, dict[str, int]] = {}
    for c in calls:
        row = models.setdefault(
            c["model"], {"ok": 0, "not_applicable": 0, "refused": 0, "failed": 0}
        )
        row[c["status"]] += 1
    lines = [
        "| model | ok | of which warned | not applicable | refused | failed | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in models.items():
        seconds = sum(c["seconds"] for c in calls if c["model"] == name)
        warned = sum(1 for c in calls if c["model"] == name and c.get("warning"))
        lines.append(
            f"| {name} | {row['ok']} | {warned} | {row['not_applicable']} | {row['refused']} | "
            f"{row['failed']} | {seconds:.0f} |"
        )
    summary = summarize([ZooResult(**c) for c in calls])
    lines.append(
        f"| **all {len(models)} models** | **{summary.ok}** | **{summary.warned}** | "
        f"**{summary.by_status.get('not_applicable', 0)}** | "
        f"**{summary.by_status.get('refused', 0)}** | **{summary.by_status.get('failed', 0)}** | "
        f"{sum(c['seconds'] for c in calls):.0f} |"
    )
    groups: dict[tuple[str, str], list[str]] = {}
    for c in calls:
        if c["status"] != "ok":
            key = (c["status"], _reason_kind(c["method"], c["reason"]))
            groups.setdefault(key, []).append(f"{c['model']}")
    for c in calls:
        if c["status"] == "ok" and c.get("warning"):
            key = ("ok, warned", f"`{c['method']}`: {_warning_kind(c['warning'])}")
            groups.setdefault(key, []).append(f"{c['model']}")
    lines += ["", "| status | method: reason | models |", "| --- | --- | --- |"]
    for (status, reason), names in sorted(groups.items()):
        lines.append(f"| {status} | {reason} | {', '.join(sorted(set(names)))} |")
    return "\n".join(lines)


def _warning_kind(warning: str) -> str:
    """A short form of a map's warning."""
    if "the map is zero everywhere" in warning:
        return "the map is zero everywhere"
    if "are zero everywhere" in warning:
        return "some items' maps are zero everywhere"
    if "one value everywhere" in warning:
        return "some items' maps hold one value everywhere"
    return warning[:80]


def _reason_kind(method: str, reason: str) -> str:
    """A short form of a refusal's reason, shared by the models it applies to."""
    known = [
        ("relevance rules cannot be applied", "a product of activations (attention, gating)"),
        ("ReLU rule", "activations other than ReLU"),
        ("no nn.Linear or 1x1 convolution", "no global-average-pooling + linear head"),
        ("ExplainerClassifier", "needs an esegeta_xml.ExplainerClassifier"),
        ("supports 2D inputs only", "2D only"),
        ("models only, not segmentation", "classifiers only (squashes every score)"),
        ("has no LRP rule for", "layers without an LRP rule"),
        ("plain gradient", "no activation to apply the rule at"),
        ("has no attention module", "no self-attention (not a transformer)"),
        ("needs global self-attention", "windowed attention (Swin)"),
        ("Segformer", "a pyramid transformer (tokens change between blocks)"),
        ("mix different numbers of tokens", "a pyramid transformer (tokens change between blocks)"),
    ]
    for needle, text in known:
        if needle in reason:
            return f"`{method}`: {text}"
    return f"`{method}`: {reason[:160]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON table here")
    parser.add_argument("--fast", action="store_true", help="only the CI subset of models")
    parser.add_argument("--model", action="append", help="only these models (repeatable)")
    parser.add_argument("--method", action="append", help="only these methods (repeatable)")
    parser.add_argument("--markdown", type=Path, help="print tables from a zoo JSON and stop")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())["calls"]))
        return 0
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    models = [
        m for m in ZOO if (not args.fast or m.fast) and (not args.model or m.name in args.model)
    ]
    start = time.perf_counter()

    def show(result) -> None:
        mark = {"ok": ".", "not_applicable": "n", "refused": "R", "failed": "F"}[result.status]
        mark = "w" if result.warning else mark
        print(mark, end="", flush=True)
        if result.status in ("refused", "failed"):
            print(f"\n{result.status}: {result.model} {result.method}: {result.reason}")

    results = run_zoo(models, args.method, on_result=show)
    summary = summarize(results)
    print()
    print(
        f"{summary.calls} calls on {len(summary.models)} models: {summary.by_status}; "
        f"{summary.ok} of {summary.applicable} applicable ok "
        f"({100 * summary.success_rate:.1f}%; {summary.warned} of them warned about their "
        f"maps) in {time.perf_counter() - start:.0f} s"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        data = {"summary": summary.__dict__, "calls": as_records(results)}
        args.out.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0 if not summary.failures else 1


if __name__ == "__main__":
    sys.exit(main())

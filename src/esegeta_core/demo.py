"""``esegeta demo``: tiny trained models, explained and evaluated, in one HTML report.

No arguments and no downloads: it trains (or loads from the cache) the shapes
classifier, the shapes vision transformer and the vessel segmenter of
:mod:`esegeta_core.synthetic`, explains a few held-out shapes images (with the CNN and
the ViT) and one vessel volume with a representative set of methods from every
installed backend, scores the maps (faithfulness, localisation against the
known object masks, the randomisation sanity check, cost), and writes a
self-contained report. A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from esegeta_core.catalog import list_methods
from esegeta_core.errors import MethodNotFoundError
from esegeta_core.evaluation.api import MethodRun, evaluate
from esegeta_core.evaluation.leaderboard import Leaderboard
from esegeta_core.explanation import Explanation
from esegeta_core.progress import progress_bar
from esegeta_core.targets import Region

__all__ = ["DemoPlan", "plan_2d", "plan_3d", "plan_vit", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    """Methods to run: the ones scored by every metric, the expensive ones scored
    without the metrics that re-run the method, and visualizations (shown only)."""

    cheap: list[MethodRun] = field(default_factory=list)
    costly: list[MethodRun] = field(default_factory=list)
    visual: list[MethodRun] = field(default_factory=list)


def _installed() -> set[str]:
    return {m.name for m in list_methods()}


def plan_2d(cam_layer: str, *, quick: bool = False) -> DemoPlan:
    """A representative set of 2D methods of every installed backend."""
    have = _installed()
    cheap = [
        MethodRun("captum.saliency", {}, "Saliency (Captum)"),
        MethodRun("captum.integrated_gradients", {"n_steps": 32}, "Integrated gradients (Captum)"),
        MethodRun("cnnvis.grad_cam", {"layer": cam_layer}, "Grad-CAM (cnnvis)"),
        MethodRun("cnnvis.grad_cam_pp", {"layer": cam_layer}, "Grad-CAM++ (cnnvis)"),
        MethodRun("cnnvis.guided_backprop", {}, "Guided backprop (cnnvis)"),
        MethodRun("cnnvis.smoothgrad", {"noise_samples": 8}, "SmoothGrad (cnnvis)"),
        MethodRun("torchray.excitation_backprop", {}, "Excitation backprop (TorchRay)"),
    ]
    costly = [
        MethodRun("captum.occlusion", {"window": 12, "strides": 6}, "Occlusion (Captum)"),
        MethodRun("cnnvis.score_cam", {"layer": cam_layer}, "Score-CAM (cnnvis)"),
        MethodRun("cnnvis.rise", {"num_masks": 500, "cells": 8}, "RISE (cnnvis)"),
        MethodRun("lime.lime", {"num_samples": 150, "n_segments": 40, "sigma": 1.0}, "LIME"),
    ]
    visual = [
        MethodRun(
            "lucent.feature_visualization",
            {"objective": "logit", "steps": 64},
            "Feature visualization (Lucent)",
        )
    ]
    if quick:
        cheap, costly = cheap[:4], costly[1:2]
    return DemoPlan(
        [m for m in cheap if m.method in have],
        [m for m in costly if m.method in have],
        [m for m in visual if m.method in have],
    )


def plan_3d(cam_layer: str, *, quick: bool = False) -> DemoPlan:
    """3D methods for the vessel volume (2D-only backends are left out)."""
    have = _installed()
    cheap = [
        MethodRun("captum.saliency", {}, "Saliency (Captum)"),
        MethodRun("captum.integrated_gradients", {"n_steps": 16}, "Integrated gradients (Captum)"),
        MethodRun("cnnvis.grad_cam", {"layer": cam_layer}, "Grad-CAM (cnnvis)"),
        MethodRun("cnnvis.guided_backprop", {}, "Guided backprop (cnnvis)"),
    ]
    costly = [
        MethodRun("cnnvis.rise", {"num_masks": 300, "cells": 4}, "RISE (cnnvis)"),
        MethodRun(
            "lime.lime",
            {"num_samples": 150, "n_segments": 60, "use_softmax": False},  # region sums
            "LIME (supervoxels)",
        ),
    ]
    if quick:
        cheap, costly = cheap[:2], []
    return DemoPlan([m for m in cheap if m.method in have], [m for m in costly if m.method in have])


def plan_vit(*, quick: bool = False) -> DemoPlan:
    """Transformer methods for the shapes vision transformer: attention rollout and
    its gradient-weighted form, the token Grad-CAM (layer="auto": the last block's
    input, reshaped to the patch grid), and integrated gradients to compare with."""
    have = _installed()
    cheap = [
        MethodRun("attention.rollout", {}, "Attention rollout (attention)"),
        MethodRun("attention.gae", {}, "Generic attention explainability (attention)"),
        MethodRun("cnnvis.grad_cam", {}, "Token Grad-CAM (cnnvis)"),
        MethodRun("captum.integrated_gradients", {"n_steps": 32}, "Integrated gradients (Captum)"),
    ]
    if quick:
        cheap = cheap[:3]
    return DemoPlan([m for m in cheap if m.method in have])


_CHEAP_METRICS = {
    "infidelity": {"n_samples": 8},
    "max_sensitivity": {"n_samples": 3},
    "aopc": {"grid": 8},
    "deletion": {"steps": 32},
    "insertion": {"steps": 32},
    "randomisation": {"layers": "children"},
}


def _figure_bytes(image: torch.Tensor, saliency: torch.Tensor, path: Path, title: str) -> bytes:
    from esegeta_core.report.figures import job_figure

    return job_figure(image, saliency, path, title=title, sign="all").read_bytes()


def _image_bytes(image: torch.Tensor, path: Path, title: str) -> bytes:
    """A synthesised image (a visualization's output) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = image.detach().float().cpu()
    if img.ndim == 4:  # a volume: its axial maximum-intensity projection
        img = img.amax(dim=1)
        title = f"{title} (axial MIP)"
    img = (img - img.min()) / (img.max() - img.min() + 1e-12)
    fig = Figure(figsize=(2.4, 2.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy())
    ax.set_title(title, fontsize="small")
    ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path.read_bytes()


def _evaluate_plan(
    model: torch.nn.Module,
    x: torch.Tensor,
    plan: DemoPlan,
    *,
    target: Any,
    masks: torch.Tensor,
    task: str,
    name: str,
    progress: bool,
    tolerance: float | None = None,
) -> Leaderboard:
    boards = []
    settings = dict(_CHEAP_METRICS)
    if tolerance is not None:  # TorchRay's 15 px at 224 px, scaled to the images
        settings["pointing_game"] = {"tolerance": tolerance}
    common: dict[str, Any] = {
        "masks": masks,
        "task": task,
        "metric_params": settings,
        "keep_maps": True,
        "progress": progress,
    }
    if plan.cheap:
        boards.append(evaluate({name: model}, x, plan.cheap, target, **common))
    if plan.costly:  # not re-run by max-sensitivity and the randomisation check
        metrics = [
            "infidelity", "aopc", "deletion", "insertion", "pointing_game",
            "relevance_mass", "relevance_rank_accuracy", "pompom",
        ]  # fmt: skip
        boards.append(evaluate({name: model}, x, plan.costly, target, metrics=metrics, **common))
    return Leaderboard.combine(boards)


def _sections(
    label: str,
    x: torch.Tensor,
    board: Leaderboard,
    visuals: Sequence[tuple[MethodRun, Explanation]],
    folder: Path,
    names: Sequence[str],
) -> list[Any]:
    from esegeta_core.report.html import InputSection, MapEntry, anchor_id

    by_title = {e.title: e for e in board.entries}
    models = sorted({e.model for e in board.entries})
    sections = []
    for i, item_name in enumerate(names):
        input_png = _image_bytes(x[i], folder / f"{label}-{i}-input.png", item_name)
        maps = []
        for (model_name, title), m in board.maps.items():
            entry = by_title[title]
            target = int(entry.targets[i]) if entry.targets.numel() > i else -1
            item_map = m[i].sum(0, keepdim=True) if m.shape[1] > 1 else m[i]  # channels
            where = folder / f"{anchor_id(label + title)}-{i}.png"
            png = _figure_bytes(x[i], item_map, where, title)
            maps.append(
                MapEntry(
                    method=title,
                    target=f"class {target}",
                    png=png,
                    seconds=(sum(entry.seconds) / max(1, entry.targets.numel())),
                    model=model_name,
                    params=dict(entry.params),
                )
            )
        for run, e in visuals if i == 0 else ():  # once: it does not depend on the input
            png = _image_bytes(
                e.attributions[0], folder / f"{anchor_id(label + run.label)}.png", run.label
            )
            maps.append(
                MapEntry(
                    method=run.label,
                    target="(a visualization of the class)",
                    png=png,
                    seconds=e.seconds,
                    model=models[0] if models else "",
                )
            )
        for entry in board.entries:
            if entry.status not in ("ok", "partial"):
                maps.append(MapEntry(method=entry.title, status=entry.status, error=entry.error))
        sections.append(InputSection(name=item_name, input_png=input_png, maps=maps))
    return sections


def run_demo(output_dir: Path, *, quick: bool = False, progress: bool = True) -> Path:
    """Train or load the tiny models, explain, evaluate, write ``report.html``."""
    from esegeta_core.api import explain
    from esegeta_core.report.html import ReportData, leaderboard_table, write_html_report
    from esegeta_core.synthetic import pretrained

    start = time.perf_counter()
    probe_2d, probe_3d = plan_2d("layer", quick=quick), plan_3d("layer", quick=quick)
    plan_t = plan_vit(quick=quick)
    if not (probe_2d.cheap or probe_2d.costly or probe_3d.cheap or probe_3d.costly):
        raise MethodNotFoundError(
            "esegeta demo: none of the demo's attribution methods is installed (it uses "
            "the captum, cnnvis, torchray and lime backends). Install one, e.g. "
            "`pip install esegeta-captum esegeta-cnnvis`, or run `python -m nox -s demo`, "
            "which installs every backend."
        )
    output_dir = Path(output_dir)
    figures = output_dir / "figures"
    classifier = pretrained("shapes_classifier", progress=progress)
    segmenter = pretrained("vessel_segmenter", progress=progress)
    n = 4 if quick else 8
    shapes = classifier.test_data(n, seed=2026)
    vessels = segmenter.test_data(1, seed=2026)

    plan2 = plan_2d(classifier.cam_layer, quick=quick)
    board2 = _evaluate_plan(
        classifier.model, shapes.images, plan2, target=None, masks=shapes.masks,
        task="classification", name="shapes classifier", progress=progress,
        tolerance=classifier.pointing_tolerance,
    )  # fmt: skip
    visuals = []
    bar = progress_bar(len(plan2.visual), "visualizations", enabled=progress)
    for run in plan2.visual:
        visuals.append((run, explain(classifier.model, shapes.images[:1], run.method,
                                     progress=False, seed=0, **run.params)))  # fmt: skip
        bar.update(1)
    bar.close()
    plan3 = plan_3d(segmenter.cam_layer, quick=quick)
    board3 = _evaluate_plan(
        segmenter.model, vessels.volumes, plan3, target=Region(1, vessels.labels),
        masks=vessels.labels.unsqueeze(1), task="segmentation", name="vessel segmenter",
        progress=progress, tolerance=segmenter.pointing_tolerance,
    )  # fmt: skip
    boards = [board2, board3]
    vit = None
    if plan_t.cheap:  # the transformer section needs the attention or a gradient backend
        vit = pretrained("shapes_vit", progress=progress)
        vit_shapes = vit.test_data(n, seed=2026)  # its shapes are larger: 8 px patches
        board_t = _evaluate_plan(
            vit.model, vit_shapes.images, plan_t, target=None, masks=vit_shapes.masks,
            task="classification", name="shapes ViT", progress=progress,
            tolerance=vit.pointing_tolerance,
        )  # fmt: skip
        boards.append(board_t)
    board = Leaderboard.combine(boards)
    board.to_csv(output_dir / "leaderboard.csv")
    board.to_json(output_dir / "leaderboard.json")

    names = [f"shapes #{i} ({shapes.classes[int(c)]})" for i, c in enumerate(shapes.labels)]
    inputs = _sections("shapes", shapes.images, board2, visuals, figures, names)
    inputs += _sections("vessels", vessels.volumes, board3, [], figures, ["vessel volume #0"])
    if vit is not None:
        vit_names = [
            f"ViT shapes #{i} ({vit_shapes.classes[int(c)]})"
            for i, c in enumerate(vit_shapes.labels)
        ]
        inputs += _sections("vit", vit_shapes.images, boards[-1], [], figures, vit_names)
    notes = [
        f"shapes classifier: {classifier.describe()}",
        f"shapes ViT: {vit.describe()}" if vit is not None else "",
        f"vessel segmenter: {segmenter.describe()}",
        "Localisation metrics use the known object masks (shapes) and vessel labels "
        "(volume, class 1). Costly methods are not re-run by max-sensitivity and the "
        "randomisation check.",
        _best_note(board),
        f"Total time {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} "
        "CPU thread(s)."
        if not torch.cuda.is_available()
        else "",
    ]
    data = ReportData(
        title="esegeta demo",
        inputs=inputs,
        leaderboard=leaderboard_table(board),
        params={
            "quick": quick,
            "methods_2d": [vars(m) for m in [*plan2.cheap, *plan2.costly, *plan2.visual]],
            "methods_3d": [vars(m) for m in [*plan3.cheap, *plan3.costly]],
            "methods_vit": [vars(m) for m in plan_t.cheap],
            "metrics": _CHEAP_METRICS,
        },
        notes=[n for n in notes if n],
    )
    return write_html_report(data, output_dir / "report.html")


def _best_note(board: Leaderboard) -> str:
    """Each model's method with the best mean rank over the metrics, in one line."""
    parts = []
    for model in dict.fromkeys(r["model"] for r in board.rows()):
        row = board.best("mean_rank", model)
        if row is not None:
            sanity = " (fails the randomisation check)" if row.get("sanity") == "fail" else ""
            parts.append(f"{model}: {row['method']}, {row['mean_rank']:.2f}{sanity}")
    if not parts:
        return ""
    return "Best mean rank over the metrics (1 = best in all): " + "; ".join(parts) + "."

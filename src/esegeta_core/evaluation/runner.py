"""``esegeta evaluate CONFIG``: the run config's model(s), inputs and methods, scored.

Each input file is evaluated as one batch per target (int targets, or the predicted
class), and the per-item values of all files are merged into one leaderboard, written
to ``<run folder>/evaluation/leaderboard.csv`` and ``.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from esegeta_core.config import EvaluationSpec, ModelSpec, RegionSpec, RunConfig
from esegeta_core.data_io import expand_paths, load_input, read_array
from esegeta_core.errors import InvalidParamsError
from esegeta_core.evaluation.api import evaluate
from esegeta_core.evaluation.leaderboard import Leaderboard
from esegeta_core.runs import build_model
from esegeta_core.targets import score_wrapper

__all__ = ["evaluate_config"]

log = logging.getLogger(__name__)


def _models(config: RunConfig, spec: EvaluationSpec, base: Path) -> dict[str, nn.Module]:
    if config.devices == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = config.devices[0]
    models = {spec.model_name: build_model(config, base).to(device)}
    for name, section in spec.models.items():
        other = config.model_copy(update={"model": ModelSpec.model_validate(section)})
        models[name] = build_model(other, base).to(device)
    return models


def _outputs(config: RunConfig, spec: EvaluationSpec) -> dict[str, str | int | None]:
    """Each model's output selector, by its leaderboard name."""
    outputs = {spec.model_name: config.model.output}
    for name, section in spec.models.items():
        outputs[name] = ModelSpec.model_validate(section).output
    return outputs


def evaluate_config(
    config: RunConfig, base: Path | None = None, *, progress: bool | None = None
) -> Leaderboard:
    """Evaluate the config's methods on its inputs; write and return the leaderboard."""
    base = base or Path.cwd()
    spec = getattr(config, "evaluation", None) or EvaluationSpec()
    paths = expand_paths(config.inputs.paths, base)
    masks = expand_paths(spec.masks, base) if spec.masks else None
    if masks is not None and len(masks) != len(paths):
        raise InvalidParamsError(
            f"evaluation.masks: {len(masks)} mask file(s) for {len(paths)} input file(s); "
            "give one mask per input, in the same order."
        )
    targets: list[int | None] = [
        t for t in (config.targets or [None]) if not isinstance(t, RegionSpec)
    ]
    if config.targets and len(targets) < len(config.targets):
        log.warning("evaluate: region targets are skipped (metrics score whole inputs)")
    if not targets:
        raise InvalidParamsError(
            "evaluate: the config has only region targets; add class targets or none "
            "(predicted classes)."
        )
    models = _models(config, spec, base)
    show = config.progress if progress is None else progress
    boards = []
    for i, path in enumerate(paths):
        x = load_input(path, config.inputs).tensor
        gt = None
        if masks is not None:
            raw = config.inputs.model_copy(
                update={"scale": "none", "normalise": None, "channels": None}
            )
            gt, _, _ = read_array(masks[i], raw)
            gt = gt.round().long()
            if gt.shape[0] != x.shape[0]:
                gt = gt.expand(x.shape[0], *gt.shape[1:])
        for target in targets:
            boards.append(
                evaluate(
                    models,
                    x,
                    config.methods,
                    target,
                    masks=gt if config.task == "segmentation" or gt is None else gt != 0,
                    task=config.task,
                    wrapper=score_wrapper(
                        config.task,
                        config.wrapper.name,
                        config.wrapper.threshold,
                        config.wrapper.logits,
                    ),
                    output=_outputs(config, spec),
                    metrics=spec.metrics,
                    metric_params=spec.metric_params,
                    preset=spec.preset,
                    seed=config.seed,
                    progress=show,
                )
            )
    board = Leaderboard.combine(boards)
    out = config.run_dir(base) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    board.to_csv(out / "leaderboard.csv")
    board.to_json(out / "leaderboard.json")
    return board


def write_evaluation_report(config: RunConfig, base: Path, board: Leaderboard) -> Path:
    """The run's HTML report with the leaderboard: the run folder's maps when
    ``esegeta run`` wrote them, else the leaderboard alone."""
    from esegeta_core.report.html import (
        REPORT_NAME,
        ReportData,
        leaderboard_table,
        report_from_run,
        write_html_report,
    )

    run_dir = config.run_dir(base)
    table = leaderboard_table(board)
    if (run_dir / "jobs").is_dir():
        data = report_from_run(run_dir, leaderboard=table)
    else:
        data = ReportData(
            title=config.name,
            leaderboard=table,
            params=config.model_dump(mode="json"),
            notes=("No maps in this run folder yet: `esegeta run` the config to add them.",),
        )
    return write_html_report(data, run_dir / REPORT_NAME)

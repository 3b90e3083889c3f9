"""``evaluate()``: explain with several methods, score every map, rank the methods.

One call answers "which map can I trust for my model?": every (model, method) pair is
explained once (its cost measured), and its maps are scored by the chosen metrics,
all batched on the model's device. Segmentation models are scored through the same
wrapper ``explain()`` uses, so every metric sees ``(B, classes)`` scores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from esegeta_core.api import explain, model_device
from esegeta_core.errors import EsegetaError, InvalidInputError, InvalidParamsError
from esegeta_core.evaluation import curves, faithfulness, localisation, sanity
from esegeta_core.evaluation.cost import measure
from esegeta_core.evaluation.leaderboard import METRICS, Leaderboard, MethodScores
from esegeta_core.evaluation.presets import PRESETS
from esegeta_core.explanation import Explanation
from esegeta_core.outputs import OutputSelector
from esegeta_core.progress import progress_bar
from esegeta_core.targets import Region, ScoreFn, TargetLike, Task, score_model

__all__ = ["MethodRun", "evaluate", "maps_of"]

log = logging.getLogger(__name__)

_PRESET_KEY = {"randomisation": "cascading_randomisation"}


@dataclass(frozen=True)
class MethodRun:
    """A method to evaluate: its name, parameters and the title shown in the leaderboard."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    title: str | None = None

    @property
    def label(self) -> str:
        return self.title or self.method


MethodLike = str | MethodRun | tuple[str, Mapping[str, Any]] | Any


def maps_of(e: Explanation) -> torch.Tensor:
    """The maps metrics score: the attributions when they are at input resolution
    (channels kept, for infidelity), else the up-sampled ``saliency()``."""
    return e.attributions if e.output == "input" else e.saliency()


def evaluate(
    model: nn.Module | Mapping[str, nn.Module],
    inputs: torch.Tensor,
    methods: Sequence[MethodLike],
    target: TargetLike = None,
    *,
    masks: torch.Tensor | None = None,
    task: Task = "classification",
    wrapper: str | ScoreFn | None = None,
    output: OutputSelector | Mapping[str, OutputSelector] = None,
    metrics: Sequence[str] | None = None,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    preset: str = "esegeta",
    seed: int | None = 0,
    keep_maps: bool = False,
    progress: bool = True,
) -> Leaderboard:
    """Explain ``inputs`` with every method and score the maps: a :class:`Leaderboard`.

    Args:
        model: a model, or several as ``{name: model}`` (one leaderboard block each).
        inputs: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        methods: method names, ``(name, params)`` pairs, :class:`MethodRun` objects or
            anything with ``method``/``params``/``title`` attributes (the run config's
            method entries). Visualizations (methods that synthesise images) are
            listed with status ``skipped``.
        target: as for :func:`~esegeta_core.explain` (``None``: predicted classes);
            region targets are not supported here.
        masks: ground-truth object masks ``(B, 1, *spatial)`` or ``(B, *spatial)``
            (nonzero = object) for the localisation metrics; for segmentation, an
            integer label map is turned into the mask of each item's target class.
        output: which part of the model's output holds the logits (as for
            :func:`~esegeta_core.explain`: None reads a dict's ``"out"`` / ``"logits"``,
            a tuple's first element, an object's ``.logits``); with several models, a
            ``{name: selector}`` mapping gives each its own.
        metrics: names from :data:`~esegeta_core.evaluation.leaderboard.METRICS`; default
            every metric that applies (the localisation ones only with ``masks``).
        metric_params: per metric, keyword arguments overriding the preset's (for
            segmentation the curves score the raw region score unless ``score`` is set:
            a softmax over summed logits saturates).
        preset: ``"esegeta"`` or ``"torchesegeta"`` (the original's settings). Both
            score POMPOM with a relative threshold (pixels above 5% of each map's
            maximum count as meaningful, ``{"eps": 0.05, "relative": True}``), since
            maps come in arbitrary units; pass ``metric_params={"pompom": {"eps": 1e-6,
            "relative": False}}`` for the paper's absolute threshold.
        seed: seeds the methods and the metrics' noise.
        keep_maps: also return each pair's maps (``Leaderboard.maps``) for reports.
        progress: a progress bar over (model, method) pairs.
    """
    models = dict(model) if isinstance(model, Mapping) else {"model": model}
    if not models:
        raise InvalidInputError("evaluate: pass a model or a non-empty {name: model} mapping.")
    runs = [_method_run(m) for m in methods]
    if not runs:
        raise InvalidParamsError("evaluate: pass at least one method.")
    chosen = _metrics(metrics, masks is not None)
    settings = _settings(chosen, preset, metric_params or {}, task)
    entries: list[MethodScores] = []
    maps: dict[tuple[str, str], torch.Tensor] = {}
    bar = progress_bar(len(models) * len(runs), "evaluate", enabled=progress)
    try:
        for model_name, net in models.items():
            for run in runs:
                bar.set_postfix_str(f"{model_name}: {run.label}")
                entry, pair_maps = _evaluate_pair(
                    model_name,
                    net,
                    inputs,
                    run,
                    target,
                    masks,
                    task,
                    wrapper,
                    output.get(model_name) if isinstance(output, Mapping) else output,
                    chosen,
                    settings,
                    seed,
                )
                entries.append(entry)
                if keep_maps and pair_maps is not None:
                    maps[model_name, run.label] = pair_maps
                bar.update(1)
    finally:
        bar.close()
    return Leaderboard(entries, chosen, maps)


def _method_run(m: MethodLike) -> MethodRun:
    if isinstance(m, MethodRun):
        return m
    if isinstance(m, str):
        return MethodRun(m)
    if isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str):
        return MethodRun(m[0], dict(m[1]))
    if hasattr(m, "method"):
        return MethodRun(m.method, dict(getattr(m, "params", {}) or {}), getattr(m, "title", None))
    raise InvalidParamsError(
        f"evaluate: cannot read a method from {m!r}; pass a name, a (name, params) pair "
        "or a MethodRun."
    )


def _metrics(metrics: Sequence[str] | None, have_masks: bool) -> list[str]:
    if metrics is None:
        return [m for m, info in METRICS.items() if have_masks or not info.needs_mask]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InvalidParamsError(
            f"evaluate: unknown metric(s) {unknown}; choose from {', '.join(METRICS)}."
        )
    needing = [m for m in metrics if METRICS[m].needs_mask]
    if needing and not have_masks:
        raise InvalidParamsError(
            f"evaluate: {needing} need ground-truth masks: pass masks=(B, 1, *spatial)."
        )
    return list(dict.fromkeys(metrics))


def _settings(
    metrics: list[str], preset: str, overrides: Mapping[str, Mapping[str, Any]], task: Task
) -> dict[str, dict[str, Any]]:
    if preset not in PRESETS:
        raise InvalidParamsError(
            f"evaluate: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}."
        )
    stray = [m for m in overrides if m not in METRICS]
    if stray:
        raise InvalidParamsError(
            f"evaluate: metric_params for unknown metric(s) {stray}; metrics: {', '.join(METRICS)}."
        )
    out = {}
    for m in metrics:
        base = dict(PRESETS[preset].get(_PRESET_KEY.get(m, m), {}))
        if task == "segmentation" and base.get("score") == "softmax":
            # a segmentation score sums logits over a region: its softmax saturates at 1
            # and would hide every change, so the curves follow the raw score
            base["score"] = "raw"
        base.update(overrides.get(m, {}))
        out[m] = base
    return out


_WARM: set[str] = set()


def _warm_up(
    run: MethodRun,
    net: nn.Module,
    inputs: torch.Tensor,
    target: TargetLike,
    task: Task,
    wrapper: str | ScoreFn | None,
    output: OutputSelector,
    seed: int | None,
) -> None:
    """The first method of each plugin runs once on one item, untimed: plugins import
    their backend lazily, and that import is not the method's cost."""
    from esegeta_core.plugin.manager import get_registry

    registry = get_registry()
    plugin = registry.plugin_of[registry.get(run.method).name]
    if plugin in _WARM:
        return
    one = target[:1] if isinstance(target, (torch.Tensor, list, tuple)) else target
    explain(
        net,
        inputs[:1],
        run.method,
        one,
        task=task,
        wrapper=wrapper,
        output=output,
        seed=seed,
        progress=False,
        **run.params,
    )
    _WARM.add(plugin)


def _object_masks(
    masks: torch.Tensor | None, targets: torch.Tensor, spatial: tuple[int, ...], task: Task
) -> torch.Tensor | None:
    if masks is None:
        return None
    m = masks if masks.ndim == len(spatial) + 2 else masks.unsqueeze(1)
    if tuple(m.shape[2:]) != spatial or m.shape[1] != 1 or m.shape[0] != len(targets):
        raise InvalidInputError(
            f"evaluate: masks of shape {tuple(masks.shape)} do not fit the inputs: pass "
            f"({len(targets)}, 1, {', '.join(map(str, spatial))})."
        )
    if task == "segmentation" and not m.dtype.is_floating_point and m.dtype != torch.bool:
        return m == targets.to(m.device).view(-1, *([1] * (m.ndim - 1)))
    return m != 0


def _evaluate_pair(
    model_name: str,
    net: nn.Module,
    inputs: torch.Tensor,
    run: MethodRun,
    target: TargetLike,
    masks: torch.Tensor | None,
    task: Task,
    wrapper: str | ScoreFn | None,
    output: OutputSelector,
    metrics: list[str],
    settings: dict[str, dict[str, Any]],
    seed: int | None,
) -> tuple[MethodScores, torch.Tensor | None]:
    device = model_device(net)

    def once() -> Explanation:
        return explain(
            net,
            inputs,
            run.method,
            target,
            task=task,
            wrapper=wrapper,
            output=output,
            seed=seed,
            progress=False,
            **run.params,
        )

    def failed(status: str, error: str, targets: torch.Tensor | None = None) -> MethodScores:
        t = targets if targets is not None else torch.empty(0, dtype=torch.long)
        return MethodScores(
            model_name, run.method, run.label, dict(run.params), t, status=status, error=error
        )

    try:
        _warm_up(run, net, inputs, target, task, wrapper, output, seed)
        e, cost = measure(once, device)
    except EsegetaError as exc:
        log.warning("evaluate: %s on %s failed: %s", run.label, model_name, exc)
        return failed("error", str(exc)), None
    if e.output == "image":
        return failed("skipped", "a visualization: it synthesises images, nothing to score"), None
    maps = maps_of(e).detach()
    targets = e.target
    x = inputs.to(device)
    object_masks = _object_masks(masks, targets, tuple(x.shape[2:]), task)

    def explain_fn(m: nn.Module, xs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # ``m`` already returns (B, classes) scores: explain it as a classifier
        again = explain(m, xs, run.method, t, seed=seed, progress=False, **run.params)
        return maps_of(again)

    def score(items: slice) -> tuple[dict[str, torch.Tensor], bool | None, list[str]]:
        region = target if isinstance(target, Region) else None
        if region is not None and _per_item(region.mask, x):
            region = Region(region.label, region.mask[items])
        scored = score_model(net, task, wrapper, region, output)
        om = object_masks[items] if object_masks is not None else None
        return _score_metrics(
            scored, x[items], targets[items], maps[items], om, explain_fn, metrics, settings,
            run.label, model_name,
        )  # fmt: skip

    if isinstance(target, Region) and _per_item(target.mask, x) and len(x) > 1:
        # one region per item: the scores of item i are its logits inside its own mask,
        # and the metrics batch perturbed copies of one item, so score item by item
        parts = [score(slice(i, i + 1)) for i in range(len(x))]
        keys = [k for k in parts[0][0] if all(k in p[0] for p in parts)]
        values = {k: torch.cat([p[0][k].reshape(-1) for p in parts]) for k in keys}
        verdicts = [p[1] for p in parts if p[1] is not None]
        sanity_failed = sum(verdicts) > len(verdicts) / 2 if verdicts else None  # majority
        errors = sorted({e for p in parts for e in p[2]})
    else:
        values, sanity_failed, errors = score(slice(None))
    values = {k: v.detach().float().cpu() for k, v in values.items()}
    entry = MethodScores(
        model_name,
        run.method,
        run.label,
        dict(run.params),
        targets.cpu(),
        values,
        seconds=(cost.seconds,),
        peak_mb=cost.peak_mb,
        sanity_failed=sanity_failed,
        status="ok" if not errors else "partial",
        error="; ".join(errors),
    )
    return entry, maps.cpu()


def _per_item(mask: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether a region mask holds one mask per item (a leading batch axis > 1)."""
    return mask.ndim >= x.ndim - 1 and mask.shape[0] > 1 and mask.shape[0] == len(x)


def _score_metrics(
    scored: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    object_masks: torch.Tensor | None,
    explain_fn: Any,
    metrics: list[str],
    settings: dict[str, dict[str, Any]],
    label: str,
    model_name: str,
) -> tuple[dict[str, torch.Tensor], bool | None, list[str]]:
    """Every chosen metric of one method's maps: values, the sanity verdict, errors."""
    values: dict[str, torch.Tensor] = {}
    sanity_failed = None
    errors = []
    for metric in metrics:
        kw = settings[metric]
        try:
            if metric == "infidelity":
                values[metric] = faithfulness.infidelity(scored, x, targets, maps, **kw).infidelity
            elif metric == "max_sensitivity":
                values[metric] = faithfulness.max_sensitivity(
                    scored, x, targets, explain_fn, attributions=maps, **kw
                ).sensitivity
            elif metric == "aopc":
                values[metric] = curves.aopc(scored, x, targets, maps, **kw).aopc
            elif metric == "deletion":
                values[metric] = curves.deletion(scored, x, targets, maps, **kw).auc
            elif metric == "insertion":
                values[metric] = curves.insertion(scored, x, targets, maps, **kw).auc
            elif metric == "pointing_game":
                values[metric] = localisation.pointing_game(maps, object_masks, **kw).hit
            elif metric == "relevance_mass":
                values[metric] = localisation.relevance_mass(maps, object_masks, **kw)
            elif metric == "relevance_rank_accuracy":
                values[metric] = localisation.relevance_rank_accuracy(maps, object_masks, **kw)
            elif metric == "pompom":
                values[metric] = localisation.pompom(maps, object_masks, **kw)
            elif metric == "randomisation":
                result = sanity.cascading_randomisation(
                    scored, x, targets, explain_fn, attributions=maps, **kw
                )
                values[metric] = getattr(result, result.verdict_on)[-1]
                sanity_failed = result.failed
        except EsegetaError as exc:
            log.warning("evaluate: %s of %s on %s failed: %s", metric, label, model_name, exc)
            errors.append(f"{metric}: {exc}")
    return values, sanity_failed, errors

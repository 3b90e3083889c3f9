"""``evaluate()``: explain with several methods, score every map, rank the methods.

One call answers "which map can I trust for my model?": every (model, method) pair is
explained once (its cost measured), and its maps are scored by the chosen metrics,
all batched on the model's device. Segmentation models are scored through the same
wrapper ``explain()`` uses, so every metric sees ``(B, classes)`` scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from esegeta_core.api import explain
from esegeta_core.devices import model_device
from esegeta_core.errors import EsegetaError, InvalidInputError, InvalidParamsError
from esegeta_core.evaluation import curves, faithfulness, localisation, sanity
from esegeta_core.evaluation._common import ExplainFn
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
    study = _Study(inputs, target, masks, task, wrapper, chosen, settings, seed)
    entries: list[MethodScores] = []
    maps: dict[tuple[str, str], torch.Tensor] = {}
    bar = progress_bar(len(models) * len(runs), "evaluate", enabled=progress)
    try:
        for model_name, net in models.items():
            selector = output.get(model_name) if isinstance(output, Mapping) else output
            for run in runs:
                bar.set_postfix_str(f"{model_name}: {run.label}")
                entry, pair_maps = _evaluate_pair(study, _Pair(model_name, net, selector, run))
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


@dataclass(frozen=True)
class _Study:
    """What every (model, method) pair of one ``evaluate()`` call shares."""

    inputs: torch.Tensor
    target: TargetLike
    masks: torch.Tensor | None
    task: Task
    wrapper: str | ScoreFn | None
    metrics: list[str]
    settings: dict[str, dict[str, Any]]
    """Per metric, its keyword arguments (preset and overrides)."""
    seed: int | None


@dataclass(frozen=True)
class _Pair:
    """One model (with its output selector) and one method to evaluate on it."""

    model_name: str
    net: nn.Module
    output: OutputSelector
    run: MethodRun

    def explain(self, study: _Study, inputs: torch.Tensor, target: TargetLike) -> Explanation:
        """The method on the model, as ``evaluate()`` asked for it."""
        return explain(
            self.net,
            inputs,
            self.run.method,
            target,
            task=study.task,
            wrapper=study.wrapper,
            output=self.output,
            seed=study.seed,
            progress=False,
            **self.run.params,
        )

    def explain_fn(self, seed: int | None) -> ExplainFn:
        """The method again, for metrics that re-explain (perturbed inputs, a
        randomised model): their models already return (B, classes) scores, so it
        explains them as classifiers."""

        def again(m: nn.Module, xs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            e = explain(m, xs, self.run.method, t, seed=seed, progress=False, **self.run.params)
            return maps_of(e)

        return again

    def failed(self, status: str, error: str) -> MethodScores:
        """An entry without values: the method failed (``"error"``) or was skipped."""
        run = self.run
        empty = torch.empty(0, dtype=torch.long)
        return MethodScores(
            self.model_name,
            run.method,
            run.label,
            dict(run.params),
            empty,
            status=status,
            error=error,
        )


@dataclass(frozen=True)
class _Maps:
    """One method's maps and what they are scored against: the inputs (on the model's
    device), the explained classes and the object masks."""

    x: torch.Tensor
    targets: torch.Tensor
    maps: torch.Tensor
    object_masks: torch.Tensor | None

    def part(self, items: slice) -> _Maps:
        """The same for ``items`` only."""
        om = self.object_masks
        return _Maps(
            self.x[items],
            self.targets[items],
            self.maps[items],
            om[items] if om is not None else None,
        )


@dataclass(frozen=True)
class _Batch:
    """What the metrics score for one method: the scoring model, the inputs, the
    explained classes, the maps, the object masks, and how to explain again."""

    scored: nn.Module
    x: torch.Tensor
    targets: torch.Tensor
    maps: torch.Tensor
    object_masks: torch.Tensor | None
    explain_fn: ExplainFn


@dataclass(frozen=True)
class _Scores:
    """Every chosen metric's values for one method, the sanity verdict, the errors."""

    values: dict[str, torch.Tensor]
    sanity_failed: bool | None
    errors: list[str]


_WARM: set[str] = set()


def _warm_up(study: _Study, pair: _Pair) -> None:
    """The first method of each plugin runs once on one item, untimed: plugins import
    their backend lazily, and that import is not the method's cost."""
    from esegeta_core.plugin.manager import get_registry

    registry = get_registry()
    plugin = registry.plugin_of[registry.get(pair.run.method).name]
    if plugin in _WARM:
        return
    target = study.target
    one = target[:1] if isinstance(target, (torch.Tensor, list, tuple)) else target
    pair.explain(study, study.inputs[:1], one)
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


def _evaluate_pair(study: _Study, pair: _Pair) -> tuple[MethodScores, torch.Tensor | None]:
    """One method on one model: explained once (its cost measured), its maps scored by
    every chosen metric; an entry and the maps (None when nothing was explained)."""
    run = pair.run
    device = model_device(pair.net)
    try:
        _warm_up(study, pair)
        e, cost = measure(lambda: pair.explain(study, study.inputs, study.target), device)
    except EsegetaError as exc:
        log.warning("evaluate: %s on %s failed: %s", run.label, pair.model_name, exc)
        return pair.failed("error", str(exc)), None
    if e.output == "image":
        skipped = pair.failed("skipped", "a visualization: it synthesises images, nothing to score")
        return skipped, None
    maps = maps_of(e).detach()
    scores = _score_pair(study, pair, maps, e.target, device)
    entry = MethodScores(
        pair.model_name,
        run.method,
        run.label,
        dict(run.params),
        e.target.cpu(),
        scores.values,
        seconds=(cost.seconds,),
        peak_mb=cost.peak_mb,
        sanity_failed=scores.sanity_failed,
        status="ok" if not scores.errors else "partial",
        error="; ".join(scores.errors),
    )
    return entry, maps.cpu()


def _score_pair(
    study: _Study, pair: _Pair, maps: torch.Tensor, targets: torch.Tensor, device: torch.device
) -> _Scores:
    """The metrics of one method's maps (on the CPU, as floats); with one region per
    item, item by item."""
    x = study.inputs.to(device)
    object_masks = _object_masks(study.masks, targets, tuple(x.shape[2:]), study.task)
    whole = _Maps(x, targets, maps, object_masks)
    target = study.target
    if isinstance(target, Region) and _per_item(target.mask, x) and len(x) > 1:
        # one region per item: the scores of item i are its logits inside its own mask,
        # and the metrics batch perturbed copies of one item, so score item by item
        scores = _merged([_score_items(study, pair, whole, slice(i, i + 1)) for i in range(len(x))])
    else:
        scores = _score_items(study, pair, whole, slice(None))
    values = {k: v.detach().float().cpu() for k, v in scores.values.items()}
    return _Scores(values, scores.sanity_failed, scores.errors)


def _score_items(study: _Study, pair: _Pair, whole: _Maps, items: slice) -> _Scores:
    """The metrics of ``items`` of ``whole``, scored inside their own region (if any)."""
    region = study.target if isinstance(study.target, Region) else None
    if region is not None and _per_item(region.mask, whole.x):
        region = Region(region.label, region.mask[items])
    part = whole.part(items)
    batch = _Batch(
        score_model(pair.net, study.task, study.wrapper, region, pair.output),
        part.x,
        part.targets,
        part.maps,
        part.object_masks,
        pair.explain_fn(study.seed),
    )
    return _score_metrics(study, pair, batch)


def _merged(parts: list[_Scores]) -> _Scores:
    """Per-item scores as one: values concatenated (the metrics every item has), the
    sanity verdict by majority, the errors of any item."""
    keys = [k for k in parts[0].values if all(k in p.values for p in parts)]
    values = {k: torch.cat([p.values[k].reshape(-1) for p in parts]) for k in keys}
    verdicts = [p.sanity_failed for p in parts if p.sanity_failed is not None]
    sanity_failed = sum(verdicts) > len(verdicts) / 2 if verdicts else None  # majority
    errors = sorted({e for p in parts for e in p.errors})
    return _Scores(values, sanity_failed, errors)


def _per_item(mask: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether a region mask holds one mask per item (a leading batch axis > 1)."""
    return mask.ndim >= x.ndim - 1 and mask.shape[0] > 1 and mask.shape[0] == len(x)


_MetricValue = Callable[[_Batch, dict[str, Any]], torch.Tensor]
"""One metric's per-item values for a batch, given its keyword arguments."""

_VALUES: dict[str, _MetricValue] = {
    "infidelity": lambda b, kw: (
        faithfulness.infidelity(b.scored, b.x, b.targets, b.maps, **kw).infidelity
    ),
    "max_sensitivity": lambda b, kw: (
        faithfulness.max_sensitivity(
            b.scored, b.x, b.targets, b.explain_fn, attributions=b.maps, **kw
        ).sensitivity
    ),
    "aopc": lambda b, kw: curves.aopc(b.scored, b.x, b.targets, b.maps, **kw).aopc,
    "deletion": lambda b, kw: curves.deletion(b.scored, b.x, b.targets, b.maps, **kw).auc,
    "insertion": lambda b, kw: curves.insertion(b.scored, b.x, b.targets, b.maps, **kw).auc,
    "pointing_game": lambda b, kw: localisation.pointing_game(b.maps, b.object_masks, **kw).hit,
    "relevance_mass": lambda b, kw: localisation.relevance_mass(b.maps, b.object_masks, **kw),
    "relevance_rank_accuracy": lambda b, kw: localisation.relevance_rank_accuracy(
        b.maps, b.object_masks, **kw
    ),
    "pompom": lambda b, kw: localisation.pompom(b.maps, b.object_masks, **kw),
}
"""How ``evaluate()`` reads each metric but the randomisation test (which also gives a
verdict: :func:`_randomisation`)."""


def _randomisation(b: _Batch, kw: dict[str, Any]) -> tuple[torch.Tensor, bool]:
    """The cascading randomisation test: its last layer's similarity and the verdict."""
    result = sanity.cascading_randomisation(
        b.scored, b.x, b.targets, b.explain_fn, attributions=b.maps, **kw
    )
    return getattr(result, result.verdict_on)[-1], result.failed


def _score_metrics(study: _Study, pair: _Pair, batch: _Batch) -> _Scores:
    """Every chosen metric of one method's maps: values, the sanity verdict, errors (a
    metric that fails is logged and left out, the others still count)."""
    values: dict[str, torch.Tensor] = {}
    sanity_failed: bool | None = None
    errors: list[str] = []
    for metric in study.metrics:
        kw = study.settings[metric]
        try:
            if metric == "randomisation":
                values[metric], sanity_failed = _randomisation(batch, kw)
            else:
                values[metric] = _VALUES[metric](batch, kw)
        except EsegetaError as exc:
            log.warning(
                "evaluate: %s of %s on %s failed: %s", metric, pair.run.label, pair.model_name, exc
            )
            errors.append(f"{metric}: {exc}")
    return _Scores(values, sanity_failed, errors)

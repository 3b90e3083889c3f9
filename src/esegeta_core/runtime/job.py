"""Running one checked method call: what ``explain()`` does once its arguments are valid.

A :class:`Job` puts the model in eval mode, moves the inputs to its device, resolves
``"auto"`` layers, prepares the model (taps, layouts, rules), lets the method refuse a
model it cannot apply to, refuses huge requested counts, runs the method once or patch
by patch, and restores the model exactly as it was found. Around every call of the
method sit the runtime features: mixed precision, CUDA out-of-memory retry, seeding,
auto-batching; every map is checked (:func:`~esegeta_core.checks.check_map`). A
failure that is not an :class:`~esegeta_core.errors.EsegetaError` becomes a
:class:`~esegeta_core.errors.MethodFailedError`, or an
:class:`~esegeta_core.errors.InvalidInputError` when the model fails on the input alone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from esegeta_core import layer_calls
from esegeta_core.checks import blank_maps, check_cost, check_map
from esegeta_core.devices import seeded
from esegeta_core.errors import EsegetaError, InvalidParamsError, MethodFailedError
from esegeta_core.explainer import Explainer, MethodParams, MethodResult
from esegeta_core.layouts import ReshapeSpec
from esegeta_core.model_state import ModelState
from esegeta_core.outputs import OutputSelector, selector_label
from esegeta_core.progress import progress_bar
from esegeta_core.runtime.batching import (
    params_with_plan,
    plan_batches,
    planned_pass_params,
    run_with_oom_retry,
)
from esegeta_core.runtime.heap import held_heap
from esegeta_core.runtime.layer_setup import (
    layer_modules,
    prepare_model,
    resolve_layers,
    token_hint,
)
from esegeta_core.runtime.model_checks import blame_input, check_scores, checking_scores, is_oom
from esegeta_core.runtime.pass_defaults import cpu_pass_defaults, default_pass_start
from esegeta_core.runtime.passes import PassSplitter, Planning, planning
from esegeta_core.runtime.patches import (
    PatchSpec,
    count_patches,
    iterate_patches,
    needs_patches,
    stitch_item,
)
from esegeta_core.runtime.precision import Precision, float32_math, run_with_precision
from esegeta_core.targets import (
    Region,
    ScoreFn,
    TargetLike,
    Task,
    normalise_target,
    predicted_classes,
    region_mask,
    score_model,
    summed_scores,
    target_classes,
)

log = logging.getLogger(__name__)

Attributions = torch.Tensor | MethodResult
"""What a method's ``attribute`` returns."""


@dataclass(frozen=True)
class JobSpec:
    """One method on one model, with the call's options, all checked beforehand."""

    cls: type[Explainer]
    plugin: str
    """The plugin that registered ``cls`` (named in errors and warnings)."""
    model: nn.Module
    device: torch.device
    """The model's device (inputs are moved there)."""
    task: Task = "classification"
    wrapper: str | ScoreFn | None = None
    output: OutputSelector = None
    reshape: ReshapeSpec = None
    amp: Precision | None = None
    seed: int | None = None
    patches: PatchSpec | None = None
    auto_batch: bool = False
    progress: bool = True
    force: bool = False


@dataclass(frozen=True)
class JobResult:
    """What one run produced: the map, the classes explained, the parameters used (the
    batch sizes auto-batching or an OOM retry chose), the method's own time, extras."""

    attributions: torch.Tensor
    target: torch.Tensor
    params: MethodParams
    seconds: float
    extras: dict[str, Any]


class Job:
    """Runs a :class:`JobSpec`'s method once (or patch by patch) with the runtime
    features applied around every call and every map checked. It collects the call's
    warnings and extras, so each call gets a job of its own."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.warnings: list[str] = []
        """Warnings about the maps, once each per call (not per patch)."""
        self.extras: dict[str, Any] = {}
        """What the run records in the explanation's extras, in order."""
        self.zero_hint = ""
        """Added to the all-zero warning when the call knows a likelier cause."""
        self._plain: nn.Module | None = None
        self._probe: torch.Tensor | None = None
        self._planned: list[str] = []
        """The pass parameters the pass planner sizes in this call (``auto_batch``)."""
        self._splitting: Planning | None = None
        """Under ``auto_batch`` with patches, for a method that does not build its own
        passes: the planner's state that each patch batch's splitter shares."""

    def scored(self, target: TargetLike) -> nn.Module:
        """The model as ``(B, classes)`` scores (for ``target``'s region, if any)."""
        spec = self.spec
        return score_model(spec.model, spec.task, spec.wrapper, target, spec.output)

    def run(self, inputs: torch.Tensor, target: TargetLike, params: MethodParams) -> JobResult:
        """Explain checked ``inputs`` for ``target`` with validated ``params``; the model
        is in eval mode meanwhile and restored after, whatever happens."""
        state = ModelState.capture(self.spec.model)
        x = inputs
        try:
            if any(m.training for m in self.spec.model.modules()):
                self.spec.model.eval()
            x = _on_device(inputs, self.spec.device)
            with held_heap(self.spec.device), float32_math(self.spec.amp, self.spec.device):
                result, t, params, seconds = self._execute(x, target, params)
        except EsegetaError:
            raise
        except Exception as exc:
            raise self._failure(exc, x) from exc
        finally:
            self._restore(state)
        return self._finish(result, t, params, seconds)

    def _execute(
        self, x: torch.Tensor, target: TargetLike, params: MethodParams
    ) -> tuple[Attributions, torch.Tensor, MethodParams, float]:
        """Probe, prepare and run the method; time the method alone."""
        spec = self.spec
        patches = self._patching(x)
        probe = self._probe = _first_patch(x, patches) if patches is not None else x[:1]
        if patches is not None and isinstance(target, Region):  # before any patch runs
            region_mask(target.mask, x.shape, against="the input", patched=True)
        # probes score every class (a region's mask fits the whole input, not a patch)
        plain = self._plain = self.scored(None)
        params, chosen = resolve_layers(spec.cls, params, spec.model, plain, probe)
        per_call = patches.batch_size if patches is not None else x.shape[0]
        params = cpu_pass_defaults(spec.cls, params, probe, per_call, auto_batch=spec.auto_batch)
        if chosen:
            self.extras["layer_auto"] = chosen
        explainer = spec.cls()
        with contextlib.ExitStack() as stack:
            stack.enter_context(layer_calls.scope())
            self._prepare(stack, explainer, plain, probe, x, target, params)
            start = time.perf_counter()
            if patches is not None:
                result, t, params = self._run_patched(
                    stack, explainer, probe, x, target, params, patches
                )
            else:
                result, t, params = self._run_whole(stack, explainer, x, target, params)
            if spec.device.type == "cuda":
                torch.cuda.synchronize(spec.device)
            seconds = time.perf_counter() - start
        return result, t, params, seconds

    def _patching(self, x: torch.Tensor) -> PatchSpec | None:
        """The patch spec when ``x`` is larger than a patch; None: explain it whole."""
        patches = self.spec.patches
        return patches if patches is not None and needs_patches(patches, x.shape[2:]) else None

    def _prepare(
        self,
        stack: contextlib.ExitStack,
        explainer: Explainer,
        plain: nn.Module,
        probe: torch.Tensor,
        x: torch.Tensor,
        target: TargetLike,
        params: MethodParams,
    ) -> None:
        """Prepare the model on ``stack`` (``plain`` scores every class, ``probe`` is the
        first item or patch), then let the method refuse the model and the cost check
        refuse huge requests, before anything heavy runs."""
        spec = self.spec
        setup = prepare_model(stack, spec.cls, spec.model, plain, probe, params, spec.reshape)
        if setup.layouts:
            self.extras["layouts"] = setup.layouts
        if setup.preparation is not None:
            self.extras["preparation"] = setup.preparation
        self.zero_hint = token_hint(setup.layouts, set(self.extras.get("layer_auto", {}).values()))
        explainer.check_model(self.scored(target), params, setup.trace)
        check_cost(
            explainer,
            params,
            self.scored(None),
            x,
            probe=probe,
            force=spec.force,
            plugin=spec.plugin,
            auto_batch=spec.auto_batch,
        )

    def _run_whole(
        self,
        stack: contextlib.ExitStack,
        explainer: Explainer,
        x: torch.Tensor,
        target: TargetLike,
        params: MethodParams,
    ) -> tuple[Attributions, torch.Tensor, MethodParams]:
        """The method on the whole batch at once (auto-batched when asked)."""
        scored = self.scored(target)
        t = self._targets(scored, x, target, params, explainer)
        scored, params, plans = self._plan_passes(stack, scored, x, params)
        result, params = self._attribute(explainer, scored, x, t, params, check=target is not None)
        return result, t, self._record_plan(params, plans, x.shape[0])

    def _record_plan(
        self, params: MethodParams, plans: Planning | None, batch: int
    ) -> MethodParams:
        """After a planned call: the plan used last in ``extras["pass_plan"]``, and the
        params with the planned pass parameters at its pass size (``batch``: the items
        per call, for parameters that count copies of each item)."""
        if plans is None or plans.plan is None:
            return params
        plan = plans.plan
        self.extras["pass_plan"] = {
            "inputs_per_pass": plan.batch_size,
            "channels_last": plan.channels_last,
            "measured_now": plans.tuned,
        }
        return params_with_plan(self.spec.cls, params, self._planned, plan.batch_size, batch)

    def _targets(
        self,
        scored: nn.Module,
        x: torch.Tensor,
        target: TargetLike,
        params: MethodParams,
        explainer: Explainer,
    ) -> torch.Tensor:
        """The classes explained: ``None`` costs one forward pass (the predicted class),
        which also counts how often the method's layers run (:mod:`~esegeta_core.
        layer_calls`) and, without mixed precision, is the method's own first pass
        where it takes it (:meth:`~esegeta_core.Explainer.prediction_pass`); a given
        target is checked on the method's own first forward pass."""
        if target is None:
            with torch.no_grad(), layer_calls.counting(self._layers(params)):
                scores = None
                if self.spec.amp is None:
                    scores = explainer.prediction_pass(scored, x, params)
                if scores is None:
                    scores = scored(x)
            check_scores(scores, x, self.spec.task, self.spec.cls.name)
            return normalise_target(target, scores, summed=summed_scores(scored))
        return target_classes(target, x.shape[0], x.device)

    def _layers(self, params: MethodParams) -> list[nn.Module]:
        """The modules the method's layer parameters name (resolved and checked by
        :func:`resolve_layers` already)."""
        found = layer_modules(params, self.spec.model, self.spec.cls.name, maps_only=False)
        return [module for _, module in found]

    def _plan_passes(
        self,
        stack: contextlib.ExitStack,
        scored: nn.Module,
        x: torch.Tensor,
        params: MethodParams,
    ) -> tuple[nn.Module, MethodParams, Planning | None]:
        """Under ``auto_batch``: batch sizes that fit, and the pass planner (held on
        ``stack`` for methods that run their own passes, else splitting the model's)."""
        spec = self.spec
        if not spec.auto_batch:
            return scored, params, None
        # the search starts from the passes the call would run without auto_batch
        start = default_pass_start(spec.cls, params, x[:1], x.shape[0])
        self._planned = planned_pass_params(spec.cls, params)
        params, cap = plan_batches(spec.cls, params, scored, x, network=spec.model)
        if cap is None:
            return scored, params, None
        if spec.cls.own_passes:  # it calls method_passes
            return scored, params, stack.enter_context(planning(spec.model, cap, start))
        splitter = PassSplitter(scored, network=spec.model, cap=cap, start=start)
        return splitter, params, splitter.state

    def _attribute(
        self,
        explainer: Explainer,
        scored: nn.Module,
        x: torch.Tensor,
        t: torch.Tensor,
        params: MethodParams,
        *,
        check: bool = True,
        zeros: bool = True,
    ) -> tuple[Attributions, MethodParams]:
        """One call of the method, under precision, OOM retry and the seed; ``check``:
        validate the scores and ``t`` on the method's first forward pass (False when a
        probe pass already did); ``zeros``: warn about items whose map is zero (not for
        a patch: the stitched maps are checked)."""
        spec = self.spec

        def call(p: MethodParams) -> Attributions:
            checking: contextlib.AbstractContextManager[None] = (
                checking_scores(scored, x, t, spec.task, spec.cls.name)
                if check
                else contextlib.nullcontext()
            )
            with seeded(spec.seed, spec.device), checking:
                return explainer.attribute(scored, x, t, p)

        def once(p: MethodParams) -> Attributions:
            return run_with_precision(partial(call, p), spec.amp, spec.device, spec.cls.name)

        result, used = run_with_oom_retry(spec.cls, params, once, spec.device)
        self._check_map(result, x, zeros=zeros)
        return result, used

    def _check_map(self, result: Attributions, x: torch.Tensor, *, zeros: bool = True) -> None:
        """Refuse a result that is not a map; log a map's warnings (the method's own,
        then the core's checks) once per call."""
        spec = self.spec
        tensor = result.attributions if isinstance(result, MethodResult) else result
        if isinstance(result, MethodResult):
            for warning in result.extras.pop("warnings", None) or []:
                if zeros:  # not a patch's: a patch's map may rightly be empty
                    self._warn(warning)
        if not isinstance(tensor, torch.Tensor):
            raise MethodFailedError(
                f"Method {spec.cls.name!r} (plugin {spec.plugin!r}) returned "
                f"{type(tensor).__name__}, not a tensor: this is a bug in the plugin."
            )
        self._warn(check_map(tensor, x, spec.cls, spec.plugin, zeros=zeros))

    def _warn(self, warning: str) -> None:
        """Log a map's warning (with the call's hint for zero maps) once per call."""
        if warning and self.zero_hint and "zero everywhere" in warning:
            warning = f"{warning} {self.zero_hint}"
        if warning and warning not in self.warnings:  # once per call, not per patch
            log.warning(warning)
            self.warnings.append(warning)

    def _run_patched(
        self,
        stack: contextlib.ExitStack,
        explainer: Explainer,
        probe: torch.Tensor,
        x: torch.Tensor,
        target: TargetLike,
        params: MethodParams,
        patches: PatchSpec,
    ) -> tuple[torch.Tensor, torch.Tensor, MethodParams]:
        """The method patch by patch, the maps stitched per item (``probe``: the first
        patch, which sizes the batches under ``auto_batch``). Under ``auto_batch`` the
        pass planner runs the passes of every patch batch, as for a whole input: one
        plan per patch shape, found on the first batches (held on ``stack``)."""
        t = self._patch_targets(x, target, patches)
        plans = None
        if self.spec.auto_batch:
            like = probe.expand(patches.batch_size, *probe.shape[1:])
            _, params, plans = self._plan_passes(stack, self.scored(None), like, params)
            if plans is not None and not self.spec.cls.own_passes:
                self._splitting = plans
        result, params = self._stitch(explainer, x, t, target, params, patches)
        self._warn(blank_maps(result, self.spec.cls.name))
        return result, t, self._record_plan(params, plans, patches.batch_size)

    def _patch_targets(
        self, x: torch.Tensor, target: TargetLike, patches: PatchSpec
    ) -> torch.Tensor:
        """Targets for patch mode; ``None`` = the class with the highest score summed over
        every patch of the item (a forward pass per patch, no gradients)."""
        if target is not None:  # checked on the method's first forward pass
            return target_classes(target, x.shape[0], x.device)
        scored = self.scored(None)
        patch = _first_patch(x, patches)
        with torch.no_grad():
            scores = scored(patch)
        check_scores(scores, patch, self.spec.task, self.spec.cls.name)
        totals = []
        for item in x:
            total = torch.zeros_like(scores[0])
            for batch, _, _ in iterate_patches(item, patches):
                with torch.no_grad():
                    total += scored(batch.to(x.device)).sum(0)
            totals.append(total)
        return predicted_classes(torch.stack(totals), summed=summed_scores(scored))

    def _stitch(
        self,
        explainer: Explainer,
        x: torch.Tensor,
        t: torch.Tensor,
        target: TargetLike,
        params: MethodParams,
        patches: PatchSpec,
    ) -> tuple[torch.Tensor, MethodParams]:
        """Every item's patches explained and stitched (a progress bar over patches);
        the parameters the last patch used carry over to the next."""
        name = self.spec.cls.name
        if self.spec.cls.output == "image":
            raise InvalidParamsError(
                f"Method {name!r} is a visualization (it synthesises images): "
                "patch-based execution does not apply to it. Drop patches=."
            )
        regions = _item_regions(target, x)
        used = params

        def explain_batch(i: int, batch: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
            nonlocal used
            result, used = self._explain_patches(explainer, x.device, t[i], used, batch, extra)
            return result

        total = sum(count_patches(item, patches) for item in x)
        bar = progress_bar(total, f"{name} patches", enabled=self.spec.progress)
        try:
            maps = [
                stitch_item(item, patches, partial(explain_batch, i), regions[i], bar.update)
                for i, item in enumerate(x)
            ]
        finally:
            bar.close()
        return torch.stack(maps).to(x.device), used

    def _explain_patches(
        self,
        explainer: Explainer,
        device: torch.device,
        label: torch.Tensor,
        params: MethodParams,
        patches: torch.Tensor,
        extra: torch.Tensor | None,
    ) -> tuple[torch.Tensor, MethodParams]:
        """One batch of an item's patches for class ``label``; with a region (``extra``,
        the mask's patches), scored inside it, and all zero where it holds nothing."""
        patches = patches.to(device)
        tt = label.expand(patches.shape[0])
        if extra is None:
            scored = self.scored(None)
        else:
            mask = extra[:, 0].to(device)
            if not bool(mask.any()):
                return torch.zeros_like(patches), params
            scored = self.scored(Region(int(label), mask))
        if self._splitting is not None:  # the planner's passes, its state shared
            splitter = PassSplitter(scored, network=self.spec.model, cap=self._splitting.cap)
            splitter.state = self._splitting
            scored = splitter
        result, params = self._attribute(
            explainer, scored, patches, tt, params, check=True, zeros=False
        )
        return (result.attributions if isinstance(result, MethodResult) else result), params

    def _failure(self, exc: Exception, x: torch.Tensor) -> MethodFailedError:
        """The error for a failure outside esegeta's own errors: the method's
        (:class:`MethodFailedError`), unless the model fails on the input alone
        (:func:`blame_input` raises then)."""
        spec = self.spec
        if self._plain is not None and self._probe is not None and not is_oom(exc):
            blame_input(self._plain, self._probe, x, spec.cls.name, exc)
        return MethodFailedError(
            f"Method {spec.cls.name!r} (plugin {spec.plugin!r}) failed: {type(exc).__name__}: {exc}"
        )

    def _restore(self, state: ModelState) -> None:
        """Put the model back as it was; warn about hooks the method left on it."""
        removed = state.restore()
        if removed:
            log.warning(
                "method %s (plugin %s) left %d hook(s) on the model; esegeta removed them",
                self.spec.cls.name,
                self.spec.plugin,
                removed,
            )

    def _finish(
        self, result: Attributions, t: torch.Tensor, params: MethodParams, seconds: float
    ) -> JobResult:
        """The result, with the method's own extras, the warnings and the output used."""
        extras = self.extras
        if isinstance(result, MethodResult):
            extras.update(result.extras)
            result = result.attributions
        if self.warnings:
            extras["warnings"] = self.warnings
        if self.spec.output is not None:
            extras["output"] = selector_label(self.spec.output)
        return JobResult(result, t, params, seconds, extras)


def _on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``, as a normal tensor autograd can use."""
    x = x.to(device)
    if x.is_inference():  # made under torch.inference_mode(): autograd cannot use it
        x = x.clone()
    return x


def _first_patch(x: torch.Tensor, spec: PatchSpec) -> torch.Tensor:
    """The top-left patch of the first item (probe passes: class count, memory)."""
    size, _ = spec.sizes(x.ndim - 2)
    return x[(slice(0, 1), slice(None), *(slice(0, n) for n in size))]


def _item_regions(target: TargetLike, x: torch.Tensor) -> list[torch.Tensor | None]:
    """Per item, a region target's mask as ``stitch_item``'s extra (``(1, *spatial)``
    uint8; one mask shared by all items, or one per item); None without a region."""
    if not isinstance(target, Region):
        return [None] * len(x)
    region = region_mask(target.mask, x.shape, against="the input", patched=True) != 0
    return [region[i if region.shape[0] > 1 else 0][None].to(torch.uint8) for i in range(len(x))]

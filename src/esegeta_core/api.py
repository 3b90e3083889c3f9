"""``explain()``: the one call that runs any installed method on any model.

Data flows one way: validate the model, inputs and parameters; wrap the model so that
it returns ``B x classes`` (output adapter, segmentation reduction); choose ``"auto"``
layers; prepare the model for rule-based methods and let the method refuse a model it
cannot apply to; refuse huge requested counts; normalise the target; move everything
to the model's device; run the method once; check the map; restore the model exactly
as it was found.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from esegeta_core.checks import check_cost, check_map
from esegeta_core.errors import (
    EsegetaError,
    InvalidInputError,
    InvalidModelError,
    InvalidParamsError,
    MethodFailedError,
    UnsupportedRankError,
)
from esegeta_core.explainer import Explainer, MethodParams, MethodResult
from esegeta_core.explanation import Explanation
from esegeta_core.layers import AUTO, auto_layer, resolve_layer, unwrap
from esegeta_core.layouts import Layout, ReshapeSpec, layer_layouts, parse_reshape
from esegeta_core.model_state import ModelState
from esegeta_core.outputs import OutputSelector, selector_label
from esegeta_core.plugin.manager import Registry, get_registry
from esegeta_core.preparation import no_inplace, prepared, tapped
from esegeta_core.progress import progress_bar
from esegeta_core.runtime.batching import auto_batch_params, plan_batches, run_with_oom_retry
from esegeta_core.runtime.passes import PassSplitter, planning
from esegeta_core.runtime.patches import (
    PatchSpec,
    count_patches,
    iterate_patches,
    needs_patches,
    stitch_item,
)
from esegeta_core.runtime.precision import Precision, check_precision, run_with_precision
from esegeta_core.targets import (
    Region,
    ScoreFn,
    TargetLike,
    Task,
    check_target_range,
    normalise_target,
    region_mask,
    score_model,
    target_classes,
)
from esegeta_core.tracing import ModelTrace, trace_model

log = logging.getLogger(__name__)


@torch.inference_mode(False)
@torch.enable_grad()
def explain(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str,
    /,
    target: TargetLike = None,
    *,
    task: Task = "classification",
    wrapper: str | ScoreFn | None = None,
    output: OutputSelector = None,
    reshape: ReshapeSpec = None,
    seed: int | None = None,
    amp: Precision | None = None,
    patches: PatchSpec | dict[str, Any] | None = None,
    auto_batch: bool = False,
    progress: bool = True,
    force: bool = False,
    **params: Any,
) -> Explanation:
    """Explain ``model`` on ``inputs`` with the installed method ``method``.

    The call runs with gradients enabled and outside ``torch.inference_mode()``, so it
    also works inside ``torch.no_grad()`` or ``inference_mode()`` blocks and on inference
    tensors (they are copied into normal tensors); the maps are the same as outside.

    Args:
        model: any ``torch.nn.Module`` with real weights (not on the meta device); it is
            put in eval mode for the call and left exactly as it was found (mode, hooks,
            ``requires_grad``, ``.grad``, module attributes).
        inputs: a batch shaped ``(B, C, H, W)`` or ``(B, C, D, H, W)``, floating point,
            and large enough for the model (a model whose own forward pass fails on it
            gives :class:`~esegeta_core.errors.InvalidInputError`). Its dtype must match
            the model's weights; inputs are converted (with a logged warning) only when
            that loses nothing (float16/bfloat16 to float32, float32 to float64) or under
            ``amp``; float64 inputs to a float32 model are refused: convert them with
            ``inputs.float()`` (or the model with ``model.double()``).
        method: a method name from :func:`list_methods`, such as
            ``"captum.integrated_gradients"`` (a unique short name also works).
        target: ``None`` (each item's predicted class), an int, one class per item, or
            a :class:`~esegeta_core.Region` (segmentation: a class inside a mask).
        task: ``"classification"`` or ``"segmentation"``.
        wrapper: how a segmentation output becomes per-class scores:
            ``"multi_class"`` (default for segmentation), ``"threshold"``, or a callable.
        output: which part of what the model returns holds the logits: None (auto: a
            tensor, a dict's single tensor or its ``"logits"`` / ``"out"``, a tuple's
            first element, an object's ``.logits``), a key, an index or a callable.
        reshape: how layer outputs are laid out (layer methods): None / ``"auto"``
            (inferred: channels-first, channels-last, or tokens with the patch grid and
            extra tokens found from the model), or a layout such as ``"tokens:1:14x14"``
            (see :data:`~esegeta_core.layouts.ReshapeSpec`). Layer methods always see
            the layer's output as ``(B, C, *grid)``.
        seed: an int (or None) that seeds torch's generators for the call only
            (stochastic methods).
        amp: None, or ``"bf16"`` / ``"fp16"`` to run the method under autocast; results
            come back in float32, and a NaN or infinite result is recomputed in float32.
        patches: explain inputs larger than a patch patch by patch and stitch the maps
            (a :class:`~esegeta_core.runtime.patches.PatchSpec` or its fields as a dict,
            e.g. ``{"size": 64, "overlap": 16, "mode": "hann"}``; None: no patches). A
            :class:`~esegeta_core.Region` target is checked on the whole input first.
        auto_batch: size the method's internal batches (``batch_params``) to the
            largest that fits in memory; CUDA out-of-memory always halves and retries.
        progress: show a progress bar over patches.
        force: run even when the requested counts (steps, samples, masks) are
            estimated at more than :data:`~esegeta_core.checks.MAX_PASSES` passes.
        **params: the method's parameters (see ``esegeta methods NAME``); layer
            parameters take ``"auto"`` (the default where a layer is required).
    """
    registry = get_registry()
    cls = registry.get(_check_method(method))
    plugin = registry.plugin_of[cls.name]
    _check_model(model, cls.name)
    x = _check_inputs(inputs, cls, registry)
    valid = validate_params(cls, params)
    valid, reshape = _route_reshape(cls, valid, reshape, plugin)
    spec = _patch_spec(patches, cls)
    seed = _check_seed(seed, cls.name)
    _check_amp(amp, cls.name)
    x = _match_dtype(x, model, amp, cls.name)
    state = ModelState.capture(model)
    extras: dict[str, Any] = {}
    plain: nn.Module | None = None
    probe: torch.Tensor | None = None
    try:
        model.eval()
        device = model_device(model)
        check_precision(amp, device, cls.name)
        x = x.to(device)
        if x.is_inference():  # made under torch.inference_mode(): autograd cannot use it
            x = x.clone()
        job = _Job(cls, model, task, wrapper, output, amp, seed, device)
        patched = spec is not None and needs_patches(spec, x.shape[2:])
        probe = _first_patch(x, spec) if patched and spec is not None else x[:1]
        if patched and isinstance(target, Region):  # before any patch is explained
            region_mask(target.mask, x.shape, against="the input", patched=True)
        # probes score every class (a region's mask fits the whole input, not a patch)
        plain = job.scored(None)
        valid, chosen = _resolve_layers(cls, valid, model, plain, probe)
        if chosen:
            extras["layer_auto"] = chosen
        explainer = cls()
        with contextlib.ExitStack() as stack:
            trace = _prepare_call(stack, cls, model, plain, probe, valid, reshape, extras)
            job.zero_hint = _token_hint(extras.get("layouts", {}))
            explainer.check_model(job.scored(target), valid, trace)
            check_cost(
                explainer,
                valid,
                job.scored(None),
                x,
                probe=probe,
                force=force,
                plugin=plugin,
                auto_batch=auto_batch,
            )
            start = time.perf_counter()
            if patched and spec is not None:
                t = job.patch_targets(x, target, spec)
                if auto_batch:
                    valid = auto_batch_params(cls, valid, job.scored(None), probe)
                result, valid = job.run_patched(explainer, x, t, target, valid, spec, progress)
            else:
                scored = job.scored(target)
                if target is None:  # the predicted class: one forward pass
                    with torch.no_grad():
                        scores = scored(x)
                    _check_scores(scores, x, task, cls.name)
                    t = normalise_target(target, scores)
                else:  # checked on the method's own first forward pass
                    t = target_classes(target, x.shape[0], x.device)
                plans = None
                if auto_batch:
                    valid, cap = plan_batches(cls, valid, scored, x, network=model)
                    if cap is not None and cls.own_passes:  # it calls method_passes
                        plans = stack.enter_context(planning(model, cap))
                    elif cap is not None:  # the planner splits the batches it sends
                        scored = splitter = PassSplitter(scored, network=model, cap=cap)
                        plans = splitter.state
                result, valid = job.run(explainer, scored, x, t, valid, check=target is not None)
                if plans is not None and plans.plan is not None:
                    extras["pass_plan"] = {
                        "inputs_per_pass": plans.plan.batch_size,
                        "channels_last": plans.plan.channels_last,
                        "measured_now": plans.tuned,
                    }
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    except EsegetaError:
        raise
    except Exception as exc:
        if plain is not None and probe is not None and not _is_oom(exc):
            _blame_input(plain, probe, x, cls.name, exc)
        raise MethodFailedError(
            f"Method {cls.name!r} (plugin {plugin!r}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        removed = state.restore()
        if removed:
            log.warning(
                "method %s (plugin %s) left %d hook(s) on the model; esegeta removed them",
                cls.name,
                plugin,
                removed,
            )
    if isinstance(result, MethodResult):
        extras.update(result.extras)
        result = result.attributions
    warning = job.warnings
    if warning:
        extras["warnings"] = warning
    if output is not None:
        extras["output"] = selector_label(output)
    return Explanation(
        attributions=result,
        method=cls.name,
        plugin=plugin,
        target=t,
        params=valid,
        seconds=seconds,
        input_shape=tuple(x.shape),
        output=cls.output,
        extras=extras,
    )


def takes_reshape(cls: type[Explainer]) -> bool:
    """Whether ``explain(reshape=...)`` means anything to the method: it reads a layer's
    output as a map, or token attention (its ``layout_param``)."""
    return bool(cls.Params.layer_fields(maps_only=True)) or cls.layout_param is not None


def _route_reshape(
    cls: type[Explainer], params: MethodParams, reshape: ReshapeSpec, plugin: str
) -> tuple[MethodParams, ReshapeSpec]:
    """``reshape=`` goes to the layers a method reads as maps, or into the method's
    ``layout_param`` (attention methods read token matrices, not a layer's output); a
    method with neither refuses it rather than ignoring it."""
    if reshape is None or (isinstance(reshape, str) and reshape == "auto"):
        return params, reshape
    if cls.Params.layer_fields(maps_only=True):
        return params, reshape
    where = f"Method {cls.name!r} (plugin {plugin!r})"
    if cls.layout_param is None:
        raise InvalidParamsError(
            f"{where} reads no layer's output, so reshape={reshape!r} would be ignored: it "
            "applies to the CAMs, layer and neuron methods and the attention methods. "
            "Drop it."
        )
    layout = parse_reshape(reshape, method=cls.name) if not callable(reshape) else reshape
    if layout == "tokens":  # the layout is inferred anyway
        return params, None
    if not isinstance(layout, Layout) or layout.kind != "tokens":
        raise InvalidParamsError(
            f"{where} reads attention over tokens: reshape= must give a token layout, "
            f"'tokens:EXTRA:GRID' such as 'tokens:1:14x14' (got {reshape!r}; a callable "
            f"or a channels layout has no meaning for it)."
        )
    value = f"{layout.extra}:{'x'.join(str(g) for g in layout.grid)}"
    given = getattr(params, cls.layout_param)
    if given is not None and given != value:
        raise InvalidParamsError(
            f"{where}: reshape={reshape!r} and {cls.layout_param}={given!r} disagree; give one."
        )
    return params.model_copy(update={cls.layout_param: value}), None


def _prepare_call(
    stack: contextlib.ExitStack,
    cls: type[Explainer],
    model: nn.Module,
    plain: nn.Module,
    probe: torch.Tensor,
    params: MethodParams,
    reshape: ReshapeSpec,
    extras: dict[str, Any],
) -> ModelTrace | None:
    """Changes to the model for the call, undone when ``stack`` closes: in-place
    activations off, the layers the method reads tapped (with their layouts), the model
    prepared for rule-based methods. Records what it did in ``extras``; returns the
    probe's trace when the method has rules or asks for it."""
    inplace_off = 0
    if not isinstance(model, torch.jit.ScriptModule):
        inplace_off = stack.enter_context(no_inplace(model))
        layers = _layer_modules(params, model, cls.name)
        layouts = layer_layouts(
            plain, unwrap(model), probe, layers, reshape=reshape, method=cls.name
        )
        odd = {p: layouts[id(m)].record() for p, m in layers if not _plain(layouts, m)}
        if odd:
            extras["layouts"] = odd
        stack.enter_context(tapped(model, [m for _, m in layers], layouts))
    if cls.model_rules != "none":
        prep = stack.enter_context(prepared(plain, probe, cls.model_rules, method=cls.name))
        extras["preparation"] = {**prep.summary(), "inplace_modules": inplace_off}
        return prep.trace
    if cls.needs_trace:
        return trace_model(unwrap(model), probe)
    return None


def _layer_modules(
    params: MethodParams, model: nn.Module, method: str
) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every layer whose output the parameters read as a map."""
    modules = []
    for field in params.layer_fields(maps_only=True):
        value = getattr(params, field)
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is not None:
                modules.append((path, resolve_layer(model, path, method=method)))
    return modules


def _token_hint(layouts: dict[str, dict[str, Any]]) -> str:
    """Why a token layer's map may be zero: with a class-token head, the patch tokens
    after the last attention never reach the score (pytorch-grad-cam's norm1/norm2)."""
    with_extra = [path for path, rec in layouts.items() if rec.get("extra_tokens")]
    if not with_extra:
        return ""
    return (
        f"Layer {', '.join(map(repr, with_extra))} holds tokens before its patch grid (a "
        "class token): if it is the last block's output (or inside the last block, after "
        "its attention, e.g. norm2), the score reads only the class token from there and "
        "the patch tokens get no gradient. Use layer='auto' (the last block's input, "
        "what blocks[-1].norm1 normalises)."
    )


def _plain(layouts: dict[int, Layout], module: nn.Module) -> bool:
    layout = layouts.get(id(module))
    return layout is None or layout.trivial


def _resolve_layers(
    cls: type[Explainer],
    params: MethodParams,
    model: nn.Module,
    scored: nn.Module,
    probe: torch.Tensor,
) -> tuple[MethodParams, dict[str, str]]:
    """Replace ``"auto"`` layer values by the chosen layer (one probe pass for all) and
    check every layer path; return the new parameters and what was chosen."""
    update: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    auto: str | None = None
    maps = params.layer_fields(maps_only=True)
    for field in params.layer_fields():
        value = getattr(params, field)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if AUTO in values and field in maps:
            if auto is None:
                auto = auto_layer(scored, probe, method=cls.name)
                log.info("method %s: layer='auto' chose %r", cls.name, auto)
            values = [auto if v == AUTO else v for v in values]
            update[field] = type(value)(values) if isinstance(value, (list, tuple)) else auto
            chosen[field] = auto
        for path in values:
            if path is not None:
                resolve_layer(model, path, method=cls.name)
    return (params.model_copy(update=update) if update else params), chosen


class _Job:
    """One method on one model: runs it once, or patch by patch, with the runtime
    features (precision, OOM retry, seeding) applied around every call and every map
    checked (:func:`~esegeta_core.checks.check_map`)."""

    def __init__(
        self,
        cls: type[Explainer],
        model: nn.Module,
        task: Task,
        wrapper: str | ScoreFn | None,
        output: OutputSelector,
        amp: Precision | None,
        seed: int | None,
        device: torch.device,
    ) -> None:
        self.cls, self.model, self.task, self.wrapper = cls, model, task, wrapper
        self.output, self.amp, self.seed, self.device = output, amp, seed, device
        self.plugin = get_registry().plugin_of.get(cls.name, "?")
        self.warnings: list[str] = []
        self.zero_hint = ""
        """Added to the all-zero warning when the call knows a likelier cause."""

    def scored(self, target: TargetLike) -> nn.Module:
        return score_model(self.model, self.task, self.wrapper, target, self.output)

    def run(
        self,
        explainer: Explainer,
        scored: nn.Module,
        x: torch.Tensor,
        t: torch.Tensor,
        params: MethodParams,
        *,
        check: bool = True,
    ) -> tuple[torch.Tensor | MethodResult, MethodParams]:
        """``check``: validate the scores and ``t`` on the method's first forward pass
        (False when a probe pass already did)."""

        def once(p: MethodParams) -> torch.Tensor | MethodResult:
            def call() -> torch.Tensor | MethodResult:
                checking = (
                    _checking_scores(scored, x, t, self.task, self.cls.name)
                    if check
                    else contextlib.nullcontext()
                )
                with _seeded(self.seed, self.device), checking:
                    return explainer.attribute(scored, x, t, p)

            return run_with_precision(call, self.amp, self.device, self.cls.name)

        result, used = run_with_oom_retry(self.cls, params, once, self.device)
        tensor = result.attributions if isinstance(result, MethodResult) else result
        if not isinstance(tensor, torch.Tensor):
            raise MethodFailedError(
                f"Method {self.cls.name!r} (plugin {self.plugin!r}) returned "
                f"{type(tensor).__name__}, not a tensor: this is a bug in the plugin."
            )
        warning = check_map(tensor, x, self.cls, self.plugin)
        if warning and self.zero_hint and "zero everywhere" in warning:
            warning = f"{warning} {self.zero_hint}"
        if warning and warning not in self.warnings:  # once per call, not per patch
            log.warning(warning)
            self.warnings.append(warning)
        return result, used

    def patch_targets(self, x: torch.Tensor, target: TargetLike, spec: PatchSpec) -> torch.Tensor:
        """Targets for patch mode; ``None`` = the class with the highest score summed over
        every patch of the item (a forward pass per patch, no gradients)."""
        if target is not None:  # checked on the method's first forward pass
            return target_classes(target, x.shape[0], x.device)
        scored = self.scored(None)
        patch = _first_patch(x, spec)
        with torch.no_grad():
            scores = scored(patch)
        _check_scores(scores, patch, self.task, self.cls.name)
        totals = []
        for item in x:
            total = torch.zeros_like(scores[0])
            for patches, _, _ in iterate_patches(item, spec):
                with torch.no_grad():
                    total += scored(patches.to(x.device)).sum(0)
            totals.append(total)
        return torch.stack(totals).argmax(1)

    def run_patched(
        self,
        explainer: Explainer,
        x: torch.Tensor,
        t: torch.Tensor,
        target: TargetLike,
        params: MethodParams,
        spec: PatchSpec,
        progress: bool,
    ) -> tuple[torch.Tensor, MethodParams]:
        if self.cls.output == "image":
            raise InvalidParamsError(
                f"Method {self.cls.name!r} is a visualization (it synthesises images): "
                "patch-based execution does not apply to it. Drop patches=."
            )
        region = (
            region_mask(target.mask, x.shape, against="the input", patched=True) != 0
            if isinstance(target, Region)
            else None
        )
        used = [params]
        total = sum(count_patches(item, spec) for item in x)
        bar = progress_bar(total, f"{self.cls.name} patches", enabled=progress)
        maps = []
        try:
            for i, item in enumerate(x):
                extra = None
                if region is not None:  # shared by all items, or one per item
                    extra = region[i if region.shape[0] > 1 else 0][None].to(torch.uint8)

                def explain_batch(patches, extra_patches, i=i):
                    patches = patches.to(x.device)
                    tt = t[i].expand(patches.shape[0])
                    if extra_patches is None:
                        scored = self.scored(None)
                    else:
                        mask = extra_patches[:, 0].to(x.device)
                        if not bool(mask.any()):
                            return torch.zeros_like(patches)
                        scored = self.scored(Region(int(t[i]), mask))
                    result, used[0] = self.run(explainer, scored, patches, tt, used[0])
                    return result.attributions if isinstance(result, MethodResult) else result

                maps.append(stitch_item(item, spec, explain_batch, extra, bar.update))
        finally:
            bar.close()
        return torch.stack(maps).to(x.device), used[0]


def _first_patch(x: torch.Tensor, spec: PatchSpec) -> torch.Tensor:
    """The top-left patch of the first item (probe passes: class count, memory)."""
    size, _ = spec.sizes(x.ndim - 2)
    return x[(slice(0, 1), slice(None), *(slice(0, n) for n in size))]


def _patch_spec(
    patches: PatchSpec | dict[str, Any] | None, cls: type[Explainer]
) -> PatchSpec | None:
    """``patches=`` as a :class:`PatchSpec`: one, a mapping of its fields, or None."""
    if patches is None or isinstance(patches, PatchSpec):
        return patches
    fields = "; ".join(f"{n}: {f.description}" for n, f in PatchSpec.model_fields.items())
    if not isinstance(patches, Mapping):
        example = "{'size': 64, 'overlap': 16, 'mode': 'hann'}"
        if isinstance(patches, int) and not isinstance(patches, bool):
            example = f"{{'size': {patches}}}"
        raise InvalidParamsError(
            f"Method {cls.name!r}: patches must be a PatchSpec, a dict of its fields such "
            f"as {example}, or None (no patches); got {type(patches).__name__} "
            f"{patches!r}. Its fields: {fields}."
        )
    try:
        return PatchSpec.model_validate(dict(patches))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(patches)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidParamsError(
            f"Method {cls.name!r}: invalid patches={patches!r}: {problems}. Its fields: {fields}."
        ) from exc


def _check_method(method: object) -> str:
    """``method`` itself: a name is looked up in the registry; anything else is refused
    here rather than failing inside the lookup."""
    if isinstance(method, str):
        return method
    hint = ""
    if isinstance(method, type) and issubclass(method, Explainer):
        hint = f" Pass the class's name instead: {method.name!r}."
    elif isinstance(method, Explainer):
        hint = f" Pass the method's name instead: {method.name!r}."
    raise InvalidParamsError(
        "explain(model, inputs, method): method must be a method name (a str such as "
        f"'captum.integrated_gradients'), got {type(method).__name__} {method!r}.{hint} "
        "Run `esegeta methods` (or esegeta_core.list_methods()) to list the installed methods."
    )


def _check_seed(seed: object, method: str) -> int | None:
    """``seed`` as an int (numpy integers too), in the range torch's generators accept."""
    if seed is None:
        return None
    value: int | None = None
    if not isinstance(seed, bool):
        with contextlib.suppress(TypeError):
            value = operator.index(seed)
    if value is None or not -(2**63) <= value < 2**64:
        raise InvalidParamsError(
            f"Method {method!r}: seed must be an int or None, got {type(seed).__name__} "
            f"{seed!r}. Pass an integer in [-2**63, 2**64), e.g. seed=0."
        )
    return value


def _check_amp(amp: object, method: str) -> None:
    """Refuse a non-string ``amp`` here (:func:`check_precision` checks the names)."""
    if amp is not None and not isinstance(amp, str):
        raise InvalidParamsError(
            f"Method {method!r}: amp must be 'bf16', 'fp16' or None, got "
            f"{type(amp).__name__} {amp!r}."
        )


_WIDENING = frozenset(
    {
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float64),
        (torch.bfloat16, torch.float64),
        (torch.float32, torch.float64),
    }
)
"""(input, model) dtypes whose conversion loses nothing."""

_CAST = {
    torch.float16: "half",
    torch.bfloat16: "bfloat16",
    torch.float32: "float",
    torch.float64: "double",
}


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (or buffer); None if none."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _match_dtype(x: torch.Tensor, model: nn.Module, amp: str | None, method: str) -> torch.Tensor:
    """``x`` in the model's floating dtype: converted (with a warning) when that loses
    nothing or under ``amp`` (which computes in lower precision anyway); refused when it
    would silently drop precision (float64 inputs to a float32 model)."""
    dtype = _model_dtype(model)
    if dtype is None or x.dtype == dtype:
        return x
    if amp is None and (x.dtype, dtype) not in _WIDENING:
        to_x = f"inputs.{_CAST[dtype]}()" if dtype in _CAST else f"inputs.to({dtype})"
        to_m = f"model.{_CAST[x.dtype]}()" if x.dtype in _CAST else f"model.to({x.dtype})"
        raise InvalidInputError(
            f"Method {method!r}: the inputs are {x.dtype} but the model's weights are "
            f"{dtype}; converting the inputs would lose precision, so esegeta does not do "
            f"it silently. Convert one to match the other: the inputs with {to_x}, or the "
            f"model with {to_m}."
        )
    log.warning(
        "method %s: the inputs are %s but the model's weights are %s; converting the inputs to %s",
        method,
        x.dtype,
        dtype,
        dtype,
    )
    return x.to(dtype)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _blame_input(
    plain: nn.Module, probe: torch.Tensor, x: torch.Tensor, method: str, exc: BaseException
) -> None:
    """After a failure, run the model alone on the probe (an item or the first patch):
    if its own forward pass fails, the input does not fit the model (too small for its
    down-sampling, wrong channels), which the user fixes, not the method's plugin."""
    try:
        with torch.no_grad():
            plain(probe)
    except EsegetaError:
        return
    except Exception as err:
        if _is_oom(err):
            return
        lines = str(err).strip().splitlines()
        first = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
        if tuple(probe.shape[2:]) == tuple(x.shape[2:]):
            where = f"an input of shape {tuple(x.shape)}"
            bigger = (
                "a larger input (resize, e.g. torch.nn.functional.interpolate(inputs, "
                "size=...), or pad it)"
            )
        else:
            where = f"a patch of shape {tuple(probe.shape)} (of the input {tuple(x.shape)})"
            bigger = "larger patches (patches={'size': ...})"
        raise InvalidInputError(
            f"Method {method!r}: the model's forward pass failed on {where} ({first}), on "
            "its own, without the method. If the input is too small for the model's "
            f"down-sampling, use {bigger}; if its channel count is wrong, give the channels "
            "the model expects; otherwise the model itself fails on such inputs."
        ) from err


def validate_params(cls: type[Explainer], params: dict[str, Any]) -> MethodParams:
    """``cls.Params(**params)``, with errors that name the method and its parameters."""
    try:
        return cls.Params(**params)
    except ValidationError as exc:
        fields = (
            ", ".join(f"{n}: {f.description}" for n, f in cls.Params.model_fields.items()) or "none"
        )
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidParamsError(
            f"Invalid parameters for method {cls.name!r}: {problems}. "
            f"Its parameters are: {fields}. See `esegeta methods {cls.name}`."
        ) from exc


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _check_model(model: object, method: str) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidModelError(
            f"Method {method!r}: the model must be a torch.nn.Module, got "
            f"{type(model).__name__}. Wrap plain functions in a Module."
        )
    for kind, named in (("parameter", model.named_parameters), ("buffer", model.named_buffers)):
        meta = next((name for name, t in named() if t.is_meta), None)
        if meta is not None:
            raise InvalidModelError(
                f"Method {method!r}: the model's {kind} {meta!r} is on the meta device: it has "
                "a shape but no values, so the model cannot run. Materialise the weights "
                "first, e.g. model.to_empty(device='cpu') then "
                "model.load_state_dict(state_dict)."
            )


def _check_inputs(inputs: object, cls: type[Explainer], registry: Registry) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs must be a torch.Tensor, got "
            f"{type(inputs).__name__}. Convert with torch.as_tensor(...)."
        )
    if inputs.ndim not in (4, 5):
        hint = " Add the batch dimension with inputs.unsqueeze(0)." if inputs.ndim == 3 else ""
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs must be a batch shaped (B, C, H, W) or "
            f"(B, C, D, H, W), got {tuple(inputs.shape)}.{hint}"
        )
    if not inputs.is_floating_point():
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs must be floating point, got {inputs.dtype}. "
            "Convert with inputs.float()."
        )
    if inputs.numel() == 0:
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs are empty {tuple(inputs.shape)}: every dimension "
            "needs at least one element (a batch of at least one item)."
        )
    if inputs.is_meta:
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs {tuple(inputs.shape)} are on the meta device: a "
            "shape without values. Pass a tensor with data, on the CPU or a GPU."
        )
    if inputs.layout != torch.strided:
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs must be a dense tensor, got layout "
            f"{inputs.layout}. Convert with inputs.to_dense()."
        )
    if not bool(torch.isfinite(inputs).all()):
        raise InvalidInputError(
            f"Method {cls.name!r}: inputs contain NaN or infinite values. Clean them first "
            "(for example torch.nan_to_num)."
        )
    rank = inputs.ndim - 2
    if rank not in cls.ranks:
        plugin = registry.plugin_of[cls.name]
        able = sorted(
            (n for n, c in registry.methods.items() if rank in c.ranks),
            key=lambda n: (
                registry.plugin_of[n] != plugin,
                registry.methods[n].family != cls.family,
                n,
            ),
        )
        raise UnsupportedRankError(
            f"Method {cls.name!r} (plugin {registry.plugin_of[cls.name]!r}) supports "
            f"{_ranks(cls.ranks)} inputs only, got a {rank}D input {tuple(inputs.shape)}. "
            f"Methods that handle {rank}D: {', '.join(able[:8]) or 'none installed'}."
        )
    return inputs.detach()


def _ranks(ranks: tuple[int, ...]) -> str:
    return "/".join(f"{r}D" for r in ranks)


@contextlib.contextmanager
def _checking_scores(
    scored: nn.Module, x: torch.Tensor, t: torch.Tensor, task: str, method: str
) -> Iterator[None]:
    """Check the first scores the method's own forward pass produces (a tensor of
    ``(N, classes)``, the targets in range) instead of spending a forward pass on it.
    The hook is removed on the way out, before the model's state is restored."""
    checked = False

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal checked
        if checked:
            return
        checked = True
        _check_scores(output, x, task, method, batch=False)
        check_target_range(t, output.shape[1], method)

    handle = scored.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _check_scores(
    scores: object, x: torch.Tensor, task: str, method: str, *, batch: bool = True
) -> None:
    """``batch=False``: a method's own pass may stack several inputs per item (steps,
    samples), so only the scores' rank is checked, not their batch size."""
    if not isinstance(scores, torch.Tensor):
        raise InvalidModelError(
            f"Method {method!r}: the model returned {type(scores).__name__}, expected a "
            "tensor. Wrap the model so that forward returns the logits tensor."
        )
    if scores.ndim != 2 or (batch and scores.shape[0] != x.shape[0]):
        hint = (
            " This looks like a segmentation output: pass task='segmentation'."
            if task == "classification" and scores.ndim == x.ndim
            else " Pass wrapper=... that maps the output to (B, classes) scores."
        )
        raise InvalidModelError(
            f"Method {method!r}: the model's scores must be shaped (B={x.shape[0]}, "
            f"classes), got {tuple(scores.shape)}.{hint}"
        )


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield

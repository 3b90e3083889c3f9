"""``explain()``: the one call that runs any installed method on any model.

Data flows one way: check the call (the method's name, the model, the inputs, the
parameters and options, the dtype), hand it to a :class:`~esegeta_core.runtime.job.Job`
(which wraps the model so that it returns ``B x classes``, chooses ``"auto"`` layers,
prepares the model, refuses huge requested counts, runs the method once or patch by
patch and restores the model exactly as it was found), and return its result as an
:class:`~esegeta_core.explanation.Explanation`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from esegeta_core.devices import model_device
from esegeta_core.errors import (
    InvalidInputError,
    InvalidParamsError,
    NotApplicableError,
    UnsupportedRankError,
)
from esegeta_core.explainer import Explainer, MethodParams
from esegeta_core.explanation import Explanation
from esegeta_core.input_checks import check_batch, check_model
from esegeta_core.layouts import Layout, ReshapeSpec, parse_reshape
from esegeta_core.outputs import OutputSelector
from esegeta_core.plugin.manager import Registry, get_registry
from esegeta_core.runtime.job import Job, JobSpec
from esegeta_core.runtime.patches import PatchSpec
from esegeta_core.runtime.precision import Precision, check_precision
from esegeta_core.targets import TASKS, ScoreFn, TargetLike, Task

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
        amp: None (float32; on CUDA without TF32, whatever the process allows, so a
            map does not depend on pass sizes), ``"bf16"`` / ``"fp16"`` to run the
            method under autocast (results come back in float32, and a NaN or
            infinite result is recomputed in float32), or ``"tf32"`` to allow CUDA's
            TF32 convolutions and matrix products (faster, scores within about 1e-3).
        patches: explain inputs larger than a patch patch by patch and stitch the maps
            (a :class:`~esegeta_core.runtime.patches.PatchSpec` or its fields as a dict,
            e.g. ``{"size": 64, "overlap": 16, "mode": "hann"}``; None: no patches). A
            :class:`~esegeta_core.Region` target is checked on the whole input first.
        auto_batch: let the pass planner choose the method's passes: a method's
            forward passes without gradients (``pass_params``) take the pass size
            and layout measured fastest on its own first passes, within what fits in
            memory, and cached per network (with patches, each patch batch's passes);
            the explanation's params record the plan (``extras["pass_plan"]`` has its
            layout); other batch sizes (``batch_params``) the largest that fits. CUDA
            out-of-memory always halves and retries.
        progress: show a progress bar over patches.
        force: run even when the requested counts (steps, samples, masks) are
            estimated at more than :data:`~esegeta_core.checks.MAX_PASSES` passes.
        **params: the method's parameters (see ``esegeta methods NAME``); layer
            parameters take ``"auto"`` (the default where a layer is required).
    """
    call = _check_call(model, inputs, method, params, reshape, patches, seed, amp)
    _check_task(task, call.cls, get_registry())
    spec = JobSpec(
        call.cls,
        call.plugin,
        model,
        call.device,
        task=task,
        wrapper=wrapper,
        output=output,
        reshape=call.reshape,
        amp=amp,
        seed=call.seed,
        patches=call.patches,
        auto_batch=auto_batch,
        progress=progress,
        force=force,
    )
    done = Job(spec).run(call.inputs, target, call.params)
    return Explanation(
        attributions=done.attributions,
        method=call.cls.name,
        plugin=call.plugin,
        target=done.target,
        params=done.params,
        seconds=done.seconds,
        input_shape=tuple(call.inputs.shape),
        output=call.cls.output,
        extras=done.extras,
    )


@dataclass(frozen=True)
class _Call:
    """``explain()``'s arguments once checked: what the job needs besides the options."""

    cls: type[Explainer]
    plugin: str
    inputs: torch.Tensor
    """Detached, in the model's dtype (still on the caller's device)."""
    params: MethodParams
    reshape: ReshapeSpec
    patches: PatchSpec | None
    seed: int | None
    device: torch.device


def _check_call(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str,
    params: dict[str, Any],
    reshape: ReshapeSpec,
    patches: PatchSpec | dict[str, Any] | None,
    seed: int | None,
    amp: Precision | None,
) -> _Call:
    """Every check ``explain()`` makes before touching the model, in a fixed order, so
    that the first problem is the one reported."""
    registry = get_registry()
    cls = registry.get(_check_method(method))
    plugin = registry.plugin_of[cls.name]
    check_model(model, f"Method {cls.name!r}")
    x = _check_inputs(inputs, cls, registry)
    valid, reshape = _route_reshape(cls, validate_params(cls, params), reshape, plugin)
    spec = _patch_spec(patches, cls)
    seed = _check_seed(seed, cls.name)
    _check_amp(amp, cls.name)
    x = _match_dtype(x, model, amp, cls.name)
    device = model_device(model)
    check_precision(amp, device, cls.name)
    return _Call(cls, plugin, x, valid, reshape, spec, seed, device)


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
        raise InvalidParamsError(
            f"Method {cls.name!r}: invalid patches={patches!r}: {_problems(exc, '(patches)')}. "
            f"Its fields: {fields}."
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
            f"Method {method!r}: amp must be 'bf16', 'fp16', 'tf32' or None, got "
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
    for tensor in itertools.chain(model.parameters(), model.buffers()):
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


def validate_params(cls: type[Explainer], params: dict[str, Any]) -> MethodParams:
    """``cls.Params(**params)``, with errors that name the method and its parameters."""
    try:
        return cls.Params(**params)
    except ValidationError as exc:
        fields = (
            ", ".join(f"{n}: {f.description}" for n, f in cls.Params.model_fields.items()) or "none"
        )
        raise InvalidParamsError(
            f"Invalid parameters for method {cls.name!r}: {_problems(exc, '(params)')}. "
            f"Its parameters are: {fields}. See `esegeta methods {cls.name}`."
        ) from exc


def _problems(exc: ValidationError, whole: str) -> str:
    """Each validation error as ``field: message`` (``whole`` names a model-level one)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}" for e in exc.errors()
    )


def _check_inputs(inputs: object, cls: type[Explainer], registry: Registry) -> torch.Tensor:
    """``inputs`` as :func:`check_batch` accepts them, of a rank the method supports (a
    refusal lists the installed methods that do, the same plugin's and family's first)."""
    x = check_batch(inputs, f"Method {cls.name!r}")
    rank = x.ndim - 2
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
            f"{_ranks(cls.ranks)} inputs only, got a {rank}D input {tuple(x.shape)}. "
            f"Methods that handle {rank}D: {', '.join(able[:8]) or 'none installed'}."
        )
    if x.shape[0] < cls.min_batch:
        alone = sorted(
            n
            for n, c in registry.methods.items()
            if c.family == cls.family and c.min_batch <= x.shape[0] and rank in c.ranks
        )
        raise InvalidInputError(
            f"Method {cls.name!r} (plugin {registry.plugin_of[cls.name]!r}) needs a batch of "
            f"at least {cls.min_batch} items, got {x.shape[0]}: it compares the items of "
            "the batch with each other, and with fewer its map would be all zero. Explain "
            f"several inputs in one call, or use a method that explains {x.shape[0]} alone: "
            f"{', '.join(alone[:8]) or 'none installed'}."
        )
    return x


def _check_task(task: object, cls: type[Explainer], registry: Registry) -> None:
    """Refuse a task the method does not explain (:attr:`Explainer.tasks`), listing the
    installed methods that do, those of the same name in another plugin first, then
    the same family's (an unknown task is refused with the model's wrapper, which
    names the tasks)."""
    if task not in TASKS or task in cls.tasks:
        return
    short = cls.name.rsplit(".", 1)[-1]
    able = sorted(
        (n for n, c in registry.methods.items() if task in c.tasks),
        key=lambda n: (
            n.rsplit(".", 1)[-1] != short,
            registry.methods[n].family != cls.family,
            n,
        ),
    )
    raise NotApplicableError(
        f"Method {cls.name!r} (plugin {registry.plugin_of[cls.name]!r}) explains "
        f"{' and '.join(cls.tasks)} models only, not {task}. Methods that do: "
        f"{', '.join(able[:8]) or 'none installed'}."
    )


def _ranks(ranks: tuple[int, ...]) -> str:
    return "/".join(f"{r}D" for r in ranks)

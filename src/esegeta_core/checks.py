"""Checks around a method call: costs refused before running, maps checked after.

A map that comes back empty, non-finite or in the wrong shape is never handed to the
user: :func:`check_map` raises :class:`~esegeta_core.MethodFailedError` naming the
method and the likely cause, for every method of every plugin, in one place. An
all-zero map is legal (a class with no evidence) but is reported with a warning.

:func:`check_cost` refuses, before anything heavy runs, requests whose forward passes
run into the hundreds of thousands (``n_steps``, ``num_masks``, ``num_samples`` in the
millions) and requests that would hold more memory at once than the device has free
(every path point, noisy copy or sample in one batch; a sample matrix or quadrature
table of many gigabytes), with the estimate, the parameter to lower and the override,
``force=True``. Each method says what it costs in :meth:`Explainer.workload`.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from esegeta_core.errors import InvalidParamsError, MethodFailedError
from esegeta_core.explainer import Explainer, MethodParams, Workload
from esegeta_core.sites import LayoutView, Probe, Tap
from esegeta_core.targets import ScoreModel

log = logging.getLogger(__name__)

MAX_PASSES = 200_000
"""Forward-pass equivalents one call may run without ``force=True``."""


def check_map(
    result: torch.Tensor,
    x: torch.Tensor,
    cls: type[Explainer],
    plugin: str,
    *,
    zeros: bool = True,
) -> str:
    """Raise for an empty, non-finite or wrongly shaped map; return a warning for the
    caller to log (or ""): with ``zeros``, when some items' maps are zero everywhere
    or one value everywhere (:func:`blank_maps`; a patch's map may well be, so patches
    are checked stitched)."""
    who = f"Method {cls.name!r} (plugin {plugin!r})"
    shape = tuple(result.shape)
    if result.numel() == 0:
        raise MethodFailedError(
            f"{who} returned an empty map {shape}. Likely cause: the layer it read has no "
            "spatial positions in the layout it expected (a transformer's tokens, or an "
            "output after global pooling). Choose another layer, or layer='auto'."
        )
    if cls.output == "image":
        return _finite(result, who, shape) or ""
    if result.ndim < 2 or shape[0] != x.shape[0]:
        raise MethodFailedError(
            f"{who} returned a map shaped {shape} for a batch of {x.shape[0]} "
            f"{tuple(x.shape)}: one map per item is required. This is a bug in the plugin."
        )
    if cls.output == "input":
        spatial = tuple(x.shape[2:])
        ok = result.ndim == x.ndim and shape[2:] == spatial and shape[1] in (1, x.shape[1])
        if not ok:
            raise MethodFailedError(
                f"{who} returned a map shaped {shape}; an input map for {tuple(x.shape)} "
                f"must be (B, C or 1, {', '.join(map(str, spatial))}). This is a bug in "
                "the plugin."
            )
    elif result.ndim not in (x.ndim - 1, x.ndim):
        raise MethodFailedError(
            f"{who} returned a layer map shaped {shape}, which has no {x.ndim - 2}-D "
            f"spatial layout for the input {tuple(x.shape)}. Choose a layer whose output is "
            "a spatial map (B, C, *spatial), or layer='auto'."
        )
    _finite(result, who, shape)
    return blank_maps(result, cls.name) if zeros else ""


_ZERO_CAUSES = (
    "the target's score may not depend on what this method looks at (a layer after the "
    "decision, a ReLU that removed all evidence, a class the model never scores)."
)


def blank_maps(result: torch.Tensor, method: str) -> str:
    """A warning when some items' maps are zero everywhere (:func:`zero_maps`), else
    when some are one value everywhere (:func:`constant_maps`); "" when none is."""
    return zero_maps(result, method) or constant_maps(result, method)


def _items(mask: torch.Tensor) -> str:
    """The items where ``mask`` holds, the first ten."""
    items = mask.nonzero().flatten().tolist()
    return ", ".join(map(str, items[:10])) + (", ..." if len(items) > 10 else "")


ROUNDING_ULPS = 16
"""A map whose values differ by at most this many units in the last place of its
largest magnitude holds one value up to rounding (:func:`constant_maps`)."""


def constant_maps(result: torch.Tensor, method: str) -> str:
    """A warning when some items' maps hold one non-zero value everywhere, up to
    rounding: a map that does not vary says nothing about where the evidence is (a
    segmentation or feature mask of one region, masks that cover everything, a model
    whose score moves only in its last bits: a random MobileNet's RISE scores of 0.1
    one unit in the last place apart made a map of 0.1 give or take one unit).
    Maps of one position per channel (a layer after global pooling) are left alone."""
    if result.shape[0] == 0 or result[0, 0].numel() <= 1:
        return ""
    flat = result.flatten(1)
    high, low = flat.amax(1), flat.amin(1)
    if flat.is_floating_point():
        size = torch.maximum(high.abs(), low.abs()).double()
        spread = (high.double() - low.double()) <= ROUNDING_ULPS * torch.finfo(
            flat.dtype
        ).eps * size
        constant = spread & torch.isfinite(size)
    else:
        constant = high == low
    if not bool(constant.any()):
        return ""
    count = int(constant.sum())
    return (
        f"{method}: the maps of {count} of {result.shape[0]} items (item "
        f"{_items(constant)}) hold one value everywhere (up to rounding): they say nothing "
        "about where the evidence is (a segmentation or feature mask of one region, "
        "perturbations that cover the whole input, a score that does not change with them)."
    )


def zero_maps(result: torch.Tensor, method: str) -> str:
    """A warning when the whole map, or some items' maps, are zero everywhere: an item's
    empty map beside the others' looks like "no evidence", not like a problem."""
    nonzero = (result != 0).flatten(1).any(1)
    if bool(nonzero.all()):
        return ""
    if not bool(nonzero.any()):
        return f"{method}: the map is zero everywhere; {_ZERO_CAUSES}"
    return (
        f"{method}: the maps of {int((~nonzero).sum())} of {result.shape[0]} items (item "
        f"{_items(~nonzero)}) are zero everywhere; for those items {_ZERO_CAUSES}"
    )


def _finite(result: torch.Tensor, who: str, shape: tuple[int, ...]) -> None:
    if result.is_floating_point() and not bool(torch.isfinite(result).all()):
        bad = int((~torch.isfinite(result)).sum())
        raise MethodFailedError(
            f"{who} returned {bad} non-finite values (NaN or inf) in a map shaped {shape}. "
            "Likely cause: a propagation rule divided by a zero or negative denominator "
            "(excitation backprop and LRP assume non-negative activations; SiLU, GELU and "
            "Hardswish produce negative ones), or an overflow under mixed precision."
        )


def check_cost(
    explainer: Explainer,
    params: MethodParams,
    model: nn.Module,
    x: torch.Tensor,
    *,
    probe: torch.Tensor,
    force: bool,
    plugin: str,
    auto_batch: bool = False,
) -> None:
    """Refuse, before anything heavy runs, a call estimated at more than
    :data:`MAX_PASSES` passes or at more memory than the device has free, unless
    ``force`` (``x``: the whole batch; ``probe``: what one pass sees, an item or a patch;
    ``auto_batch``: unset batch parameters will be sized to fit, so only the method's
    own buffers count against memory)."""
    if force:
        return
    patched = tuple(probe.shape[2:]) != tuple(x.shape[2:])
    shape = tuple(probe.shape) if patched else tuple(x.shape)
    layers = LayerShapes(model, probe, params, explainer.name)
    work = explainer.workload(params, shape, layers)
    units = x.shape[0] * (_patches_per_item(x, probe) if patched else 1)
    if work.passes is not None and work.passes * units > MAX_PASSES:
        _refuse_passes(explainer, params, model, x, probe, work, units, plugin)
    _check_memory(explainer, params, model, probe, shape, work, auto_batch, plugin)


def _refuse_passes(
    explainer: Explainer,
    params: MethodParams,
    model: nn.Module,
    x: torch.Tensor,
    probe: torch.Tensor,
    work: Workload,
    units: int,
    plugin: str,
) -> None:
    per_item = work.passes or 0
    total = per_item * units
    start = time.perf_counter()
    with torch.no_grad():
        model(probe[:1])
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    per_pass = time.perf_counter() - start
    from esegeta_core.runtime.batching import bytes_per_sample

    per_sample = bytes_per_sample(model, probe)
    batched = work.inputs if work.inputs is not None else _batch(explainer, params, per_item)
    unit = "patch" if units != x.shape[0] else "item"
    raise InvalidParamsError(
        f"Method {explainer.name!r} (plugin {plugin!r}): {_counts(params, work)} ask "
        f"for about {total:,} forward passes ({per_item:,} per {unit}, {MAX_PASSES:,} "
        f"allowed): about {_duration(per_pass * total)} on {x.device} (one pass of one "
        f"item took {per_pass * 1e3:.1f} ms; gradient methods add a backward pass each), "
        f"with up to {_size(per_sample * batched)} of activations per batch of "
        f"{batched:,}. {_fix(work)}, or {FORCE} to run it anyway."
    )


FORCE = "pass force=True (`force: true` in the config's method entry)"
"""How to override a refusal of :func:`check_cost`, in its messages."""


def _check_memory(
    explainer: Explainer,
    params: MethodParams,
    model: nn.Module,
    probe: torch.Tensor,
    shape: tuple[int, ...],
    work: Workload,
    auto_batch: bool,
    plugin: str,
) -> None:
    """Refuse when the inputs held together (times the activation memory of one, from
    a probe pass of one item) plus the method's own buffers exceed the free memory."""
    sized = auto_batch and any(
        n in explainer.batch_params and n not in params.model_fields_set for n in work.batch
    )
    inputs = work.inputs or 0
    if inputs <= shape[0] or sized:
        inputs = 0  # nothing beyond the batch the caller chose, or batched to fit anyway
    if not inputs and not work.extra:
        return
    free = device_free_bytes(probe.device)
    if not inputs and work.extra <= free:
        return
    from esegeta_core.runtime.batching import bytes_per_sample

    # kept per network and input shape: a perturbation method called again on the same
    # model skips the probe pass (a whole forward pass of one item per call before)
    network = model.model if isinstance(model, ScoreModel) else model
    per_sample = bytes_per_sample(model, probe, network) if inputs else 0
    need = per_sample * inputs + work.extra
    if need <= free:
        return
    parts = []
    if inputs:
        parts.append(
            f"{inputs:,} inputs through the model together at about {_size(per_sample)} "
            "of activations each"
        )
    if work.extra:
        parts.append(f"{_size(work.extra)} of the method's own buffers")
    batch = _batch_hint(params, work) if per_sample * inputs >= work.extra else ""
    raise InvalidParamsError(
        f"Method {explainer.name!r} (plugin {plugin!r}): {_counts(params, work)} would "
        f"hold about {_size(need)} at once ({' plus '.join(parts)}), and {probe.device} "
        f"has {_size(free)} free. {_fix(work)}{batch}; or {FORCE} to try anyway."
    )


def _batch_hint(params: MethodParams, work: Workload) -> str:
    """``; or set internal_batch_size`` / ``; or lower perturbations_per_eval (now 32)``."""
    hints = []
    for name in work.batch:
        value = getattr(params, name, None)
        hints.append(f"set {name}" if value is None else f"lower {name} (now {value})")
    return f"; or {' or '.join(hints)} to bound the inputs per pass" if hints else ""


def _counts(params: MethodParams, work: Workload) -> str:
    """``n_steps=1000, nt_samples=10``: the parameters behind the estimate."""
    names = []
    for name in work.counts:
        value = getattr(params, name, None)
        ok = isinstance(value, (int, float, str)) and not isinstance(value, bool)
        names.append(f"{name}={value!r}" if ok else name)
    return ", ".join(names) or "these parameters"


def _fix(work: Workload) -> str:
    if work.fix:
        return work.fix[0].upper() + work.fix[1:]
    return f"Lower {', '.join(work.counts)}" if work.counts else "Ask for less"


def _patches_per_item(x: torch.Tensor, probe: torch.Tensor) -> int:
    """Patches per item, at least (overlapping patches add more)."""
    return math.prod(-(-n // max(1, p)) for n, p in zip(x.shape[2:], probe.shape[2:]))


def device_free_bytes(device: torch.device) -> int:
    """Memory free on ``device`` now: CUDA's free memory, or on the CPU the kernel's
    MemAvailable (``os.sysconf`` where there is no /proc/meminfo)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 2**62  # unknown: do not refuse


_shapes: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], dict[str, tuple[int, ...]]]] = (
    weakref.WeakKeyDictionary()
)
"""Measured layer shapes per network (see :meth:`LayerShapes._key`)."""


def _module_key(module: nn.Module) -> tuple[Any, ...]:
    """What a module contributes to the layer-shape cache key: its identity and its
    hooks' handles; for the sites the core puts in for one call (a fresh object each
    call), its kind and layout and its hooks' functions, so the next call hits."""
    if isinstance(module, (Tap, Probe, LayoutView)):
        hooks = (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
        names = tuple(getattr(h, "__qualname__", type(h).__name__) for h in hooks)
        return type(module).__name__, module.extra_repr(), names
    return id(module), tuple(module._forward_hooks), tuple(module._forward_pre_hooks)


class LayerShapes(Mapping[str, tuple[int, ...]]):
    """The output shape (without batch) of each layer the parameters name, as the method
    sees it (channels first inside the call), measured in one probe pass of one item the
    first time a shape is read, so methods that never ask cost nothing. Measurements are
    kept per network, its modules and their hooks as they are now (a module swapped in,
    a reshaping tap registered for this call, change the key), layers and input shape:
    a perturbation method called again on the same model skips the probe pass."""

    def __init__(
        self, model: nn.Module, probe: torch.Tensor, params: MethodParams, method: str
    ) -> None:
        self._model, self._probe, self._method = model, probe, method
        paths: list[str] = []
        for name in params.layer_fields():
            value = getattr(params, name)
            for path in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(path, str) and path not in paths:
                    paths.append(path)
        self._paths = paths
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def _key(self) -> tuple[nn.Module, tuple[Any, ...]]:
        """The network (the user's model inside a score wrapper) and the cache key."""
        model = self._model
        root = model.model if isinstance(model, ScoreModel) else model
        probe = self._probe
        modules = tuple(_module_key(m) for m in root.modules())
        return root, (
            tuple(self._paths),
            modules,
            tuple(probe.shape[1:]),
            probe.dtype,
            probe.device,
        )

    def _measure(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is not None:
            return self._shapes
        root, key = self._key()
        known = _shapes.get(root, {}).get(key)
        if known is not None:
            self._shapes = dict(known)
            return self._shapes
        from esegeta_core.layers import resolve_layer

        seen: dict[str, tuple[int, ...]] = {}
        handles = []
        for path in self._paths:
            module = resolve_layer(self._model, path, method=self._method)

            def hook(_m: nn.Module, _a: Any, out: Any, path: str = path) -> None:
                while isinstance(out, (tuple, list)) and out:
                    out = out[0]
                if isinstance(out, torch.Tensor) and path not in seen:
                    seen[path] = tuple(out.shape[1:])

            handles.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                self._model(self._probe[:1])
        finally:
            for handle in handles:
                handle.remove()
        self._shapes = seen
        _shapes.setdefault(root, {})[key] = dict(seen)
        return seen

    def __getitem__(self, path: str) -> tuple[int, ...]:
        return self._measure()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._measure())

    def __len__(self) -> int:
        return len(self._measure())


def _batch(explainer: Explainer, params: MethodParams, per_item: int) -> int:
    """Inputs per pass: the method's batch parameters, or everything at once if unset."""
    sizes = [getattr(params, n, None) for n in explainer.batch_params]
    sizes = [s for s in sizes if isinstance(s, int)]
    return min(sizes) if sizes else per_item


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if num_bytes < 1024 or unit == "TB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"  # pragma: no cover

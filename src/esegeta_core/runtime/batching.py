"""Automatic batch sizes for methods with internal batching, and OOM recovery.

Perturbation passes (a method's ``pass_params``, run without gradients) are planned
for speed, not only memory: :func:`plan_batches` gives the method every input that fits
(at most :data:`MAX_PASS_INPUTS`) and a cap for the core's pass planner
(:class:`~esegeta_core.runtime.passes.PassSplitter`), which runs them as the fastest
forward passes measured on the method's own first passes. The rest:

Methods declare which of their parameters batch internal work (perturbations,
integration steps, noise samples, masks, channels, LIME samples) in the class
attribute ``batch_params``. With ``auto_batch=True`` the core sets those the user left
unset to the largest batch that fits: the activation memory of one sample is measured
with a probe forward pass, and the batch is the memory budget (70% of free CUDA memory,
25% of available RAM on the CPU) divided by it, capped at ``MAX_BATCH``. Whatever the
batch, a CUDA out-of-memory error halves every batch parameter and retries, down to 1,
so a job is never lost to an OOM.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from esegeta_core.explainer import Explainer, MethodParams

log = logging.getLogger(__name__)

MAX_BATCH = 512
MAX_PASS_INPUTS = 512
"""Most inputs a perturbation method is handed at once under ``auto_batch``."""
T = TypeVar("T")


def available_memory(device: torch.device) -> int:
    """Bytes that a batch may use on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.7)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) // 4 if pages else 2**30


_measured: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], int]] = (
    weakref.WeakKeyDictionary()
)


def bytes_per_sample(model: nn.Module, x: torch.Tensor, network: nn.Module | None = None) -> int:
    """Activation memory of one sample through ``model``: the sizes of every module
    output in a probe forward pass, doubled for the backward pass, plus the input.
    With ``network`` (the module ``model`` computes with), the figure is kept per
    network and input shape, so later calls skip the probe pass."""
    key = (type(model).__name__, tuple(x.shape[1:]), x.dtype, x.device)
    if network is not None and key in _measured.get(network, {}):
        return _measured[network][key]
    total = [0]

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    size = max(1, 2 * total[0] + 3 * x[:1].numel() * x.element_size())
    if network is not None:
        _measured.setdefault(network, {})[key] = size
    return size


def auto_batch_params(
    cls: type[Explainer],
    params: MethodParams,
    model: nn.Module,
    x: torch.Tensor,
    network: nn.Module | None = None,
) -> MethodParams:
    """``params`` with every unset batch parameter set to the largest batch that fits
    (``network``: see :func:`bytes_per_sample`)."""
    drawn = cls().drawn_with(params)
    unset = [p for p in cls.batch_params if p not in params.model_fields_set and p not in drawn]
    if not unset:
        if not cls.batch_params:
            log.info("method %s has no internal batching; auto_batch does nothing", cls.name)
        elif drawn:
            log.info(
                "auto_batch leaves %s of %s as they are: its random draw depends on them",
                ", ".join(drawn),
                cls.name,
            )
        return params
    per_sample = bytes_per_sample(model, x, network)
    device = x.device
    batch = max(1, min(MAX_BATCH, available_memory(device) // per_sample))
    log.info(
        "auto batch for %s on %s: %d (%.1f MB per sample)",
        cls.name,
        device,
        batch,
        per_sample / 1e6,
    )
    return params.model_copy(update={p: batch for p in unset})


def planned_pass_params(cls: type[Explainer], params: MethodParams) -> list[str]:
    """The ``pass_params`` the pass planner sizes under ``auto_batch``: those ``params``
    leave unset, except any a random draw depends on (:meth:`Explainer.drawn_with`) and
    all of a method that reads a layer without building its passes itself (a
    :class:`~esegeta_core.runtime.passes.PassSplitter` would hide the layer's path)."""
    if cls.Params.layer_fields() and not cls.own_passes:
        return []
    drawn = cls().drawn_with(params)
    return [p for p in cls.pass_params if p not in params.model_fields_set and p not in drawn]


def params_with_plan(
    cls: type[Explainer], params: MethodParams, names: list[str], inputs_per_pass: int, batch: int
) -> MethodParams:
    """``params`` as the explanation records them after a planned call: the planned
    pass parameters ``names`` at the plan's pass size in their own unit (inputs per
    pass; for ``pass_unit="item"``, Captum's copies of each item per pass, the plan's
    inputs per pass over the ``batch`` items, rounded down, at least 1), not the count
    handed to the method so that the planner could split it. Set explicitly, without
    ``auto_batch``, they run passes of at most the plan's size, with the same map."""
    if not names:
        return params
    size = max(1, inputs_per_pass // max(1, batch) if cls.pass_unit == "item" else inputs_per_pass)
    return params.model_copy(update={name: size for name in names})


def plan_batches(
    cls: type[Explainer],
    params: MethodParams,
    model: nn.Module,
    x: torch.Tensor,
    network: nn.Module | None = None,
) -> tuple[MethodParams, int | None]:
    """``auto_batch=True``: ``params`` with the unset batch parameters sized, and the
    pass planner's cap on inputs per forward pass (``None``: no planner, when the method
    has no unset ``pass_params``, or reads a layer, whose path a
    :class:`~esegeta_core.runtime.passes.PassSplitter` would hide, without building its
    passes itself: ``own_passes``).

    Unset ``pass_params`` get every input that fits as an input copy (a quarter of the
    memory budget), at most :data:`MAX_PASS_INPUTS`: the planner splits them into passes
    of at most the cap, the batch whose activations fit (:func:`auto_batch_params`);
    a method with ``own_passes`` plans its passes within the same cap.
    Other batch parameters get that batch."""
    explainer = cls()
    passes = planned_pass_params(cls, params)
    sized = auto_batch_params(cls, params, model, x, network)
    if not passes:
        return sized, None
    cap = max(1, int(getattr(sized, passes[0])))
    # methods that build their passes themselves get the same held count as the
    # others (a parameter whose value changes a random draw is not set at all:
    # Explainer.drawn_with)
    item = max(1, x[:1].numel() * x.element_size())
    budget = available_memory(x.device)
    inputs = max(1, min(MAX_PASS_INPUTS, budget // (4 * item)))
    # the method's own buffers grow with the inputs it holds (masks, samples): halve
    # until its estimate fits beside them
    while inputs > 1:
        trial = sized.model_copy(update={p: inputs for p in passes})
        extra = explainer.workload(trial, tuple(x.shape), {}).extra
        if extra + 4 * item * inputs <= budget:
            break
        inputs //= 2
    log.info(
        "pass planner for %s on %s: %d inputs at once, passes of at most %d",
        cls.name,
        x.device,
        inputs,
        cap,
    )
    return sized.model_copy(update={p: inputs for p in passes}), cap


def _halved(cls: type[Explainer], params: MethodParams) -> MethodParams | None:
    update = {}
    for name in cls.batch_params:
        value = getattr(params, name)
        if isinstance(value, int) and value > 1:
            update[name] = value // 2
    drawn = [n for n in cls().drawn_with(params) if n in update]
    if drawn:
        log.warning(
            "method %s: halving %s changes its random draw: the map is made with other "
            "samples than %s would draw (the explanation's params record the values used)",
            cls.name,
            ", ".join(drawn),
            ", ".join(f"{n}={getattr(params, n)}" for n in drawn),
        )
    return params.model_copy(update=update) if update else None


def run_with_oom_retry(
    cls: type[Explainer],
    params: MethodParams,
    run: Callable[[MethodParams], T],
    device: torch.device,
) -> tuple[T, MethodParams]:
    """Run ``run(params)``; on CUDA out-of-memory halve the batch parameters and retry."""
    while True:
        try:
            return run(params), params
        except torch.cuda.OutOfMemoryError:
            smaller = _halved(cls, params)
            if smaller is None:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning(
                "method %s ran out of memory; retrying with %s",
                cls.name,
                {n: getattr(smaller, n) for n in cls.batch_params},
            )
            params = smaller

"""Getting the model ready for one method call: its layers chosen, tapped and laid out.

Before a method runs, ``layer="auto"`` is replaced by the layer one probe pass chooses,
every layer path is checked, the layers the method reads as maps are tapped (with
their layouts: channels-first, channels-last or tokens), in-place activations are
turned off and rule-based methods get a prepared model. Every change is entered on an
:class:`~contextlib.ExitStack`, so closing it undoes them all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from esegeta_core.explainer import Explainer, MethodParams
from esegeta_core.layers import AUTO, auto_layer, resolve_layer, unwrap
from esegeta_core.layouts import Layout, ReshapeSpec, layer_layouts
from esegeta_core.preparation import no_inplace, prepared, tapped
from esegeta_core.tracing import ModelTrace, trace_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setup:
    """What :func:`prepare_model` did, for the explanation's extras and the checks."""

    trace: ModelTrace | None = None
    """The probe's trace when the method has rules or asks for it (else None)."""
    layouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per layer path, the layout of a layer that is not a plain channels-first map."""
    preparation: dict[str, Any] | None = None
    """What the preparation for rule-based methods changed (None: not prepared)."""


def resolve_layers(
    cls: type[Explainer],
    params: MethodParams,
    model: nn.Module,
    scored: nn.Module,
    probe: torch.Tensor,
) -> tuple[MethodParams, dict[str, str]]:
    """Replace ``"auto"`` layer values by the chosen layer (one probe pass for all) and
    check every layer path; return the new parameters and what was chosen."""
    update: dict[str, object] = {}
    chosen: dict[str, str] = {}
    auto: str | None = None
    maps = params.layer_fields(maps_only=True)
    for name in params.layer_fields():
        value = getattr(params, name)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if AUTO in values and name in maps:
            if auto is None:
                auto = auto_layer(scored, probe, method=cls.name)
                log.info("method %s: layer='auto' chose %r", cls.name, auto)
            values = [auto if v == AUTO else v for v in values]
            update[name] = type(value)(values) if isinstance(value, (list, tuple)) else auto
            chosen[name] = auto
        for path in values:
            if path is not None:
                resolve_layer(model, path, method=cls.name)
    return (params.model_copy(update=update) if update else params), chosen


def prepare_model(
    stack: contextlib.ExitStack,
    cls: type[Explainer],
    model: nn.Module,
    plain: nn.Module,
    probe: torch.Tensor,
    params: MethodParams,
    reshape: ReshapeSpec,
) -> Setup:
    """Changes to the model for the call, undone when ``stack`` closes: in-place
    activations off, the layers the method reads tapped (with their layouts), the model
    prepared for rule-based methods. ``plain`` scores every class of ``model``."""
    inplace_off = 0
    layouts: dict[str, dict[str, Any]] = {}
    if not isinstance(model, torch.jit.ScriptModule):
        if not cls.forward_only:  # in-place code cannot reach what it reads
            inplace_off = stack.enter_context(no_inplace(model))
        layers = layer_modules(params, model, cls.name)
        found = layer_layouts(plain, unwrap(model), probe, layers, reshape=reshape, method=cls.name)
        layouts = {p: found[id(m)].record() for p, m in layers if not _plain(found, m)}
        stack.enter_context(tapped(model, [m for _, m in layers], found))
    if cls.model_rules != "none":
        prep = stack.enter_context(prepared(plain, probe, cls.model_rules, method=cls.name))
        summary = {**prep.summary(), "inplace_modules": inplace_off}
        return Setup(prep.trace, layouts, summary)
    if cls.needs_trace:
        return Setup(trace_model(unwrap(model), probe), layouts)
    return Setup(None, layouts)


def token_hint(layouts: dict[str, dict[str, Any]], auto: Collection[str] = ()) -> str:
    """Why a token layer's map may be zero: with a class-token head, the patch tokens
    after the last attention never reach the score (pytorch-grad-cam's norm1/norm2).
    Not for layers ``layer='auto'`` chose (``auto``): it already takes the last block's
    input, so the advice would send the user where they are."""
    with_extra = [
        path for path, rec in layouts.items() if rec.get("extra_tokens") and path not in auto
    ]
    if not with_extra:
        return ""
    return (
        f"Layer {', '.join(map(repr, with_extra))} holds tokens before its patch grid (a "
        "class token): if it is the last block's output (or inside the last block, after "
        "its attention, e.g. norm2), the score reads only the class token from there and "
        "the patch tokens get no gradient. Use layer='auto' (the last block's input, "
        "what blocks[-1].norm1 normalises)."
    )


def layer_modules(
    params: MethodParams, model: nn.Module, method: str, *, maps_only: bool = True
) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every layer whose output the parameters read as a map
    (``maps_only=False``: every layer they name)."""
    modules = []
    for name in params.layer_fields(maps_only=maps_only):
        value = getattr(params, name)
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is not None:
                modules.append((path, resolve_layer(model, path, method=method)))
    return modules


def _plain(layouts: dict[int, Layout], module: nn.Module) -> bool:
    """Whether ``module``'s output is a plain channels-first map (nothing to record)."""
    layout = layouts.get(id(module))
    return layout is None or layout.trivial

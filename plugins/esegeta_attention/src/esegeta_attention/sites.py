"""Finding a model's attention modules and reading their probabilities for one call.

:func:`discover` walks the user's model once, without running it: the attention
modules an adapter can read (the *sites*, in definition order), windowed attention
(Swin and friends: refused, there is no token x token matrix over the image), and other
modules that look like attention (class names with "attention" / "attn") that no
adapter reads. :func:`capturing` enables the adapters of some sites for one forward
pass, checks every tensor they hand over (``(B, heads, N, N)`` with rows summing to 1),
passes each call to the method in execution order and undoes every change on exit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from esegeta_attention.adapters import SUPPORTED, AttentionAdapter, adapters
from esegeta_attention.adapters.base import forward_pre_hook
from esegeta_core import InvalidParamsError, MethodFailedError, NotApplicableError
from esegeta_core.layouts import Layout, infer_layout, parse_reshape, patch_size

PLUGIN = "attention"

_ATTENTION_LIKE = re.compile(r"attention|attn", re.IGNORECASE)
_WINDOWED = re.compile(r"window|swin", re.IGNORECASE)


@dataclass(frozen=True)
class Site:
    """One attention module an adapter can read."""

    path: str
    module: nn.Module
    adapter: AttentionAdapter


@dataclass
class Discovery:
    """What :func:`discover` found in a model."""

    model: str
    sites: list[Site]
    windowed: list[tuple[str, nn.Module]] = field(default_factory=list)
    unknown: list[tuple[str, nn.Module]] = field(default_factory=list)
    """Attention-like modules no adapter reads (outside the sites and their blocks)."""
    classes: tuple[str, ...] = ()
    """The model's module classes, sorted (for messages)."""


def discover(root: nn.Module) -> Discovery:
    """The attention modules of the user's model ``root`` (no forward pass)."""
    found: dict[int, AttentionAdapter] = {}
    for adapter in adapters():
        for module in adapter.find(root):
            found.setdefault(id(module), adapter)
    names = [(name, module) for name, module in root.named_modules()]
    sites = [Site(name, m, found[id(m)]) for name, m in names if id(m) in found]
    covered: set[int] = set()
    for site in sites:  # the sites' own sub-modules, and the blocks holding them
        covered |= {id(m) for m in site.module.modules()}
    for _, module in names:
        if any(id(m) in found for m in module.modules()):
            covered.add(id(module))
    windowed, unknown = [], []
    for name, module in names:
        cls = type(module).__name__
        if id(module) in covered or not _ATTENTION_LIKE.search(cls):
            continue
        (windowed if _WINDOWED.search(cls) else unknown).append((name, module))
    classes = tuple(sorted({type(m).__name__ for _, m in names}))
    return Discovery(type(root).__name__, sites, windowed, unknown, classes)


def _classes(modules: Sequence[tuple[str, nn.Module]]) -> str:
    return ", ".join(sorted({type(m).__name__ for _, m in modules}))


def require_attention(found: Discovery, method: str) -> None:
    """Raise :class:`NotApplicableError` for a model without readable global
    self-attention: windowed attention, unsupported attention modules, none at all."""
    who = f"Method {method!r} (plugin {PLUGIN!r})"
    if found.windowed:
        raise NotApplicableError(
            f"{who} needs global self-attention, and {found.model} computes windowed "
            f"attention ({_classes(found.windowed)}): tokens attend only to the tokens of "
            "their local window (windows shifted between blocks), so there is no token x "
            "token attention matrix over the image to read, roll out or weight by "
            "gradients (no global token mixing). The core's CAMs and gradient methods work "
            "on it (e.g. 'cnnvis.grad_cam' with layer='auto')."
        )
    if found.sites:
        return
    if found.unknown:
        raise NotApplicableError(
            f"{who} cannot read the attention of {found.model}: its attention modules "
            f"({_classes(found.unknown)}) are none of the supported ones ({SUPPORTED}). A "
            "plugin would need each block's softmax probabilities (B, heads, tokens, tokens) "
            "as a tensor of the autograd graph: an adapter in esegeta_attention.adapters "
            "that switches the module to an unfused path for the call and hooks the "
            "probabilities."
        )
    kinds = found.classes
    raise NotApplicableError(
        f"{who} explains transformers through their self-attention, and {found.model} has "
        f"no attention module (its modules: {', '.join(kinds[:12])}"
        f"{', ...' if len(kinds) > 12 else ''}). Use a gradient, CAM or perturbation "
        "method."
    )


@dataclass(frozen=True)
class AttentionCall:
    """One forward call of an attention site: ``probs`` is the ``(B, heads, N, N)``
    view of ``source``, the tensor the model computed (in the autograd graph when
    gradients are on)."""

    site: int
    probs: torch.Tensor
    source: torch.Tensor


@dataclass
class CaptureLog:
    """How often each site ran, and which unsupported attention modules ran."""

    calls: list[int]
    unknown_ran: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    """Token count of each measured site that ran (its last call)."""


@contextmanager
def capturing(
    sites: Sequence[Site],
    on_call: Callable[[AttentionCall], None],
    *,
    batch: int,
    method: str,
    watch: Sequence[tuple[str, nn.Module]] = (),
    measure: Sequence[Site] = (),
) -> Iterator[CaptureLog]:
    """Enable ``sites`` for the forward passes run inside the block; ``on_call`` gets
    every call in execution order. ``watch``: modules to report in
    ``CaptureLog.unknown_ran`` when they run; ``measure``: sites (enabled or not) whose
    token counts go to ``CaptureLog.tokens``. Every change is undone on exit, also when
    the pass raises."""
    log = CaptureLog([0] * len(sites))
    with ExitStack() as stack:
        for index, site in enumerate(sites):

            def record(
                source: torch.Tensor,
                shape: tuple[int, ...] | None = None,
                index: int = index,
                site: Site = site,
            ) -> None:
                probs = source if shape is None else source.view(shape)
                check_probs(probs, site, batch, method)
                log.calls[index] += 1
                on_call(AttentionCall(index, probs, source))

            site.adapter.enable(site.module, record, stack)
        for name, module in watch:

            def ran(mod: nn.Module, args: object, name: str = name) -> None:
                if name not in log.unknown_ran:
                    log.unknown_ran.append(name)

            forward_pre_hook(stack, module, ran)
        for site in measure:

            def count(
                mod: nn.Module, args: tuple[object, ...], kwargs: dict[str, object],
                site: Site = site,
            ) -> None:  # fmt: skip
                n = site.adapter.token_count(mod, args, kwargs)
                if n is not None:
                    log.tokens[site.path] = n

            forward_pre_hook(stack, site.module, count, with_kwargs=True)
        yield log


def check_probs(probs: torch.Tensor, site: Site, batch: int, method: str) -> None:
    """A ``(B, heads, N, N)`` tensor of probabilities (rows summing to 1), or an error."""
    who = f"Method {method!r} (plugin {PLUGIN!r})"
    where = f"{type(site.module).__name__} at {site.path!r}"
    shape = tuple(probs.shape)
    if probs.ndim != 4 or shape[0] != batch:
        raise MethodFailedError(
            f"{who}: {where} handed over a tensor shaped {shape}, not the attention "
            f"probabilities (B={batch}, heads, tokens, tokens). The {site.adapter.family} "
            "adapter does not fit this version of the library: please report it."
        )
    if shape[2] != shape[3]:
        raise NotApplicableError(
            f"{who}: {where} attends from {shape[2]} queries to {shape[3]} keys (cross "
            "attention, or keys pooled to fewer tokens as in PVT/SegFormer's spatial "
            "reduction): attention maps over the image need square self-attention."
        )
    rows = probs.detach().float().sum(-1)
    tol = 1e-3 if probs.dtype in (torch.float32, torch.float64) else 3e-2
    error = float((rows - 1).abs().amax()) if rows.numel() else 0.0
    if not math.isfinite(error) or error > tol:
        raise MethodFailedError(
            f"{who}: {where} handed over a tensor whose rows do not sum to 1 (off by "
            f"{error:.3g}): not softmax probabilities. The {site.adapter.family} adapter "
            "does not fit this version of the library: please report it."
        )


def token_layout(
    n_tokens: int,
    inputs: torch.Tensor,
    root: nn.Module,
    method: str,
    tokens: str | None = None,
) -> Layout:
    """The patch grid and the number of extra tokens (class, distillation, registers;
    before the grid) of ``n_tokens`` tokens, from the input's shape and the model's
    patch embedding (the core's :func:`~esegeta_core.layouts.infer_layout`), or from
    ``tokens`` (``"EXTRA:GRID"``, checked against the token count)."""
    rank = inputs.ndim - 2
    given: Layout | str = "tokens"
    if tokens is not None:
        parsed = parse_reshape(f"tokens:{tokens}", method=method)
        if not isinstance(parsed, Layout):  # "EXTRA:GRID" always parses to a layout
            raise InvalidParamsError(f"Method {method!r}: tokens={tokens!r} is not 'EXTRA:GRID'.")
        given = parsed
    try:
        return infer_layout(
            (inputs.shape[0], n_tokens, 1),
            tuple(inputs.shape),
            patch=patch_size(root, rank),
            given=given,
            layer="attention",
            method=method,
        )
    except InvalidParamsError as exc:
        example = "1:" + "x".join(["14"] * rank)
        raise InvalidParamsError(
            f"Method {method!r}: the attention's {n_tokens} tokens cannot be read as a "
            f"{rank}D patch grid for the input {tuple(inputs.shape)} "
            f"({'tokens=' + repr(tokens) + ' does not fit' if tokens else 'no single reading'}"
            f"). Give the layout with the parameter tokens='EXTRA:GRID', e.g. "
            f"tokens={example!r} (one class token before a {example[2:]} grid), or "
            f"explain(..., reshape='tokens:{example}') as for the CAMs. The core said: {exc}"
        ) from exc


__all__ = [
    "PLUGIN",
    "AttentionCall",
    "CaptureLog",
    "Discovery",
    "Site",
    "capturing",
    "check_probs",
    "discover",
    "require_attention",
    "token_layout",
]

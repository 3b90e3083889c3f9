"""Resolving layer paths such as ``"layer4.1.conv2"`` against the user's model.

Paths always refer to the user's own model, also when the core has wrapped it (for
segmentation) or when it sits inside ``DataParallel``: :func:`unwrap` peels those off.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from esegeta_core.errors import EsegetaError, LayerNotFoundError, did_you_mean


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside esegeta's score wrappers and (Distributed)DataParallel."""
    from esegeta_core.targets import ScoreModel

    seen = 0
    while seen < 16:
        if isinstance(model, ScoreModel):
            model = model.model
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            break
        seen += 1
    return model


def layer_names(model: nn.Module) -> list[str]:
    """Every named sub-module of the user's model, in definition order."""
    return [name for name, _ in unwrap(model).named_modules() if name]


def resolve_layer(model: nn.Module, path: str, *, method: str = "") -> nn.Module:
    """The sub-module of the user's model at ``path``; a clear error with near names if
    there is none."""
    target = unwrap(model)
    if not isinstance(path, str) or not path:
        raise LayerNotFoundError(
            f"{_who(method)}needs a layer path such as 'features.3' (got {path!r}). "
            f"Layers of this model: {_sample(target)}."
        )
    try:
        return _submodule(target, path)
    except AttributeError:
        names = layer_names(target)
        raise LayerNotFoundError(
            f"{_who(method)}layer {path!r} not found in {type(target).__name__}."
            + did_you_mean(path, names)
            + f" Layers of this model: {_sample(target)}."
        ) from None


def _submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.get_submodule(path)``, looking through the core's layer taps: a tapped
    layer resolves to itself, or to its channels-first view when its output is laid out
    otherwise (tokens, channels-last)."""
    from esegeta_core.sites import Tap

    module = root
    for part in path.split("."):
        if isinstance(module, Tap):
            module = module.inner
        children = module._modules
        if part not in children or children[part] is None:
            raise AttributeError(part)
        module = children[part]  # type: ignore[assignment]
    if isinstance(module, Tap):
        return module.view if module.view is not None else module.inner
    return module


def _who(method: str) -> str:
    return f"Method {method!r}: " if method else ""


def _sample(model: nn.Module, limit: int = 20) -> str:
    names = layer_names(model)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") or "(none)"


AUTO = "auto"
"""The layer value that asks the core to choose (:func:`auto_layer`)."""


def auto_layer(model: nn.Module, inputs: torch.Tensor, *, method: str = "") -> str:
    """The layer ``layer="auto"`` stands for, found with one forward/backward probe.

    A CNN: the last module on the path to the scores whose output is a spatial map
    ``(B, C, *spatial)`` with more than one position and a non-zero gradient there,
    preferring blocks (modules with children) over single layers, skipping
    parameter-free modules (pooling, dropout) and, for segmentation models, the
    output head (modules with as many channels as the output). A transformer (token
    outputs ``(B, N, C)`` after the last spatial map): the last block, among the items
    of a ``ModuleList`` or ``Sequential``, whose tokens other than the first get a
    gradient (with a class-token head, that is the input of the last block, as
    pytorch-grad-cam recommends for ViTs).
    """
    root = unwrap(model)
    names = {id(m): n for n, m in root.named_modules() if n}
    records: list[tuple[str, nn.Module, torch.Tensor]] = []
    final: list[Any] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            records.append((names[id(module)], module, output))

    handles = [m.register_forward_hook(hook) for m in root.modules() if id(m) in names]
    handles.append(root.register_forward_hook(lambda m, a, o: final.append(o)))
    x = inputs[:1].detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            scores = model(x)
    finally:
        for handle in handles:
            handle.remove()
    spatial, tokens = _candidates(records, x, final[0] if final else None)
    used = _with_gradient(scores, [t for _, _, t in spatial + tokens])
    if (spatial or tokens) and not used:
        raise LayerNotFoundError(
            f"{_who(method)}layer='auto': the scores do not depend on any layer with a "
            "spatial or token output (every gradient is zero: a zero-initialised or "
            "untrained classifier head?). Pass the layer explicitly."
        )
    spatial = [c for c in spatial if id(c[2]) in used]
    tokens = [c for c in tokens if id(c[2]) in used]
    order = {id(t): i for i, (_, _, t) in enumerate(records)}
    last_spatial = max((order[id(t)] for _, _, t in spatial), default=-1)
    last_token = max((order[id(t)] for _, _, t in tokens), default=-1)
    if tokens and last_token > last_spatial:
        blocks = [c for c in tokens if c[0].rsplit(".", 1)[-1].isdigit()]
        return (blocks or tokens)[-1][0]
    if spatial:
        blocks = [c for c in spatial if next(c[1].children(), None) is not None]
        return (blocks or spatial)[-1][0]
    raise LayerNotFoundError(
        f"{_who(method)}layer='auto' found no module whose output is a spatial map or a "
        "token sequence on the path to the scores. Pass the layer explicitly; layers of "
        f"this model: {_sample(root)}."
    )


Candidate = tuple[str, nn.Module, torch.Tensor]


def _candidates(
    records: list[Candidate], x: torch.Tensor, final: Any
) -> tuple[list[Candidate], list[Candidate]]:
    from esegeta_core.outputs import select_output

    try:
        out = select_output(final)
    except EsegetaError:
        out = None
    head_channels = out.shape[1] if isinstance(out, torch.Tensor) and out.ndim == x.ndim else None
    spatial, tokens = [], []
    for name, module, t in records:
        if next(module.parameters(), None) is None or t is out:
            continue
        if t.ndim == x.ndim and t.shape[0] == 1 and math.prod(t.shape[2:]) > 1:
            if head_channels is None or t.shape[1] != head_channels:
                spatial.append((name, module, t))
        elif t.ndim == 3 and t.shape[0] == 1 and t.shape[1] > 1:
            tokens.append((name, module, t))
    return spatial, tokens


def _with_gradient(scores: Any, tensors: list[torch.Tensor]) -> set[int]:
    """ids of the tensors whose gradient from the summed scores is non-zero beyond the
    first position (spatial maps: anywhere; tokens: past the first token)."""
    if not tensors or not isinstance(scores, torch.Tensor):
        return set()
    grads = torch.autograd.grad(scores.sum(), tensors, allow_unused=True)
    used = set()
    for t, g in zip(tensors, grads):
        if g is None:
            continue
        part = g[:, 1:] if t.ndim == 3 else g
        if bool((part != 0).any()):
            used.add(id(t))
    return used

"""Scores with a layer's output replaced, computing the layers before it once per item.

Channel ablation (Ablation-CAM, Captum's layer feature ablation) scores the model many
times with one layer's output changed: a 2048-channel layer means 2048 forward passes
per item. Run naively, every pass recomputes everything before the layer, although
that part is the same for every ablated copy of an item. :func:`replaced_scores` runs
the model on the item once per chunk and, at the layer, expands to the chunk's
replacements, so the layers before it run once and only the rest of the model runs
per copy.

Whether this is valid depends on the model: a tensor from before the layer that meets
the expanded batch later (a skip connection) broadcasts from the one item to its copies,
which is right, but a concatenation or an explicit reshape with the item's batch size
fails or changes the result. The first chunk therefore carries the unmodified output
too and its score must equal the plain forward pass's; otherwise (or on any error) the
call falls back to full passes, with the same result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from esegeta_core.prefix_memo import PrefixMemo, PrefixMismatchError
from esegeta_core.runtime.passes import CLIMB_START, method_passes
from esegeta_core.sites import Tap

log = logging.getLogger(__name__)

Build = Callable[[int, list[Any]], torch.Tensor]

FAST_CHUNK = 512
"""Rows per pass when only the layers after the replaced one run per row."""
FULL_CHUNK = 32
"""Rows per pass when every row runs the whole model."""


def replaced_scores(
    model: nn.Module,
    module: nn.Module,
    inputs: torch.Tensor,
    original: torch.Tensor,
    target: torch.Tensor,
    reference: torch.Tensor,
    rows: list[tuple[int, Any]],
    build: Build,
    *,
    chunk: int | None,
    method: str = "",
) -> torch.Tensor:
    """The target score of each replaced row.

    ``original``: ``module``'s output on ``inputs`` ``(B, ...)``; ``reference``: the
    ``(B,)`` target scores of the plain forward pass; ``rows``: ``(item, key)`` pairs;
    ``build(item, keys)`` returns the replacements of one item's rows, ``(len(keys),
    *original.shape[1:])`` (built a chunk at a time). ``chunk``: rows per forward pass;
    None picks :data:`FAST_CHUNK` when only the layers after ``module`` run per row and
    :data:`FULL_CHUNK` when whole passes do; under ``explain(auto_batch=True)`` the
    most, the pass planner choosing the fastest size within it
    (:func:`~esegeta_core.runtime.passes.method_passes`). Returns a ``(len(rows),)`` tensor, in the
    order of ``rows``.
    """
    scores = torch.empty(len(rows), dtype=reference.dtype, device=reference.device)
    by_item: dict[int, list[int]] = {}
    for r, (item, _) in enumerate(rows):
        by_item.setdefault(item, []).append(r)
    if not by_item:
        return scores
    first = next(iter(by_item))
    memo: PrefixMemo | None = PrefixMemo(model, module)
    fast = _fast_is_exact(model, module, inputs, original, target, reference, first, memo)
    if not fast:
        log.info("%s: layer replay falls back to full passes", method or "ablation")
    # a memo that replayed the first item exactly serves every item (one record each)
    remember = fast and memo is not None and memo.usable
    size = chunk or (FAST_CHUNK if fast else FULL_CHUNK)
    for item, indices in by_item.items():
        keys = [rows[r][1] for r in indices]
        if item != first:
            memo = PrefixMemo(model, module) if remember else None
        run = _item_passes(
            model, module, inputs[item : item + 1], target[item], keys, build, item, fast,
            memo if remember else None,
        )  # fmt: skip
        # planned under explain(auto_batch=True): a pass runs the layers after
        # ``module`` on activations like ``original`` (or the whole model per row)
        kind, sample = (("replay", id(module)), original) if fast else ("forward", inputs)
        # the layers before ``module`` run once per pass: the planner may go up to the
        # fast path's own size (the rows hold only the tail's activations)
        # and, as each pass pays that prefix, starts its search at a quarter of it
        fits = max(size, FAST_CHUNK) if fast else None
        start = FAST_CHUNK // 4 if fast else CLIMB_START
        got = method_passes(
            len(indices), run, size, sample[:1], kind=kind, layouts=False, fits=fits, start=start
        )
        scores[indices] = got.to(scores.dtype)
    return scores


def _item_passes(
    model: nn.Module,
    module: nn.Module,
    one: torch.Tensor,
    target: torch.Tensor,
    keys: list[Any],
    build: Build,
    item: int,
    fast: bool,
    memo: PrefixMemo | None,
) -> Callable[[int, int, bool], torch.Tensor]:
    """The pass of rows ``start .. stop - 1`` of one item: their target scores (with
    ``memo``, the layers before ``module`` replayed from its record)."""

    def run(start: int, stop: int, _layout: bool) -> torch.Tensor:
        batch = build(item, keys[start:stop])
        many = one if fast else one.expand(stop - start, *one.shape[1:])
        if memo is None or not memo.usable:
            return _run(model, module, many, batch)[:, int(target)]
        try:
            with memo.running():
                out = _run(model, module, many, batch)
        except PrefixMismatchError:
            log.info("layer replay: the recorded layers do not replay; computing them")
            memo.usable = False
            out = _run(model, module, many, batch)
        return out[:, int(target)]

    return run


def _fast_is_exact(
    model: nn.Module,
    module: nn.Module,
    inputs: torch.Tensor,
    original: torch.Tensor,
    target: torch.Tensor,
    reference: torch.Tensor,
    item: int,
    memo: PrefixMemo,
) -> bool:
    """Whether expanding at the layer reproduces the plain score (on two copies). The
    run is recorded in ``memo``, and a replay of it must give the same scores, else the
    memo is dropped (``memo.usable`` false)."""
    copies = original[item : item + 1].expand(2, *original.shape[1:]).clone()

    def scores() -> torch.Tensor:
        return _run(model, module, inputs[item : item + 1], copies)

    try:
        with memo.running():
            out = scores()
    except Exception:  # noqa: BLE001 - any failure means: run full passes instead
        return False
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        return False
    got = out[:, int(target[item])].float()
    want = reference[item].float().expand(2)
    if not _close(got, want):
        return False
    if memo.recorded:
        try:
            with memo.running():
                again = scores()
            memo.usable = again.shape == out.shape and _close(again.float(), out.float())
        except Exception:  # noqa: BLE001 - the memo does not apply: compute the layers
            memo.usable = False
    else:
        memo.usable = False
    return True


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + float(want.abs().max()))))


def _run(
    model: nn.Module, module: nn.Module, x: torch.Tensor, replacements: torch.Tensor
) -> torch.Tensor:
    """``model(x)`` with ``module``'s output replaced by ``replacements`` (whose batch
    may be larger than ``x``'s: the layers after ``module`` run on it)."""

    def hook(_m: nn.Module, _args: Any, _out: Any) -> torch.Tensor:
        return replacements

    handle = _site(model, module).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def _site(model: nn.Module, module: nn.Module) -> nn.Module:
    """Where ``module``'s output is replaced: the core's tap around it when the call
    tapped the layer (its output is the layer's, copied so that in-place code downstream
    cannot touch what a method recorded; the replacements are made per pass, so copying
    them again would only cost a pass's worth of memory traffic), else ``module``."""
    for candidate in model.modules():
        if isinstance(candidate, Tap) and candidate.inner is module and candidate.view is None:
            return candidate
    return module

"""The ablation engine: occlusion and feature ablation computed on the model's device.

Occlusion (Zeiler and Fergus 2014, https://arxiv.org/abs/1311.2901) sets each window
of a sliding grid to a baseline and attributes the score drop to the window's elements,
averaged over the windows covering each element; feature ablation sets each feature of
an integer mask to the baseline and attributes its score drop to all its elements.
Captum builds every pass by repeating the input once per perturbation and blending it
with a full-size mask (several input-sized temporaries per perturbation) and keeps the
model's whole output. This engine:

- builds each pass in one preallocated buffer of inputs on the input's device: a slot
  is filled from its original item once, then only the perturbed region is written
  with the baseline; when the slot takes the item's next perturbation only the old
  region is restored from the original (no masks, no repeated inputs);
- keeps only the target score of every perturbed input, never all classes;
- runs its passes through the core's pass planner
  (:func:`~esegeta_core.runtime.passes.method_passes`): passes of ``batch_size``
  inputs, or measured sizes and layouts under ``explain(auto_batch=True)``.

The maps equal Captum 0.9's ``Occlusion`` and ``FeatureAblation`` (same windows, shift
counts at the edges, averaging, baselines and targets) up to floating-point summation
order. The passes (:func:`perturbed_scores`) take any fill of a region, not only a
baseline: the permutation engine (:mod:`esegeta_core.runtime.permutation`) fills it from
another item of the batch.

Exact Shapley values (Shapley 1953, :func:`shapley_values`) score every coalition of an
item's features once (2^n passes) where Captum's ``ShapleyValues`` walks all n!
orderings (n * n! passes); each pass is built in one reused buffer from the baseline and
the kept features, and the values equal Captum's up to summation order.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from esegeta_core.errors import InvalidParamsError
from esegeta_core.runtime.indices import device_index, device_scalar
from esegeta_core.runtime.pass_buffer import PassBuffer
from esegeta_core.runtime.passes import method_passes
from esegeta_core.runtime.perturb_args import (
    Baseline,
    Model,
    Target,
    baseline_value,
    check_feature_mask,
    check_initial,
    check_inputs,
    pass_scores,
    positive,
    target_rows,
)


def occlusion(
    model: Model,
    inputs: torch.Tensor,
    target: Target,
    *,
    window: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    baselines: Baseline = None,
    batch_size: int,
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Occlusion maps ``(B, C, *spatial)`` (float32, as Captum returns them).

    ``window`` and ``strides`` span every non-batch dimension, channels first, as
    Captum's ``sliding_window_shapes`` and ``strides`` (an int stands for every
    dimension). Windows start at 0 and step by the stride until the dimension is
    covered; the last one may be cut off at the edge. ``batch_size`` is the most
    perturbed inputs per pass (``perturbations_per_eval`` times the batch in Captum's
    terms). ``initial``: the ``(B,)`` target scores of the inputs themselves when the
    caller has them already (from the prediction pass), which then do not run again.
    """
    x = check_inputs(inputs, "Ablation")
    dims = tuple(x.shape[1:])
    sizes = _per_dim(window, dims, "window")
    steps = _per_dim(strides, dims, "strides")
    for d, (n, w, s) in enumerate(zip(dims, sizes, steps, strict=True)):
        if not 1 <= w <= n:
            raise InvalidParamsError(
                f"Occlusion: window {sizes} does not fit the input's dimensions {dims} "
                f"(dimension {d}: {w} of {n})."
            )
        if s < 1 or (w < n and s > w):
            raise InvalidParamsError(
                f"Occlusion: strides {steps} must be at least 1 and at most the window "
                f"{sizes} where the window does not cover the dimension (dimension {d}: "
                f"stride {s}, window {w}, size {n}); larger steps would skip elements."
            )
    counts = [-(-(n - w) // s) + 1 for n, w, s in zip(dims, sizes, steps, strict=True)]
    starts = _window_starts(counts, steps)
    slices = [
        tuple(slice(i, min(i + w, n)) for i, w, n in zip(corner, sizes, dims, strict=True))
        for corner in starts
    ]
    windows = len(slices)
    b = x.shape[0]
    pairs = [(item, p) for p in range(windows) for item in range(b)]
    regions = _Windows(slices)
    fill = baseline_fill(baselines, x, "Ablation")
    initial, scores = perturbed_scores(
        model, x, target, regions, pairs, batch_size, fill, who="Ablation", initial=initial
    )
    # pair p * B + item: (B, windows), then the window grid with the channel axis first
    diff = (initial.unsqueeze(0) - scores.view(windows, b)).T
    grid = diff.reshape(b, *reversed(counts)).permute(0, *range(len(counts), 0, -1))
    total = grid
    cover = []
    for d, (n, w, s, k) in enumerate(zip(dims, sizes, steps, counts, strict=True)):
        element = torch.arange(n, device=x.device).unsqueeze(1)
        start = torch.arange(k, device=x.device).unsqueeze(0) * s
        hits = (element >= start) & (element < start + w)  # (n, k): window k covers n
        cover.append(hits.sum(1))
        total = (total.movedim(1 + d, -1) @ hits.T.to(total.dtype)).movedim(-1, 1 + d)
    weight = torch.ones((), device=x.device)
    for d, c in enumerate(cover):
        shape = [1] * len(dims)
        shape[d] = c.numel()
        weight = weight * c.view(shape).float()
    return total.float() / weight


def feature_ablation(
    model: Model,
    inputs: torch.Tensor,
    target: Target,
    *,
    feature_mask: torch.Tensor,
    baselines: Baseline = None,
    batch_size: int,
    kind: object = "forward",
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Feature ablation maps ``(B, C, *spatial)`` in the model's output dtype.

    ``feature_mask`` holds a feature id per element, broadcastable to the inputs with
    the same number of dimensions (``(B or 1, C or 1, *spatial)``). Each item's features
    are ablated one at a time; every element gets its feature's score drop.
    ``batch_size``: see :func:`occlusion`. ``kind`` names what ``model`` computes for
    the pass planner's cache of plans (``"forward"``: the whole network; a model that
    stops at a layer names its own). ``initial``: the ``(B,)`` scores of the inputs
    themselves when the caller has them already (from the prediction pass), which
    then do not run again.
    """
    x = check_inputs(inputs, "Ablation")
    b = x.shape[0]
    mask = check_feature_mask(feature_mask, x, "Feature ablation")
    regions = FeatureRegions(mask)
    longest = max(len(row.bounds) for row in regions.rows)
    pairs = [
        (item, f)
        for f in range(longest)
        for item in range(b)
        if f < len(regions.rows[regions.row(item)].bounds)
    ]
    fill = baseline_fill(baselines, x, "Ablation")
    initial, scores = perturbed_scores(
        model, x, target, regions, pairs, batch_size, fill, who="Ablation", kind=kind,
        initial=initial,
    )  # fmt: skip
    items = torch.tensor([i for i, _ in pairs], device=x.device, dtype=torch.long)
    return regions.feature_map(x, pairs, initial[items] - scores)


# -- regions ---------------------------------------------------------------------------


def _plane(t: torch.Tensor) -> torch.Tensor:
    """A ``(C, *spatial)`` item as a ``(C, elements)`` view (contiguous or
    channels-last storage alike)."""
    return t.unsqueeze(1) if t.ndim == 1 else t.view(t.shape[0], -1)


@dataclass
class _Windows:
    """Occlusion's regions: one box of slices per window, the same for every item."""

    slices: list[tuple[slice, ...]]

    def write(self, slot: torch.Tensor, source: torch.Tensor | float, item: int, r: int) -> None:
        """Copy region ``r`` of ``source`` (an item, or a number) into ``slot``."""
        box = self.slices[r]
        if isinstance(source, float):
            slot[box] = source
        else:
            slot[box] = source[box]


@dataclass
class FeatureRow:
    """The features of one row of a feature mask: ``ids`` in increasing order; the
    element positions of feature ``f`` (the ``f``-th id) are ``spatial[a:b]`` (and
    ``channels[a:b]`` when features differ per channel) for ``(a, b) = bounds[f]``;
    ``inverse`` maps each element to its feature."""

    ids: list[int]
    spatial: torch.Tensor
    channels: torch.Tensor | None
    bounds: list[tuple[int, int]]
    inverse: torch.Tensor


class FeatureRegions:
    """The regions of a feature mask ``(B or 1, C or 1, *spatial)``: element positions
    per feature and mask row, found once by sorting the mask (the positions of all
    features together take one long per element of a row). A region index is a
    feature's place in its row's ``ids``."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.shared = mask.shape[0] == 1
        self.channels = mask.shape[1]
        per_channel = mask.shape[1] > 1
        elements = math.prod(mask.shape[2:])
        self.rows: list[FeatureRow] = []
        for row in mask:
            ids, inverse, counts = torch.unique(
                row.reshape(-1), return_inverse=True, return_counts=True
            )
            order = torch.argsort(inverse, stable=True)
            ends = torch.cumsum(counts, 0).tolist()
            bounds = list(zip([0, *ends[:-1]], ends, strict=True))
            if per_channel:
                spatial, channels = order % elements, order // elements
            else:
                spatial, channels = order, None
            self.rows.append(FeatureRow(ids.tolist(), spatial, channels, bounds, inverse))

    def row(self, item: int) -> int:
        """The mask row of batch item ``item``."""
        return 0 if self.shared else item

    def write(self, slot: torch.Tensor, source: torch.Tensor | float, item: int, r: int) -> None:
        """Copy feature ``r`` of ``source`` (an item, or a number) into ``slot``."""
        row = self.rows[self.row(item)]
        a, b = row.bounds[r]
        spatial = row.spatial[a:b]
        dst = _plane(slot)
        if row.channels is None:
            if isinstance(source, float):
                dst.index_fill_(1, spatial, source)
            else:
                dst.index_copy_(1, spatial, _plane(source).index_select(1, spatial))
        else:
            channels = row.channels[a:b]
            if isinstance(source, float):
                value = device_scalar(source, dst)
            else:
                value = _plane(source)[channels, spatial].to(dst.dtype)
            dst.index_put_((channels, spatial), value)

    def feature_map(
        self, x: torch.Tensor, pairs: Sequence[tuple[int, int]], drops: torch.Tensor
    ) -> torch.Tensor:
        """The ``(B, C, *spatial)`` map in which every element of item ``i`` gets the
        drop of the pair ``(i, its feature)``, zero where no pair names the feature."""
        b = x.shape[0]
        longest = max(len(row.bounds) for row in self.rows)
        table = torch.zeros((b, longest), dtype=drops.dtype, device=x.device)
        if pairs:
            items = torch.tensor([i for i, _ in pairs], device=x.device)
            features = torch.tensor([f for _, f in pairs], device=x.device)
            table[items, features] = drops
        out = torch.stack([table[i][self.rows[self.row(i)].inverse] for i in range(b)])
        return out.view(b, self.channels, *x.shape[2:]).expand(x.shape).clone()


Regions = _Windows | FeatureRegions

Fill = Callable[[int, int], torch.Tensor | float]
"""``(item, region) ->`` what region ``region`` of item ``item`` is set to in its
perturbed input: a number, or a tensor shaped like an item whose region is copied (a
baseline item, or another item of the batch)."""


def baseline_fill(baselines: Baseline, x: torch.Tensor, who: str) -> Fill:
    """The :data:`Fill` that sets every region to the baseline (ablation, occlusion)."""
    base = baseline_value(baselines, x, who)
    if isinstance(base, float):
        return lambda item, region: base
    per_item = base.shape[0] > 1
    return lambda item, region: base[item if per_item else 0]


# -- the passes ------------------------------------------------------------------------


UNPERTURBED = -1
"""The region index of an input left as it is (its reference score)."""


class _Buffer:
    """The perturbed inputs of one pass, built in one reused tensor.

    Slot ``k`` remembers the (item, region) it holds. A new pair goes preferably to a
    slot that holds the same item: only the old region is restored from the original
    and the new one written from its fill; other slots get a copy of the item first.
    The tensor grows when a larger pass is asked for and changes layout when the
    planner asks for channels-last.
    """

    def __init__(self, x: torch.Tensor, fill: Fill, regions: Regions) -> None:
        self.x, self.fill, self.regions = x, fill, regions
        self.buffer = PassBuffer(x[0])
        self.held: list[tuple[int, int] | None] = []

    @property
    def allocations(self) -> int:
        """How many tensors the buffer has made."""
        return self.buffer.allocations

    def _assign(self, pairs: Sequence[tuple[int, int]]) -> list[int]:
        """A slot below ``len(pairs)`` for every pair: the same pair if a slot holds
        it, else a slot holding the same item, else any free one."""
        n = len(pairs)
        slots: list[int | None] = [None] * n
        free = set(range(n))
        exact: dict[tuple[int, int], list[int]] = {}
        by_item: dict[int, list[int]] = {}
        for k in range(n):
            held = self.held[k]
            if held is not None:
                exact.setdefault(held, []).append(k)
                by_item.setdefault(held[0], []).append(k)
        for j, pair in enumerate(pairs):
            if exact.get(pair):
                k = exact[pair].pop()
                slots[j] = k
                free.discard(k)
        for j, (item, _) in enumerate(pairs):
            if slots[j] is None:
                same = by_item.get(item, [])
                while same and same[-1] not in free:
                    same.pop()
                if same:
                    k = same.pop()
                    slots[j] = k
                    free.discard(k)
        rest = sorted(free)
        for j in range(n):
            if slots[j] is None:
                slots[j] = rest.pop()
        return [k for k in slots if k is not None]

    def build(
        self, pairs: Sequence[tuple[int, int]], channels_last: bool
    ) -> tuple[torch.Tensor, list[int]]:
        """The pass's inputs (the first ``len(pairs)`` slots) and each pair's slot."""
        n = len(pairs)
        data = self.buffer.take(n, channels_last, keep=True)
        self.held += [None] * (n - len(self.held))
        slots = self._assign(pairs)
        for (item, region), k in zip(pairs, slots, strict=True):
            held = self.held[k]
            if held == (item, region):
                continue
            slot = data[k]
            if held is None or held[0] != item:
                slot.copy_(self.x[item])
            elif held[1] != UNPERTURBED:
                self.regions.write(slot, self.x[item], item, held[1])
            if region != UNPERTURBED:
                self.regions.write(slot, self.fill(item, region), item, region)
            self.held[k] = (item, region)
        return data, slots


def perturbed_scores(
    model: Model,
    x: torch.Tensor,
    target: Target,
    regions: Regions,
    pairs: list[tuple[int, int]],
    batch_size: int,
    fill: Fill,
    *,
    who: str,
    kind: object = "forward",
    initial: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target scores ``(B,)`` of the inputs ``x`` (contiguous, see
    :func:`check_inputs`) and ``(len(pairs),)`` of every perturbed ``(item, region)``
    pair, whose region is set to ``fill(item, region)``.

    The passes are built in one reused buffer (:class:`_Buffer`), the inputs themselves
    ride in the first one (unless their scores are given as ``initial``), only the
    target scores are kept, and the passes run through
    :func:`~esegeta_core.runtime.passes.method_passes` with ``kind`` (planned under
    ``explain(auto_batch=True)``, else ``batch_size`` inputs each). ``who`` names the
    method in errors.
    """
    positive(batch_size, "batch_size", who)
    b = x.shape[0]
    targets = target_rows(target, b, x.device, who)
    buffer = _Buffer(x, fill, regions)

    def chunk(start: int, stop: int, channels_last: bool) -> torch.Tensor:
        batch, slots = buffer.build(pairs[start:stop], channels_last)
        held = [pair[0] for pair in buffer.held[: len(slots)] if pair is not None]
        picked = targets[device_index(held, x.device)] if targets is not None else None
        scores = pass_scores(model, batch, picked, who)
        return scores[device_index(slots, scores.device)]

    initial = check_initial(initial, b, who)
    if initial is not None:
        with torch.no_grad():
            scores = method_passes(len(pairs), chunk, batch_size, x[:1], kind=kind)
        return initial.to(scores.dtype), scores
    # the inputs themselves ride in the first pass, as region UNPERTURBED
    pairs = [(item, UNPERTURBED) for item in range(b)] + pairs
    with torch.no_grad():
        scores = method_passes(len(pairs), chunk, batch_size, x[:1], kind=kind)
    return scores[:b], scores[b:]


def _per_dim(value: int | Sequence[int], dims: tuple[int, ...], what: str) -> tuple[int, ...]:
    """One int per non-batch dimension."""
    sizes = (value,) * len(dims) if isinstance(value, int) else tuple(value)
    if len(sizes) != len(dims) or not all(isinstance(v, int) for v in sizes):
        raise InvalidParamsError(
            f"Occlusion: {what} {value!r} must be an int or one int per non-batch "
            f"dimension of the inputs {dims} (channels first)."
        )
    return sizes


def _window_starts(counts: Sequence[int], steps: Sequence[int]) -> list[tuple[int, ...]]:
    """Every window's corner, numbered as Captum does (the first dimension fastest)."""
    corners = []
    for p in range(math.prod(counts)):
        corner = []
        for k, s in zip(counts, steps, strict=True):
            corner.append((p % k) * s)
            p //= k
        corners.append(tuple(corner))
    return corners


# -- exact Shapley values --------------------------------------------------------------

MAX_SHAPLEY_FEATURES = 20
"""The most features per item :func:`shapley_values` takes: 2^20 coalitions each."""


@dataclass
class _Players:
    """The features of one row of a feature mask as Shapley players: ``inverse`` maps
    each element of the row to its player ``0..count-1``, or to ``count`` for a negative
    id (Captum never adds those: such elements stay at the baseline)."""

    inverse: torch.Tensor
    count: int


def _players(row: torch.Tensor) -> _Players:
    """The players of one ``(C or 1, *spatial)`` mask row, numbered in id order."""
    ids, inverse = torch.unique(row.reshape(-1), return_inverse=True)
    negative = int((ids < 0).sum())
    count = ids.numel() - negative
    if negative:
        inverse = torch.where(inverse < negative, count, inverse - negative)
    return _Players(inverse, count)


def _shapley_weights(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The ``(n, 2^n)`` Shapley coefficients: row ``j`` weighs coalition ``c``'s score
    by ``w(|c| - 1)`` when ``c`` holds player ``j`` and by ``-w(|c|)`` when not, with
    ``w(k) = k! (n - k - 1)! / n!``, so that ``phi_j`` is the row's weighted sum of the
    ``2^n`` scores (the pairs ``v(S + j) - v(S)`` regrouped by coalition)."""
    codes = torch.arange(2**n, device=device)
    players = torch.arange(n, device=device)
    bits = (codes.unsqueeze(0) >> players.unsqueeze(1)) & 1  # (n, 2^n)
    size = bits.sum(0)
    w = torch.tensor(
        [math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)],
        dtype=dtype,
        device=device,
    )
    joined = w[(size - 1).clamp(min=0)]  # the weight when the coalition holds j
    left = w[size.clamp(max=n - 1)]  # the weight when it does not
    return torch.where(bits.bool(), joined, -left)


def shapley_values(
    model: Model,
    inputs: torch.Tensor,
    target: Target,
    *,
    feature_mask: torch.Tensor,
    baselines: Baseline = None,
    batch_size: int,
) -> torch.Tensor:
    """Exact Shapley values ``(B, C, *spatial)`` (float32, as Captum returns them) from
    the target score of every coalition of each item's features, each evaluated once.

    ``phi_i = sum over S in N \\ {i} of |S|! (n - |S| - 1)! / n! (v(S + i) - v(S))``,
    where ``v(S)`` scores the input with the features of ``S`` kept and every other
    element at the baseline: 2^n forward passes per item instead of Captum's n * n!
    (its orderings start from the all-baseline input and add features in turn, so the
    values are the same). ``feature_mask`` is as in :func:`feature_ablation`; each item
    has its own players (its mask row's ids), and ids absent from an item or negative
    count for nothing, as in Captum. Every element gets its feature's value.
    ``batch_size``: see :func:`occlusion`.
    """
    x = check_inputs(inputs, "Shapley values")
    positive(batch_size, "batch_size", "Shapley values")
    mask = check_feature_mask(feature_mask, x, "Shapley values")
    b, device = x.shape[0], x.device
    rows = [_players(row) for row in mask]
    counts = [rows[0 if len(rows) == 1 else i].count for i in range(b)]
    if max(counts) > MAX_SHAPLEY_FEATURES:
        raise InvalidParamsError(
            f"Shapley values: an item has {max(counts)} features, which is 2^{max(counts)} "
            f"coalitions to evaluate; at most {MAX_SHAPLEY_FEATURES} features are allowed. "
            "Use fewer, larger features or Shapley value sampling."
        )
    passes = [2**n if n else 0 for n in counts]  # an item without features needs none
    offsets = [0]
    for p in passes:
        offsets.append(offsets[-1] + p)
    targets = target_rows(target, b, device, "Shapley values")
    base = baseline_value(baselines, x, "Shapley values")
    fill = torch.tensor(base if isinstance(base, float) else 0.0, dtype=x.dtype, device=device)
    owner = torch.repeat_interleave(
        torch.arange(b, device=device), torch.tensor(passes, device=device)
    )
    buffer = PassBuffer(x[0])

    def chunk(start: int, stop: int, channels_last: bool) -> torch.Tensor:
        data = buffer.take(stop - start, channels_last)
        item = bisect.bisect_right(offsets, start) - 1
        pos = start
        while pos < stop:
            end = min(stop, offsets[item + 1])
            if end > pos:  # coalitions pos..end of this item: its codes, one bit a player
                players = rows[0 if len(rows) == 1 else item]
                codes = torch.arange(pos - offsets[item], end - offsets[item], device=device)
                shifts = torch.arange(players.count + 1, device=device)
                bits = ((codes.unsqueeze(1) >> shifts) & 1).bool()  # last column: never
                keep = bits[:, players.inverse].view(end - pos, *mask.shape[1:])
                other = fill if isinstance(base, float) else base[item if len(base) > 1 else 0]
                torch.where(keep, x[item], other, out=data[pos - start : end - start])
            pos, item = end, item + 1
        picked = targets[owner[start:stop]] if targets is not None else None
        return pass_scores(model, data, picked, "Shapley values")

    work = offsets[-1]
    with torch.no_grad():
        if work:
            scores = method_passes(work, chunk, batch_size, x[:1], kind="forward")
        else:
            scores = torch.zeros(0, device=device)
    # the mean over orderings in float64 (float32 where the device has no float64)
    exact = torch.float32 if device.type == "mps" else torch.float64
    widest = max(counts)
    phi = torch.zeros((b, widest + 1), dtype=exact, device=device)  # last column: zero
    for n in sorted(set(counts) - {0}):
        items = [i for i in range(b) if counts[i] == n]
        first = torch.tensor([offsets[i] for i in items], device=device)
        table = scores[first.unsqueeze(1) + torch.arange(2**n, device=device)].to(exact)
        phi[torch.tensor(items, device=device), :n] = table @ _shapley_weights(n, device, exact).T
    inverse = torch.stack([row.inverse for row in rows]).expand(b, -1)
    out = phi.gather(1, inverse).view(b, *mask.shape[1:]).to(torch.float32)
    return out.expand(x.shape).contiguous()

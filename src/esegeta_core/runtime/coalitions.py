"""Coalitions of features scored on the model's device: Shapley value sampling, and the
interpretable samples of LIME and KernelSHAP.

A coalition keeps some features of an item (the regions of an integer feature mask) and
sets every other element to the baseline. Three methods score many of them:

- Shapley value sampling (Castro et al. 2009, https://doi.org/10.1016/j.cor.2008.04.004)
  adds an item's features to the baseline one at a time in random orders and credits
  each feature with the score change it causes, averaged over the orders
  (:func:`shapley_value_sampling`);
- LIME (Ribeiro et al. 2016, https://arxiv.org/abs/1602.04938) and KernelSHAP (Lundberg
  and Lee 2017, https://arxiv.org/abs/1705.07874) score random coalitions and fit a
  linear surrogate to the scores; the caller draws the coalitions and fits the
  surrogate, :func:`coalition_scores` scores them and :func:`feature_values` spreads the
  surrogate's coefficients over the features' elements.

Captum 0.9 builds every perturbed input by blending the whole input and the baseline
with a full-size mask per perturbation (ShapleyValueSampling also keeps a full-size mask
per step) and keeps the model's whole output. Here each pass is built in one reused
buffer on the input's device: a slot that takes a later step of the order it holds only
gets the added features' elements from the item, other slots are built with one
``where`` per run of slots; only the target score of each input is kept, and the passes
run through the core's pass planner (:func:`~esegeta_core.runtime.passes.method_passes`),
so ``explain(auto_batch=True)`` plans them.

The random draws are the caller's (LIME, KernelSHAP) or Captum's own calls in Captum's
order (:func:`shapley_value_sampling`), so the results equal Captum's for the same seed
whatever the pass size. That holds while the model draws no random numbers from torch's
CPU generator: a model that does (dropout in training mode) would interleave its draws
with the method's differently, so the passes stop with :class:`RandomModelError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from esegeta_core.errors import InvalidModelError, InvalidParamsError
from esegeta_core.runtime.indices import device_index
from esegeta_core.runtime.pass_buffer import PassBuffer
from esegeta_core.runtime.passes import method_passes
from esegeta_core.runtime.perturb_args import (
    Baseline,
    Model,
    Target,
    baseline_items,
    check_feature_mask,
    check_initial,
    check_inputs,
    pass_scores,
    positive,
    target_rows,
)

Built = Callable[[int, torch.Tensor], None]
"""``(coalition index, its input (1, C, *spatial))``: called for every input
:func:`coalition_scores` builds, before the model sees it (LIME's similarity kernel
compares the perturbed input with the original)."""


class RandomModelError(InvalidModelError):
    """The model drew random numbers from torch's CPU generator during the passes.

    A sampling method's draws would then interleave with the model's differently than
    in Captum, whose perturbations are drawn between its passes: the results would not
    be Captum's. Put the model in eval mode, or call Captum's class.
    """


class _RandomGuard:
    """Notices a change of torch's CPU random state between its creation and a
    :meth:`check` (the passes draw nothing themselves)."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.state = torch.get_rng_state()

    def check(self) -> None:
        if not torch.equal(torch.get_rng_state(), self.state):
            raise RandomModelError(
                f"{self.who}: the model drew random numbers during its forward passes "
                "(dropout or noise in training mode?), so the method's own draws would not "
                "be the ones Captum makes for this seed. Call model.eval() first, or use "
                "Captum's class directly."
            )


# -- arguments -------------------------------------------------------------------------


def _row(mask: torch.Tensor, item: int) -> int:
    """The mask row of ``item`` (one row for every item, or one each)."""
    return 0 if mask.shape[0] == 1 else item


def _plane(t: torch.Tensor) -> torch.Tensor:
    """Items ``(N, C, *spatial)`` as ``(N, C, elements)`` (a view, in either layout)."""
    return t.view(t.shape[0], t.shape[1], -1)


# -- Shapley value sampling ------------------------------------------------------------


@dataclass
class _Features:
    """One mask row's features ``0 .. count - 1`` (Captum's ids: the mask's maximum
    plus one, for every row): ``inverse`` maps each element of the row
    (``(C or 1) * elements``) to its feature, or to ``count`` for a negative id (never
    added: it stays at the baseline); the elements of feature ``f`` are
    ``order[a:b]`` for ``(a, b) = bounds[f]``; ``present[f]``: the row has it."""

    inverse: torch.Tensor
    order: torch.Tensor
    bounds: list[tuple[int, int]]
    present: list[bool]


def _features(row: torch.Tensor, count: int) -> _Features:
    ids = row.reshape(-1)
    inverse = torch.where(ids < 0, count, ids)
    order = torch.argsort(inverse, stable=True)
    sizes = torch.bincount(inverse, minlength=count + 1).tolist()
    ends = list(_cumulative(sizes))
    bounds = list(zip([0, *ends[:-1]], ends, strict=True))
    return _Features(inverse, order, bounds, [n > 0 for n in sizes[:count]])


def _cumulative(sizes: Sequence[int]) -> list[int]:
    total, out = 0, []
    for n in sizes:
        total += n
        out.append(total)
    return out


class _Orders:
    """The buffer of Shapley value sampling's passes. A work entry ``(order, step)`` is
    the input with the first ``step + 1`` features of ``chains[order]`` kept from the
    order's item (``owners[order]``) and every other element at its baseline (step -1:
    the baseline itself). Slot ``j`` of a pass takes the pass's entry ``j`` and
    remembers it: an entry that is a later step of the order the slot holds only gets
    the added features' elements from the item (when they are fewer than half the
    item's elements); other slots are built whole, one ``where`` per run of consecutive
    slots of one order."""

    def __init__(
        self,
        x: torch.Tensor,
        base: torch.Tensor,
        mask: torch.Tensor,
        rows: list[_Features],
        chains: list[list[int]],
        owners: list[int],
    ) -> None:
        self.x, self.base, self.mask, self.rows = x, base, mask, rows
        self.chains, self.owners = chains, owners
        count = len(rows[0].present)
        rank = torch.full((max(1, len(chains)), count + 1), count + 1, dtype=torch.long)
        for c, chain in enumerate(chains):
            if chain:
                rank[c, torch.tensor(chain)] = torch.arange(len(chain))
        self.rank = rank.to(x.device)  # a feature's step in each order; never: count + 1
        self.buffer = PassBuffer(x[0])
        self.held: list[tuple[int, int] | None] = []
        self.elements = math.prod(mask.shape[1:])

    def build(self, entries: Sequence[tuple[int, int]], channels_last: bool) -> torch.Tensor:
        """The pass's inputs: entry ``j`` (order, step) in slot ``j``."""
        n = len(entries)
        data = self.buffer.take(n, channels_last, keep=True)  # slots keep what they hold
        self.held += [None] * (n - len(self.held))
        added: list[tuple[int, int, int, int]] = []  # (slot, order, first, last step)
        fresh: list[int] = []
        for j, (c, k) in enumerate(entries):
            held = self.held[j]
            if held == (c, k):
                continue
            item = self.owners[c]
            row = self.rows[_row(self.mask, item)]
            if held is not None and held[0] == c and held[1] < k:
                chain = self.chains[c]
                size = sum(row.bounds[f][1] - row.bounds[f][0] for f in chain[held[1] + 1 : k + 1])
                if 2 * size < self.elements:
                    added.append((j, c, held[1] + 1, k))
                    self.held[j] = (c, k)
                    continue
            fresh.append(j)
            self.held[j] = (c, k)
        self._fresh(data, entries, fresh)
        self._add(data, added)
        return data[:n]

    def _fresh(
        self, data: torch.Tensor, entries: Sequence[tuple[int, int]], slots: list[int]
    ) -> None:
        """Build ``slots`` whole: one ``where`` per run of consecutive slots of one
        order (an element comes from the item when its feature's step is reached)."""
        start = 0
        while start < len(slots):
            stop = start + 1
            c = entries[slots[start]][0]
            while (
                stop < len(slots)
                and slots[stop] == slots[stop - 1] + 1
                and entries[slots[stop]][0] == c
            ):
                stop += 1
            a, b = slots[start], slots[stop - 1] + 1
            item = self.owners[c]
            row = self.rows[_row(self.mask, item)]
            steps = device_index([k for _, k in entries[a:b]], self.x.device)
            reached = self.rank[c][row.inverse].unsqueeze(0) <= steps.unsqueeze(1)
            keep = reached.view(b - a, *self.mask.shape[1:])
            base = self.base[item if self.base.shape[0] > 1 else 0]
            torch.where(keep, self.x[item], base, out=data[a:b])
            start = stop

    def _add(self, data: torch.Tensor, added: list[tuple[int, int, int, int]]) -> None:
        """Copy the added features' elements from the items into their slots, all
        slots of a pass in one indexed copy."""
        if not added:
            return
        slots, items, parts, lengths = [], [], [], []
        for j, c, first, last in added:
            item = self.owners[c]
            row = self.rows[_row(self.mask, item)]
            for f in self.chains[c][first : last + 1]:
                a, b = row.bounds[f]
                parts.append(row.order[a:b])
                lengths.append(b - a)
                slots.append(j)
                items.append(item)
        device = self.x.device
        pos = torch.cat(parts)  # positions in the mask row: (channel or 0) * E + e
        # repeated on the host, where the counts are (on the device the output's size
        # would be read back)
        k = device_index(np.repeat(slots, lengths), device)
        i = device_index(np.repeat(items, lengths), device)
        dst, src = _plane(data), _plane(self.x)
        e = dst.shape[2]
        if self.mask.shape[1] == 1:  # every channel of an element moves together
            dst[k, :, pos] = src[i, :, pos]
        else:
            ch, spot = pos // e, pos % e
            dst[k, ch, spot] = src[i, ch, spot]


def shapley_value_sampling(
    model: Model,
    inputs: torch.Tensor,
    target: Target,
    *,
    feature_mask: torch.Tensor,
    n_samples: int,
    baselines: Baseline = None,
    batch_size: int,
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Shapley value sampling maps ``(B, C, *spatial)`` (float32, as Captum returns them)
    equal to Captum 0.9's ``ShapleyValueSampling`` with the same seed.

    The features are numbered as Captum does, ``0 .. max id`` over the whole mask, and
    ``n_samples`` orders are drawn as Captum draws them (``torch.randperm`` of that many
    features, one per sample, in turn), shared by every item. Along each order every
    item's features are added to its baseline one at a time (features an item lacks
    change nothing and are skipped; negative ids are never added and get 0), and each
    feature is credited with the target score change it causes; the credits are summed
    in float32 over the orders, in order, and divided by ``n_samples``, as Captum does.
    The baselines' scores ride in the first pass. A non-finite score makes the item's
    whole map NaN (Captum's masking spreads it the same way, to every element it
    multiplies by zero).

    ``feature_mask``: ids broadcastable to the inputs with the same number of
    dimensions (``(B or 1, C or 1, *spatial)``). ``batch_size``: the most inputs per
    pass (Captum's ``perturbations_per_eval`` times the batch). The model must draw no
    random numbers from torch's CPU generator (:class:`RandomModelError`).
    ``initial``: the ``(B,)`` target scores of the inputs themselves when the caller has
    them (the prediction pass's). An order's last step adds the item's last feature, so
    where no element of the item has a negative id it is the input itself: its score is
    taken from ``initial`` instead of a pass (ResNet-50 at 64 px, 16 features, 2
    samples: 31 inputs run instead of 33, in one pass after the prediction pass).
    """
    who = "Shapley value sampling"
    x = check_inputs(inputs, who)
    batch_size = positive(batch_size, "batch_size", who)
    n_samples = positive(n_samples, "n_samples", who)
    mask = check_feature_mask(feature_mask, x, who)
    b, device = x.shape[0], x.device
    targets = target_rows(target, b, device, who)
    base = baseline_items(baselines, x, who)
    count = int(feature_mask.max()) + 1 if feature_mask.numel() else 0
    count = max(count, 0)
    rows = [_features(row, count) for row in mask]
    # Captum's draws, in its order: one permutation of every feature per sample
    orders = [torch.randperm(count).tolist() for _ in range(n_samples)]
    guard = _RandomGuard(who)
    # order item * n_samples + s: the features of the item in permutation s
    chains, owners = [], []
    for item in range(b):
        present = rows[_row(mask, item)].present
        for perm in orders:
            chains.append([f for f in perm if present[f]])
            owners.append(item)
    # the work: every baseline (step -1 of the item's first order), then the orders
    # (an order's last step is the item itself where ``initial`` holds its score)
    entries = [(item * n_samples, -1) for item in range(b)]
    whole = [bool((row >= 0).all()) for row in mask]
    known: list[tuple[int, int]] = []  # (position among all steps, item)
    position = b
    for c, chain in enumerate(chains):
        steps = len(chain)
        last = initial is not None and steps > 0 and whole[_row(mask, owners[c])]
        entries += [(c, k) for k in range(steps - 1 if last else steps)]
        if last:
            known.append((position + steps - 1, owners[c]))
        position += steps
    check_initial(initial, b, who)
    entry_items = torch.tensor([owners[c] for c, _ in entries], device=device)
    buffer = _Orders(x, base, mask, rows, chains, owners)

    def chunk(start: int, stop: int, channels_last: bool) -> torch.Tensor:
        batch = buffer.build(entries[start:stop], channels_last)
        picked = targets[entry_items[start:stop]] if targets is not None else None
        scores = pass_scores(model, batch, picked, who)
        guard.check()
        return scores

    with torch.no_grad():
        scores = method_passes(len(entries), chunk, batch_size, x[:1], kind="forward")
        if known and initial is not None:
            scores = _with_known(scores, known, position, initial)
        total = torch.zeros((b, count + 1), dtype=torch.float32, device=device)
        broken = torch.zeros(b, dtype=torch.bool, device=device)
        offset = b
        for item in range(b):
            steps = len(chains[item * n_samples])
            if not steps:
                continue
            chain_scores = scores[offset : offset + n_samples * steps].view(n_samples, steps)
            offset += n_samples * steps
            before = torch.cat([scores[item].expand(n_samples, 1), chain_scores[:, :-1]], 1)
            diffs = chain_scores - before
            broken[item] = ~torch.isfinite(diffs).all()
            for s in range(n_samples):  # Captum's sum: over the orders, in order
                index = torch.tensor(chains[item * n_samples + s], device=device)
                total[item, index] += diffs[s]
        total[:, count] = 0  # negative ids: never added
        total[broken] = math.nan
        values = total / n_samples
        inverse = torch.stack([row.inverse for row in rows]).expand(b, -1)
        out = values.gather(1, inverse).view(b, *mask.shape[1:])
    return out.expand(x.shape).contiguous()


def _with_known(
    run: torch.Tensor, known: list[tuple[int, int]], size: int, initial: torch.Tensor
) -> torch.Tensor:
    """Every step's score: ``run`` in order at the positions not ``known``, and each
    known position's item's score from ``initial``."""
    device = run.device
    at = torch.tensor([p for p, _ in known], device=device)
    keep = torch.ones(size, dtype=torch.bool, device=device)
    keep[at] = False
    out = torch.empty(size, dtype=run.dtype, device=device)
    out[keep] = run
    items = torch.tensor([i for _, i in known], device=initial.device)
    out[at] = initial[items].to(device=device, dtype=run.dtype)
    return out


# -- LIME and KernelSHAP ---------------------------------------------------------------


def coalition_scores(
    model: Model,
    inputs: torch.Tensor,
    target: Target,
    *,
    feature_mask: torch.Tensor,
    coalitions: torch.Tensor,
    items: Sequence[int] | None = None,
    baselines: Baseline = None,
    batch_size: int,
    built: Built | None = None,
) -> torch.Tensor:
    """The ``(n,)`` target scores of ``n`` coalitions (LIME's and KernelSHAP's
    interpretable samples).

    ``coalitions``: ``(n, F)``, nonzero where feature ``f`` keeps the item's elements
    (zero: the baseline's), as Captum's ``default_from_interp_rep_transform`` builds the
    input; ``feature_mask`` holds ids ``0 .. F - 1`` (``(B or 1, C or 1, *spatial)``).
    ``items``: the item of each coalition (default: every one of item 0, for a batch
    of one). Each pass is built in one reused buffer, one ``where`` per run of
    coalitions of one item; ``built`` sees every input as it is built. ``batch_size``:
    the most inputs per pass (Captum's ``perturbations_per_eval``). The model must draw
    no random numbers from torch's CPU generator (:class:`RandomModelError`).
    """
    who = "Coalition scores"
    x = check_inputs(inputs, who)
    batch_size = positive(batch_size, "batch_size", who)
    mask = check_feature_mask(feature_mask, x, who)
    b, device = x.shape[0], x.device
    if not isinstance(coalitions, torch.Tensor) or coalitions.ndim != 2:
        raise InvalidParamsError(f"{who}: coalitions must be an (n, features) tensor.")
    n, count = coalitions.shape
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= count):
        raise InvalidParamsError(
            f"{who}: the feature mask's ids must lie in 0 .. {count - 1} (the coalitions' "
            f"{count} features), got {int(mask.min())} .. {int(mask.max())}."
        )
    owners = list(items) if items is not None else [0] * n
    if len(owners) != n or any(not 0 <= i < b for i in owners):
        raise InvalidParamsError(
            f"{who}: items must name an item (0 .. {b - 1}) for each of the {n} coalitions."
        )
    targets = target_rows(target, b, device, who)
    base = baseline_items(baselines, x, who)
    keep_all = coalitions.to(device) != 0
    flat = mask.reshape(mask.shape[0], -1)
    owner_tensor = torch.tensor(owners, device=device, dtype=torch.long)
    guard = _RandomGuard(who)
    buffer = PassBuffer(x[0])

    def chunk(start: int, stop: int, channels_last: bool) -> torch.Tensor:
        data = buffer.take(stop - start, channels_last)
        a = start
        while a < stop:  # one where per run of one item's coalitions
            item = owners[a]
            z = a + 1
            while z < stop and owners[z] == item:
                z += 1
            keep = keep_all[a:z][:, flat[_row(mask, item)]].view(z - a, *mask.shape[1:])
            other = base[item if base.shape[0] > 1 else 0]
            torch.where(keep, x[item], other, out=data[a - start : z - start])
            a = z
        if built is not None:
            for j in range(start, stop):
                built(j, data[j - start : j - start + 1])
        picked = targets[owner_tensor[start:stop]] if targets is not None else None
        scores = pass_scores(model, data[: stop - start], picked, who)
        guard.check()
        return scores

    with torch.no_grad():
        if not n:
            return torch.zeros(0, device=device)
        return method_passes(n, chunk, batch_size, x[:1], kind="forward")


def feature_values(
    values: torch.Tensor, feature_mask: torch.Tensor, inputs: torch.Tensor
) -> torch.Tensor:
    """Maps ``(B, C, *spatial)`` (float32) giving every element its feature's value.

    ``values``: ``(B, F)`` per item (a surrogate's coefficients), ``feature_mask``: ids
    ``0 .. F - 1`` as in :func:`coalition_scores`. Equals Captum's
    ``Lime._convert_output_shape`` (``sum over f of value_f * (mask == f)`` in float32),
    including its NaN where a value is not finite.
    """
    who = "Feature values"
    x = check_inputs(inputs, who)
    mask = check_feature_mask(feature_mask, x, who)
    b = x.shape[0]
    if values.ndim != 2 or values.shape[0] != b:
        raise InvalidParamsError(
            f"{who}: values must be (B, features) for {b} items, got {tuple(values.shape)}."
        )
    count = values.shape[1]
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= count):
        raise InvalidParamsError(f"{who}: the feature mask's ids must lie in 0 .. {count - 1}.")
    maps = []
    for item in range(b):
        ids = mask[_row(mask, item)]
        row = values[item].to(x.device)
        if bool(torch.isfinite(row).all()):
            maps.append(row.float()[ids])
        else:  # Captum's sum, whose zero products of a non-finite value are NaN
            out = torch.zeros(ids.shape, dtype=torch.float32, device=x.device)
            for f in range(count):
                out += row[f].item() * (ids == f).float()
            maps.append(out)
    return torch.stack(maps).expand(x.shape).contiguous()

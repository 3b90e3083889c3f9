"""RISE (Petsiuk et al., https://arxiv.org/abs/1806.07421), N-dimensional and batched.

Random binary grids of ``cells`` cells per side are up-sampled (bilinear in 2D,
trilinear in 3D) with one cell of reflection padding and cropped at a random shift
of less than a cell, as in the paper and TorchRay. The paper's saliency of an item is
``sum_m P(target | x * m) * m / (N * p)``, ``P`` the target's softmax probability for a
classifier and, by default, its raw score for a segmentation model (``scores``: a
softmax of class scores summed over every pixel is 0 or 1 whatever the mask).

By default (``centred=True``) the masks are weighted by ``P - mean(P)`` and the mean is
added back: ``sum_m (P_m - mean) * m / (N * p) + mean``, the same expected map (the
masks keep a pixel with probability ``p``), without the term ``mean * (coverage / (N *
p) - 1)``, the noise of how often each pixel happened to be kept, scaled by the mean
score. Where the mean is large against the scores' spread, that noise is the map:
with a 2D U-Net's summed scores (682 +- 18) the paper's map from 256 or 1,000 masks
correlated 0.997-0.999 with the masks' coverage and -0.10 to 0.27 with the map of 6,400 masks;
centred, 0.67-0.81 (256) and 0.94-0.96 (1,000). With a random ResNet-18's softmax
(10 classes) at 256 masks: -0.02-0.32 against 0.91-0.93. ``centred=False`` is the
paper's (and TorchRay's) sum.

All the masks are drawn at once, as low-resolution grids and shifts (a few MiB for
thousands of masks), from a generator seeded with ``mask_seed``, or torch's default
generator so ``explain(seed=...)`` is reproducible: the masks, and so the map, do not
depend on ``batch_size``, on the pass planner or on the machine. Each forward pass
up-samples only its own masks on the model's device and writes ``x * m`` into one
reused buffer (the core's ``PassBuffer``), and only the target's score is kept. The
saliency's weighted sum is made from the grids (:meth:`MaskGrids.weighted_sum`), so no
mask is up-sampled twice, after the last pass, when each item's mean score is known.
The passes go through the core's pass planner
(:func:`~esegeta_core.runtime.passes.method_passes`): at most ``batch_size`` per pass,
or the measured fastest size and layout under ``explain(auto_batch=True)``. Memory
grows with the pass, not with the number of masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from esegeta_cnnvis.params import RiseParams
from esegeta_core import Explainer, InvalidParamsError, MethodResult
from esegeta_core.explainer import Workload
from esegeta_core.feature_masks import as_size
from esegeta_core.runtime.pass_buffer import PassBuffer
from esegeta_core.runtime.passes import method_passes
from esegeta_core.targets import summed_scores
from esegeta_core.toolkit import gather_target, target_pass_scores
from esegeta_core.tracing import ModelTrace

MaskRange = Callable[[int, int], torch.Tensor]
"""``(start, stop) -> (stop - start, 1, *spatial)``: masks ``start .. stop - 1`` of the
call's."""


@dataclass(frozen=True)
class MaskGrids:
    """RISE masks as drawn: padded low-resolution grids ``(count, *cells + 2)`` and, per
    spatial dimension, PyTorch's (bi/tri)linear interpolation matrix of the padded cells
    (``(cell * (cells + 2), cells + 2)``: output position -> weights of the padded
    cells) with each mask's first row of it (``(count,)``: one padding cell plus the
    mask's random shift). :meth:`masks` up-samples any range of them, so a pass makes
    only its own masks; the grids of thousands of masks take a few MiB."""

    padded: torch.Tensor
    tables: tuple[torch.Tensor, ...]
    starts: tuple[torch.Tensor, ...]
    spatial: tuple[int, ...]

    @property
    def count(self) -> int:
        return int(self.padded.shape[0])

    def rows(self, d: int, start: int, stop: int) -> torch.Tensor:
        """``(stop - start, spatial[d], cells[d] + 2)``: the rows of dimension ``d``'s
        interpolation matrix that masks ``start .. stop - 1`` keep (their crop)."""
        table = self.tables[d]
        positions = torch.arange(self.spatial[d], device=table.device)
        return table[self.starts[d][start:stop, None] + positions]

    def masks(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(stop - start, 1, *spatial)`` masks in [0, 1]: the separable product of the
        grids with their rows, one dimension at a time, the first dimension last and
        from the left, so the masks come out contiguous (no copy of a pass's masks).
        ``out``: a contiguous tensor of that shape to write them into."""
        lead = self._lead(start, stop)
        rows = self.rows(0, start, stop)
        if out is not None:
            torch.bmm(rows, lead, out=out.view(rows.shape[0], rows.shape[1], -1))
            return out
        masks = torch.bmm(rows, lead)
        return masks.view(masks.shape[0], 1, *self.spatial)

    def weighted_sum(self, weights: torch.Tensor, numbers: int) -> torch.Tensor:
        """``(items, prod(spatial))`` float32: ``weights @ masks(0, count)`` flattened,
        for ``(items, count)`` weights, without up-sampling any mask whole. RISE's
        saliency adds up its masks weighted by their scores; made this way the masks of
        a pass are made once, not once more to accumulate them.

        Masks cropped at the same start along the first dimension share that
        dimension's interpolation rows, and there are only ``cell`` such starts (one
        padding cell plus a shift below a cell). So the grids up-sampled along the
        other dimensions (:meth:`_lead`, in :meth:`pieces` of at most ``numbers``
        numbers) are first summed per start, weighted (one product), and only those
        ``cell`` sums are up-sampled along the first dimension (one more): for 256
        masks at 48^3 in cells of 8, 45M multiply-adds instead of 226M."""
        table = self.tables[0]
        cell = table.shape[0] // table.shape[1]  # the padded table has cell rows per cell
        k0 = int(self.padded.shape[1])
        rest = math.prod(self.spatial[1:])
        items = weights.shape[0]
        # which start each mask has, as one column per start: (count, cell)
        # (no F.one_hot: it reads the starts on the host to check them)
        shifts = torch.arange(cell, device=table.device)
        starts = (self.starts[0][:, None] - cell == shifts).to(torch.float32)
        grouped = torch.zeros(items * cell, k0 * rest, device=weights.device)
        for start, stop in self.pieces(numbers):
            lead = self._lead(start, stop).float().reshape(stop - start, k0 * rest)
            # (items, cell, masks): each mask's weight under its own start
            by_start = weights[:, start:stop].float().unsqueeze(1) * starts[start:stop].T
            grouped.addmm_(by_start.reshape(items * cell, stop - start), lead)
        positions = torch.arange(self.spatial[0], device=table.device)
        # (n0, cell * K0): every start's rows side by side
        rows = table[cell + shifts[:, None] + positions]
        left = rows.permute(1, 0, 2).reshape(self.spatial[0], cell * k0).float()
        total = torch.matmul(left, grouped.view(items, cell * k0, rest))
        return total.view(items, -1)

    def pieces(self, numbers: int) -> list[tuple[int, int]]:
        """Ranges of the masks whose :meth:`weighted_sum` holds at most ``numbers``
        numbers at once (the grids up-sampled along all but the first dimension), at
        least one mask each."""
        per_mask = int(self.padded.shape[1]) * math.prod(self.spatial[1:])
        step = max(1, numbers // max(1, per_mask))
        return [(i, min(self.count, i + step)) for i in range(0, self.count, step)]

    def _lead(self, start: int, stop: int) -> torch.Tensor:
        """``(stop - start, K0, prod(spatial[1:]))``: the padded grids up-sampled along
        every dimension but the first (``K0`` its padded cells), the last dimension by a
        product from the right, each one before it by a product from the left
        broadcast over the dimensions before it: every result comes out contiguous, so
        nothing is moved or copied between the steps (2.1 against 3.6 ms for 256 masks
        at 48^3 in passes of 8, 4.9 against 54 ms at 96^3, 2 CPU threads; the same
        numbers)."""
        masks = self.padded[start:stop]
        count, cells = masks.shape[0], masks.shape[1:]
        rank = len(self.spatial)
        rows = self.rows(rank - 1, start, stop)
        out = torch.bmm(masks.reshape(count, -1, cells[-1]), rows.transpose(1, 2))
        done = self.spatial[-1]  # voxels up-sampled so far, per row of ``out``
        for d in reversed(range(1, rank - 1)):
            rows = self.rows(d, start, stop).unsqueeze(1)  # (count, 1, n_d, K_d)
            outer = math.prod(cells[:d])
            out = torch.matmul(rows, out.view(count, outer, cells[d], done))
            done *= self.spatial[d]
        return out.reshape(count, cells[0], -1)


def draw_grids(
    count: int,
    cells: tuple[int, ...],
    spatial: tuple[int, ...],
    p: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MaskGrids:
    """Draw ``count`` masks: the binary grids (a cell is on with probability ``p``),
    then one random shift per mask and dimension, in this order from ``generator``.

    The (bi/tri)linear up-sampling of each padded grid, cropped at its shift, is a
    product with the rows of each dimension's interpolation matrix (PyTorch's own
    weights, read off an identity): the same masks as ``F.interpolate`` then a crop,
    without up-sampling the margins that the crop drops (7x faster for 256 masks at
    48^3)."""
    rank = len(spatial)
    cell = [math.ceil(s / c) for s, c in zip(spatial, cells, strict=True)]
    grid = (torch.rand((count, 1, *cells), generator=generator, device=device) < p).to(dtype)
    mode = "reflect" if min(cells) > 1 else "replicate"
    padded = F.pad(grid, [1, 1] * rank, mode=mode)[:, 0]
    tables, starts = [], []
    for c, k in zip(cell, cells, strict=True):
        # (c * (k + 2), k + 2): output position -> weights of the padded cells
        eye = torch.eye(k + 2, device=device, dtype=dtype).unsqueeze(1)
        weights = F.interpolate(eye, size=c * (k + 2), mode="linear", align_corners=False)
        tables.append(weights[:, 0].T.contiguous())
        # crop at one padding cell plus a random shift in [0, cell) per dimension
        shift = torch.randint(0, c, (count,), generator=generator, device=device)
        starts.append(c + shift)
    return MaskGrids(padded, tuple(tables), tuple(starts), tuple(spatial))


def rise_masks(
    count: int,
    cells: tuple[int, ...],
    spatial: tuple[int, ...],
    p: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(count, 1, *spatial)`` smooth random masks in [0, 1] (see :func:`draw_grids`):
    a whole block of them at once."""
    grids = draw_grids(count, cells, spatial, p, generator=generator, device=device, dtype=dtype)
    return grids.masks(0, count)


def _score(out: torch.Tensor, targets: torch.Tensor, how: str) -> torch.Tensor:
    """The ``(n,)`` float32 scores of each row's target (a copy, never a view of the
    model's input)."""
    if how == "softmax":
        return gather_target(out.float().softmax(1), targets)
    picked = gather_target(out, targets).float()
    return picked.sigmoid() if how == "sigmoid" else picked


def _user_masks(masks: torch.Tensor, inputs: torch.Tensor, method: str) -> torch.Tensor:
    spatial = tuple(inputs.shape[2:])
    m = masks if masks.ndim == len(spatial) + 2 else masks.unsqueeze(1)
    if m.ndim != len(spatial) + 2 or m.shape[1] != 1 or tuple(m.shape[2:]) != spatial:
        raise InvalidParamsError(
            f"Method {method!r}: masks must be shaped (N, 1, *{spatial}) or (N, *{spatial}), "
            f"got {tuple(masks.shape)}."
        )
    return m.to(device=inputs.device, dtype=inputs.dtype)


def _slices(given: torch.Tensor) -> MaskRange:
    """Ranges of given masks."""
    return lambda start, stop: given[start:stop]


def rise_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    masks: MaskRange,
    count: int,
    how: str,
    buffer: PassBuffer,
    batch_size: int,
    grids: MaskGrids | None = None,
) -> tuple[torch.Tensor, int]:
    """The ``(B, count)`` target scores of every item under each mask, and the most
    masked inputs one pass held.

    Input ``(item, mask)`` pairs are taken item by item, the masks in order, at most
    ``batch_size`` per pass (or the planner's plan within it). A pass up-samples only
    its own masks and writes the masked inputs into ``buffer``: for one-channel inputs
    (most volumes) drawn ``grids`` up-sample straight into the buffer, multiplied by
    the input there (``m * x``, the same numbers as ``x * m``), without a pass's masks
    written and read again."""
    b = inputs.shape[0]
    most = 1
    into = grids if inputs.shape[1] == 1 else None

    def chunk(start: int, stop: int, channels_last: bool) -> torch.Tensor:
        nonlocal most
        batch = buffer.take(stop - start, channels_last)
        most = max(most, stop - start)
        pair = start
        while pair < stop:
            item, first = divmod(pair, count)
            last = min(count, first + stop - pair)
            slots = batch[pair - start : pair - start + last - first]
            if into is not None and slots.is_contiguous():
                into.masks(first, last, out=slots).mul_(inputs[item])
            else:
                torch.mul(inputs[item], masks(first, last), out=slots)
            pair += last - first
        items = torch.arange(start, stop, device=inputs.device) // count
        if how == "softmax":  # every class's score is needed
            return _score(model(batch), targets[items], how)
        picked = target_pass_scores(model, batch, targets[items]).float()
        return picked.sigmoid() if how == "sigmoid" else picked

    scores = method_passes(b * count, chunk, batch_size, inputs[:1], kind="forward")
    return scores.view(b, count), most


SUM_NUMBERS = 1 << 22
"""Numbers (16 MiB of float32) that a piece of the saliency's weighted sum may hold at
once, when a pass's masks hold fewer: pieces of a few masks would cost more products."""


class Rise(Explainer[RiseParams]):
    """RISE: saliency as the average of random masks weighted by the target's score,
    centred on the item's mean score (the paper's expected map, without the noise of the
    masks' coverage)."""

    name = "cnnvis.rise"
    count_params = ("num_masks",)
    forward_only = True
    family = "perturbation"
    output = "input"
    ranks = (2, 3)
    cost = "high"
    paper = "https://arxiv.org/abs/1806.07421"
    deterministic = False
    batch_params = ("batch_size",)
    # the masked inputs are made per pass, in a reused buffer (method_passes)
    pass_params = ("batch_size",)
    # whole masked inputs per pass: smaller on the CPU for big inputs (the masks do
    # not depend on it)
    pass_unit = "pass"
    own_passes = True

    def workload(
        self, params: RiseParams, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """One pass per mask and item, at most ``batch_size`` masked inputs per pass; the
        masks of a pass are made at the input's size, every mask's padded grid is kept,
        and pieces of the grids up-sampled along all but the first dimension (no larger
        than a pass's masks or :data:`SUM_NUMBERS`) accumulate the map, summed per crop
        start along the first dimension (a cell's worth of them per item)."""
        total = params.num_masks if params.masks is None else int(params.masks.shape[0])
        together = min(params.batch_size, total)
        spatial = shape[2:]
        grids = piece = grouped = 0
        if params.masks is None:
            cells = as_size(params.cells, len(spatial), "cells", self.name)
            grids = total * math.prod(c + 2 for c in cells) * 4
            lead = (cells[0] + 2) * math.prod(spatial[1:])
            piece = min(total * lead, SUM_NUMBERS)
            grouped = shape[0] * -(-spatial[0] // cells[0]) * lead * 4
        return Workload(
            passes=total,
            inputs=together,
            extra=max(2 * together * math.prod(spatial), piece) * 4 + grids + grouped,
            counts=("num_masks",) if params.masks is None else ("masks",),
            fix="" if params.masks is None else "give fewer masks",
            batch=("batch_size",),
        )

    def check_model(self, model: nn.Module, params: RiseParams, trace: ModelTrace | None) -> None:
        """Refuse a squashed score of a segmentation's summed class scores (see
        :func:`~esegeta_core.targets.summed_scores`): every masked input would score 0
        or 1, and the map come out empty or flat."""
        if params.scores in ("softmax", "sigmoid") and summed_scores(model):
            raise InvalidParamsError(
                f"Method {self.name!r} (plugin 'cnnvis'): scores={params.scores!r} squashes "
                "a segmentation model's class scores, sums of logits over every pixel, to "
                "0 or 1 whatever the mask, so the map would come out empty or flat. Use "
                "scores='raw' (what the default scores='auto' takes for segmentation)."
            )

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: RiseParams
    ) -> MethodResult:
        """The saliency, with ``extras["scores"]``: how the masked inputs were scored
        (what ``scores='auto'`` chose)."""
        how = params.scores
        if how == "auto":
            how = "raw" if summed_scores(model) else "softmax"
        spatial = tuple(inputs.shape[2:])
        given = None if params.masks is None else _user_masks(params.masks, inputs, self.name)
        total = params.num_masks if given is None else given.shape[0]
        cells = as_size(params.cells, len(spatial), "cells", self.name)
        generator = None
        if given is None and params.mask_seed is not None:
            generator = torch.Generator(device=inputs.device).manual_seed(params.mask_seed)
        targets = target.to(inputs.device).long()
        with torch.no_grad():
            grids: MaskGrids | None = None
            if given is None:  # every mask drawn at once, whatever the passes
                grids = draw_grids(
                    total,
                    cells,
                    spatial,
                    params.p,
                    generator=generator,
                    device=inputs.device,
                    dtype=inputs.dtype,
                )
                masks: MaskRange = grids.masks
            else:
                masks = _slices(given)
            buffer = PassBuffer(inputs[0])
            scores, most = rise_scores(
                model, inputs, targets, masks, total, how, buffer, params.batch_size, grids
            )
            del buffer
            # centred: each item's scores less their mean, the mean added back below
            mean = scores.mean(1, keepdim=True)
            weights = scores - mean if params.centred else scores
            saliency = torch.zeros(inputs.shape[0], math.prod(spatial), device=inputs.device)
            if grids is not None:  # from the grids, in pieces no larger than a pass
                numbers = max(most * math.prod(spatial), SUM_NUMBERS)
                saliency += grids.weighted_sum(weights, numbers)
            else:  # given masks: a pass's worth at a time
                for first in range(0, total, most):
                    last = min(total, first + most)
                    flat = masks(first, last).reshape(last - first, -1).float()
                    saliency += weights[:, first:last] @ flat
        saliency /= total * params.p
        if params.centred:
            # the paper's sum is mean * coverage / (N p) here: its expectation
            saliency += mean
        shape = (inputs.shape[0], 1, *spatial)
        saliency_map = saliency.view(shape).to(inputs.dtype).expand(inputs.shape).contiguous()
        return MethodResult(saliency_map, scores=how)


RISE_METHODS: list[type[Explainer]] = [Rise]

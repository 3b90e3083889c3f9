"""Targets and segmentation scores: what the methods explain.

Methods see a model that returns ``B x classes`` scores and a ``(B,)`` target. For a
segmentation model the core wraps it in a :class:`ScoreModel` whose reduction turns
the ``B x classes x spatial`` output into per-class scores, differentiably:

- :class:`MultiClassScores`: class c's score is the sum of its logits over the pixels
  or voxels where c wins the argmax (the approach of Captum's segmentation tutorial),
  all spatial dimensions reduced, 2D and 3D.
- :class:`ThresholdScores`: for one-channel (sigmoid) outputs: foreground = sum of the
  logits above the threshold, background = sum of the negated logits below it. The
  mask carries no gradient but the score keeps the logits' gradient (the original
  counted voxels, which gives gradient methods nothing to work with).
- :class:`RegionScores`: class c's logits summed inside a user mask, the same as
  pytorch-grad-cam's ``SemanticSegmentationTarget``; use it through :class:`Region`.
- any callable mapping the model output to ``B x classes`` scores.

Every model the methods see goes through :class:`ScoreModel`, which first takes the
logits tensor out of whatever the model returns (a dict, a tuple, an object with
``.logits``: :mod:`esegeta_core.outputs`). The built-in reductions give per-pixel
scores that a :class:`~esegeta_core.sites.Sum` module adds up, so relevance rules
split each class score among its pixels in proportion to their logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from esegeta_core.errors import (
    InvalidModelError,
    InvalidParamsError,
    InvalidTargetError,
    did_you_mean,
)
from esegeta_core.outputs import OutputSelector, select_output
from esegeta_core.sites import Sum

Task = Literal["classification", "segmentation"]
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Region:
    """Explain class ``label`` inside ``mask`` only (segmentation).

    ``mask`` is boolean or 0/1, shaped like the output's spatial dimensions, with an
    optional leading batch (and channel) dimension.
    """

    label: int
    mask: torch.Tensor


TargetLike = int | Sequence[int] | torch.Tensor | Region | None


class ScoreModel(nn.Module):
    """Wraps the user's model so that it returns ``B x classes`` scores.

    The user's model is held as the child ``model``; nothing on it is changed.
    ``output`` selects the logits in what the model returns (see
    :func:`~esegeta_core.outputs.select_output`); ``reduce`` (segmentation) turns them
    into per-class scores, through the ``total`` :class:`~esegeta_core.sites.Sum`
    module when it gives per-pixel scores (``pixel_scores``).
    """

    def __init__(
        self, model: nn.Module, reduce: ScoreFn | None = None, output: OutputSelector = None
    ) -> None:
        super().__init__()
        self.model = model
        self.reduce = reduce
        self.output = output
        self.total = Sum(-1) if hasattr(reduce, "pixel_scores") else None

    def forward(self, *args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        out = select_output(self.model(*args, **kwargs), self.output)
        if self.reduce is None:
            return out
        if self.total is not None:
            sums = getattr(self.reduce, "class_sums", None)
            if sums is not None and not torch.is_grad_enabled() and not self._total_hooked():
                found = sums(out)  # the same sums without the per-pixel scores
                if found is not None:
                    return found
            return self.total(self.reduce.pixel_scores(out))  # type: ignore[union-attr]
        return self.reduce(out)

    def target_scores(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``(N,)``: the score of class ``classes[i]`` for input ``i``, equal to
        ``self(x)[i, classes[i]]`` but, without gradients, computing only those classes'
        scores where the reduction allows it (a segmentation's per-class sums:
        :meth:`MultiClassScores.class_scores`). Perturbation passes keep one score per
        input, so reducing every class of a large output per pass is waste."""
        fast = getattr(self.reduce, "class_scores", None)
        if fast is None or torch.is_grad_enabled() or self._hooked():
            scores = self(x)
            return scores.gather(1, classes.view(-1, 1).to(scores.device)).squeeze(1)
        return fast(select_output(self.model(x), self.output), classes)

    def _hooked(self) -> bool:
        """Whether a hook watches this module's calls (a check of the first scores,
        a relevance rule): those calls must go through ``forward``."""
        return bool(self._forward_hooks or self._forward_pre_hooks or self._total_hooked())

    def _total_hooked(self) -> bool:
        """Whether a hook watches the per-pixel sum (``total``): then it must run."""
        total = self.total
        return bool(
            (total is not None and (total._forward_hooks or total._forward_pre_hooks))
            or nn.modules.module._global_forward_hooks
            or nn.modules.module._global_forward_pre_hooks
        )


def summed_scores(model: nn.Module) -> bool:
    """Whether ``model`` is the core's segmentation wrapper with a built-in reduction
    (``multi_class``, ``threshold``, a :class:`Region`): its class scores are sums over
    every pixel or voxel, thousands of logits, which a softmax or a sigmoid squashes to
    0 or 1 whatever the input. A method that squashes its scores (RISE, LIME) takes the
    raw sums there, as the metrics' curves do; squashed, its map comes out empty or
    flat."""
    return isinstance(model, ScoreModel) and model.total is not None


FEW_CLASSES = 3
"""Most classes :meth:`MultiClassScores.class_sums` reduces class by class."""


class MultiClassScores:
    """Per class, the sum of logits where that class is the argmax (all spatial dims)."""

    name = "multi_class"

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return self.pixel_scores(out).sum(-1)

    def pixel_scores(self, out: torch.Tensor) -> torch.Tensor:
        """``(B, classes, pixels)``: each class's logits where it wins (the first class
        on ties), zero elsewhere.

        The winners come from a running maximum over the classes, not ``argmax(dim=1)``:
        PyTorch's CPU argmax over a non-innermost dimension is ~25x slower (0.32 s
        against 0.013 s on a (16, 2, 48, 48, 48) output, 10x the forward pass of a small
        3D U-Net)."""
        _check_classes(out)
        classes = out.shape[1]
        with torch.no_grad():
            best = out[:, 0]
            for k in range(1, classes):
                best = torch.maximum(best, out[:, k])
            free = torch.ones(best.shape, dtype=torch.bool, device=out.device)
            wins = []
            for k in range(classes):
                won = (out[:, k] == best) & free
                free &= ~won
                wins.append(won)
        return torch.stack([out[:, k] * wins[k] for k in range(classes)], 1).flatten(2)

    def class_sums(self, out: torch.Tensor) -> torch.Tensor | None:
        """``(B, classes)``: ``self(out)`` (the same products; summed in the same order,
        except that torch may split the sum of a single large item differently: a
        rounding difference) without building the ``(B, classes, pixels)`` scores, and
        equal to :meth:`class_scores`' entries, for outputs of at most
        :data:`FEW_CLASSES` classes (``None`` for more: each class's winners then cost a
        comparison per other class, more than the full reduction). A pass that needs no
        gradient saves three quarters of the reduction's time (0.71 ms against 2.66 ms
        for a (8, 2, 48, 48, 48) output, 2 CPU threads): see :func:`_won_sums` and
        :func:`_cache_blocks`."""
        _check_classes(out)
        classes = out.shape[1]
        if classes > FEW_CLASSES:
            return None
        flat = out.flatten(2)
        sums = torch.empty(out.shape[0], classes, dtype=out.dtype, device=out.device)
        blocks = _cache_blocks(flat)
        scratch = _scratch(flat, blocks)
        for items in blocks:
            part = flat[items]
            for k in range(classes):
                sums[items, k] = _won_sums(part, k, scratch)
        return sums

    def class_scores(self, out: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``(B,)``: the score of class ``classes[b]`` for item ``b``, equal to
        ``self(out)[b, classes[b]]`` (the same elementwise products and order of
        summation, up to rounding where torch splits one large item's sum differently:
        see :meth:`class_sums`), without the other classes' sums. Class ``k`` wins a
        pixel where its logit is above every earlier class's and at least every later
        one's (the first class on ties): for two classes one comparison, where the full
        reduction needs a dozen passes over the output (a fifth of a small 3D U-Net's
        forward pass)."""
        _check_classes(out)
        if classes.device.type != "cpu":
            return self.gathered_class_sums(out, classes)
        present = classes.unique().tolist()  # sorted: one read on the host
        if present and not 0 <= present[0] <= present[-1] < out.shape[1]:
            raise InvalidTargetError(
                f"Target classes {present} are out of range for a segmentation output "
                f"of {out.shape[1]} classes."
            )
        flat = out.flatten(2)
        if len(present) == 1:  # one class for every item (a perturbation's passes)
            return _one_class_sums(flat, present[0])
        scores = torch.empty(out.shape[0], dtype=out.dtype, device=out.device)
        for k in present:
            items = (classes == k).nonzero().squeeze(1).to(out.device)
            scores[items] = _one_class_sums(flat.index_select(0, items), k)
        return scores

    def gathered_class_sums(self, out: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """:meth:`class_scores` without reading ``classes`` on the host: for at most
        :data:`FEW_CLASSES` classes every class's sum (:meth:`class_sums`), then each
        item's; for more, each item's own class compared with every other
        (:func:`_gathered_won_sums`).
        :meth:`class_scores` takes it for classes on a GPU, where the per-class path's
        host reads (the range check, the classes present, their items) would each wait
        for the pass to end before the next is queued. A target out of range fails in
        the gather (the core checks targets on the method's first pass)."""
        sums = self.class_sums(out)
        if sums is None:
            return _gathered_won_sums(out.flatten(2), classes.to(out.device))
        return sums.gather(1, classes.view(-1, 1).to(sums.device)).squeeze(1)


def _check_classes(out: torch.Tensor) -> None:
    if out.ndim < 3 or out.shape[1] < 2:
        raise InvalidModelError(
            f"Segmentation wrapper 'multi_class' needs an output shaped "
            f"(B, classes >= 2, *spatial), got {tuple(out.shape)}. For a one-channel "
            "sigmoid output use wrapper='threshold'."
        )


CACHE_BLOCK = 1 << 18
"""Most logits (one float32 MiB) a CPU reduction takes at once, unless one item has
more (see :func:`_cache_blocks`)."""


def _cache_blocks(flat: torch.Tensor) -> list[slice]:
    """Slices of the items of ``(B, classes, pixels)`` logits, each at most
    :data:`CACHE_BLOCK` logits (at least one item) on a CPU, all of them on a GPU.

    A class's sum makes a comparison mask and a product as large as the class's logits;
    reduced a block at a time they stay in the core's cache instead of going out to
    memory and back (the two sums of a 3D U-Net pass of 8 at 48^3: 1.05 ms batched,
    0.70 ms item by item, 2 CPU threads). Each item's sum is the same either way."""
    b = flat.shape[0]
    step = b if flat.device.type != "cpu" else max(1, CACHE_BLOCK // max(1, flat[:1].numel()))
    return [slice(i, min(b, i + step)) for i in range(0, b, step)]


def _scratch(flat: torch.Tensor, blocks: list[slice]) -> torch.Tensor:
    """One class's logits' worth of ``(items, pixels)`` for the largest of ``blocks``:
    where :func:`_won_sums` writes its comparisons, reused by every block and class."""
    most = max((b.stop - b.start for b in blocks), default=0)
    return torch.empty(most, flat.shape[2], dtype=flat.dtype, device=flat.device)


def _one_class_sums(flat: torch.Tensor, k: int) -> torch.Tensor:
    """``(B,)``: each item's sum of class ``k``'s logits where it wins in ``(B,
    classes, pixels)`` logits, a cache block at a time (:func:`_cache_blocks`), the
    blocks' sums joined once at the end: written into a result by index one block at a
    time, :meth:`MultiClassScores.class_scores` took 0.80 ms for a 3D U-Net's pass of 8
    at 48^3, 0.62 ms joined."""
    blocks = _cache_blocks(flat)
    scratch = _scratch(flat, blocks)
    sums = [_won_sums(flat[block], k, scratch) for block in blocks]
    return sums[0] if len(sums) == 1 else torch.cat(sums)


def _won_sums(flat: torch.Tensor, k: int, scratch: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the sum of class ``k``'s logits where it wins in ``(B, classes,
    pixels)`` logits (the first class on ties): ``(x * wins).sum(-1)``.

    The comparisons write 1.0 and 0.0 in the logits' dtype into ``scratch``, the values
    a boolean mask takes in the product, so the sum is the same, NaN and infinite
    logits included (``nan * 0``); a CPU comparison into a boolean and its product
    with floats cost about 4x as much (29 + 49 us against 8 + 7 us for 110,592 logits,
    2 threads). The product is made in place in ``scratch`` (0.65 against 0.76 ms for
    a (16, 2, 48, 48, 48) pass, 2 threads), except where the logits need a gradient:
    then each block's comparisons and product are its own, kept for the backward pass."""
    b = flat.shape[0]
    x = flat[:, k]
    graph = x.requires_grad and torch.is_grad_enabled()
    if graph:  # the comparisons are kept for the backward pass: not in the shared scratch
        scratch = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    won: torch.Tensor | None = None
    for j in range(flat.shape[1]):
        if j != k:
            compare = torch.gt if j < k else torch.ge
            if won is None:
                won = compare(x, flat[:, j], out=scratch[:b])
            else:
                won.mul_(compare(x, flat[:, j], out=torch.empty_like(won)))
    if won is None:
        return x.sum(-1)
    if graph:
        return (x * won).sum(-1)
    return won.mul_(x).sum(-1)


def _gathered_won_sums(flat: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``(B,)``: item ``b``'s sum of class ``classes[b]``'s logits where it wins in
    ``(B, classes, pixels)`` logits (the first class on ties), as :func:`_won_sums`
    gives it for one class, with each item's class on the device: its logits gathered,
    then compared with every class's, ``>`` before its own and ``>=`` after. Memory:
    an item's pixels twice, not every class's sums."""
    b, count, pixels = flat.shape
    own = classes.view(b, 1)
    x = flat.gather(1, own.unsqueeze(2).expand(b, 1, pixels)).squeeze(1)
    won = torch.ones(x.shape, dtype=torch.bool, device=x.device)
    for j in range(count):
        other = flat[:, j]
        beats = torch.where(own > j, x > other, x >= other)
        won &= beats | (own == j)
    return (x * won).sum(-1)


class ThresholdScores:
    """Two scores (background, foreground) for one-channel outputs split at a threshold.

    ``threshold`` applies to probabilities (a float in (0, 1), or ``"otsu"`` per item);
    with ``logits=True`` (default) the output is passed through a sigmoid to find the
    mask, foreground scores the logits above it and background the negated logits
    below it; with ``logits=False`` the output already is a probability and the scores
    are ``p`` above and ``1 - p`` below.
    """

    name = "threshold"

    def __init__(self, threshold: float | Literal["otsu"] = 0.5, logits: bool = True) -> None:
        if threshold != "otsu" and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
            raise InvalidTargetError(
                f"Segmentation wrapper 'threshold': threshold must be in (0, 1) or 'otsu', "
                f"got {threshold!r}."
            )
        self.threshold = threshold
        self.logits = logits

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return self.pixel_scores(out).sum(-1)

    def pixel_scores(self, out: torch.Tensor) -> torch.Tensor:
        """``(B, 2, pixels)``: background and foreground scores per pixel."""
        if out.ndim < 3 or out.shape[1] != 1:
            raise InvalidModelError(
                f"Segmentation wrapper 'threshold' needs a one-channel output shaped "
                f"(B, 1, *spatial), got {tuple(out.shape)}. For several classes use "
                "wrapper='multi_class'."
            )
        flat = out.flatten(1)
        with torch.no_grad():
            prob = torch.sigmoid(flat) if self.logits else flat
            if self.threshold == "otsu":
                level = otsu_thresholds(prob).unsqueeze(1)
            else:
                level = torch.full_like(prob[:, :1], float(self.threshold))
            above = (prob > level).to(flat.dtype)
        below = 1.0 - above
        if self.logits:
            fg, bg = flat * above, -flat * below
        else:
            fg, bg = flat * above, (1.0 - flat) * below
        return torch.stack([bg, fg], dim=1)


class RegionScores:
    """Per class, the sum of logits inside a fixed mask."""

    name = "region"

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = torch.as_tensor(mask)
        self._ready: dict[tuple[object, ...], torch.Tensor] = {}

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return self.pixel_scores(out).sum(-1)

    def pixel_scores(self, out: torch.Tensor) -> torch.Tensor:
        """``(B, classes, pixels)``: the logits inside the mask, zero outside. The mask
        is moved, cast and checked once per device, dtype and output shape: a pass after
        the first copies nothing from the host and reads nothing back (on a GPU each
        would wait for the passes queued before it)."""
        inference = torch.is_inference_mode_enabled()
        key = (out.device, out.dtype, out.shape[0], tuple(out.shape[2:]), inference)
        mask = self._ready.get(key)
        if mask is None:
            mask = self.mask.to(device=out.device, dtype=out.dtype)
            if mask.is_inference() and not inference:
                mask = mask.clone()  # autograd cannot save an inference tensor for backward
            mask = region_mask(mask, out.shape, against="the model output")
            if len(self._ready) >= 16:  # a few pass sizes; never grows without bound
                self._ready.clear()
            self._ready[key] = mask
        return (out * mask.unsqueeze(1)).flatten(2)


def region_mask(
    mask: torch.Tensor, shape: Sequence[int], *, against: str, patched: bool = False
) -> torch.Tensor:
    """A :class:`Region` mask as ``(1 or B, *spatial)`` for a batch of ``shape``
    ``(B, C, *spatial)`` (``against`` names it in messages: the model output, or the
    input with ``patched``); raises :class:`InvalidTargetError` for a mask of another
    shape or one with no nonzero element, before anything is explained with it."""
    m = torch.as_tensor(mask)
    spatial = tuple(shape[2:])
    n = len(spatial)
    if m.ndim == n + 2 and m.shape[1] == 1:
        m = m[:, 0]
    elif m.ndim == n:
        m = m.unsqueeze(0)
    if m.ndim != n + 1 or tuple(m.shape[1:]) != spatial or m.shape[0] not in (1, shape[0]):
        where = " (with patches=, the mask must cover the whole input)" if patched else ""
        raise InvalidTargetError(
            f"Region mask shape {tuple(torch.as_tensor(mask).shape)} does not match "
            f"{against} {tuple(shape)}{where}. Pass a mask shaped like {against}'s spatial "
            "dimensions, optionally with a batch (and channel) dimension."
        )
    if not bool((m != 0).any()):
        raise InvalidTargetError(
            "Region mask is empty (no nonzero element): nothing to explain. Pass a mask "
            "that marks at least one pixel or voxel of the region."
        )
    return m


WRAPPERS: dict[str, Callable[[], ScoreFn]] = {
    "multi_class": MultiClassScores,
    "threshold": ThresholdScores,
}


def otsu_thresholds(values: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """``(B,)``: Otsu's threshold of each row of ``(B, ...)`` values, the cut that
    maximises between-class variance over a histogram of ``bins`` bins from the row's
    least to its greatest value (a row of one value: that value).

    Every row at once and on the values' device, with nothing read back to the host:
    the wrapper computes it on every pass (on a GPU a read per row would wait for the
    pass). The bins are ``torch.histc``'s, ``(v - lo) / (hi - lo) * bins`` rounded
    down, the greatest value in the last."""
    v = values.detach().float().flatten(1)
    lo = v.amin(1, keepdim=True)
    hi = v.amax(1, keepdim=True)
    span = hi - lo
    flat = span <= 0
    position = ((v - lo) / torch.where(flat, 1.0, span) * bins).long().clamp_(0, bins - 1)
    hist = torch.zeros(v.shape[0], bins, device=v.device, dtype=v.dtype)
    hist.scatter_add_(1, position, torch.ones_like(v))
    centers = lo + (torch.arange(bins, device=v.device) + 0.5) * span / bins
    weighted = hist * centers
    w0 = hist.cumsum(1)
    w1 = hist.sum(1, keepdim=True) - w0
    m0 = weighted.cumsum(1) / w0.clamp_min(1)
    m1 = (weighted.sum(1, keepdim=True) - weighted.cumsum(1)) / w1.clamp_min(1)
    between = w0 * w1 * (m0 - m1) ** 2
    best = centers.gather(1, between.argmax(1, keepdim=True))
    return torch.where(flat, lo, best).squeeze(1)


def score_model(
    model: nn.Module,
    task: Task,
    wrapper: str | ScoreFn | None,
    target: TargetLike,
    output: OutputSelector = None,
) -> ScoreModel:
    """The model the methods see: a :class:`ScoreModel` around the user's model that
    returns ``B x classes`` scores. A ``task`` or ``wrapper`` that is not one of the
    valid values raises :class:`InvalidParamsError` listing them."""
    check_scoring(task, wrapper)
    if isinstance(target, Region):
        if task != "segmentation":
            raise InvalidTargetError(
                "A Region target explains part of a segmentation output: pass "
                "task='segmentation' with it."
            )
        if wrapper is not None:
            raise InvalidTargetError(
                "A Region target defines its own scores; do not pass a wrapper with it."
            )
        return ScoreModel(model, RegionScores(target.mask), output)
    if wrapper is None:
        if task == "classification":
            return ScoreModel(model, None, output)
        wrapper = "multi_class"
    if isinstance(wrapper, str):
        return ScoreModel(model, WRAPPERS[wrapper](), output)
    return ScoreModel(model, wrapper, output)


TASKS = ("classification", "segmentation")


def check_scoring(task: object, wrapper: object) -> None:
    """Raise :class:`InvalidParamsError` (a ``ValueError``) for a ``task`` other than
    :data:`TASKS`, or a ``wrapper`` that is neither a name in :data:`WRAPPERS`, a
    callable nor None, with a did-you-mean for a misspelt name."""
    if not isinstance(task, str) or task not in TASKS:
        hint = did_you_mean(task, TASKS) if isinstance(task, str) else ""
        raise InvalidParamsError(
            f"task must be 'classification' or 'segmentation', got {task!r}.{hint}"
        )
    if wrapper is None or callable(wrapper):
        return
    if isinstance(wrapper, str):
        if wrapper not in WRAPPERS:
            raise InvalidParamsError(
                f"Unknown segmentation wrapper {wrapper!r}.{did_you_mean(wrapper, WRAPPERS)} "
                f"Choose one of {', '.join(map(repr, WRAPPERS))}, a Region target, or pass a "
                "callable mapping the output to (B, classes) scores."
            )
        return
    raise InvalidParamsError(
        f"wrapper must be a name ({', '.join(map(repr, WRAPPERS))}), a callable or None, got "
        f"{type(wrapper).__name__} {wrapper!r}."
    )


def normalise_target(
    target: TargetLike, scores: torch.Tensor, *, summed: bool = False
) -> torch.Tensor:
    """A ``(B,)`` long tensor of classes on the scores' device; ``None`` = predicted
    (:func:`predicted_classes`; ``summed``: the scores are a segmentation wrapper's
    sums, see :func:`summed_scores`)."""
    batch, classes = scores.shape
    if target is None:
        return predicted_classes(scores, summed=summed)
    return target_classes(target, batch, scores.device, classes)


def predicted_classes(scores: torch.Tensor, *, summed: bool = False) -> torch.Tensor:
    """Each item's predicted class: its highest score. A segmentation wrapper's class
    score sums the logits of the pixels the class wins, so a class that wins no pixel
    scores exactly 0, above every class that wins only with negative logits: with
    ``summed``, a class that wins no pixel is never the prediction while another wins
    some (the argmax picked one on a random SegFormer, and every map of it was zero)."""
    if not summed:
        return scores.argmax(dim=1)
    present = scores != 0
    best = scores.masked_fill(~present, float("-inf")).argmax(dim=1)
    return torch.where(present.any(dim=1), best, scores.argmax(dim=1))


def target_classes(
    target: TargetLike, batch: int, device: torch.device, classes: int | None = None
) -> torch.Tensor:
    """A ``(B,)`` long tensor from an explicit target (not ``None``), checked against
    ``classes`` when known (else :func:`check_target_range` does it on the first scores)."""
    if isinstance(target, Region):
        target = target.label
    if target is None:
        raise InvalidTargetError("target_classes needs an explicit target, got None.")
    if isinstance(target, bool) or (
        isinstance(target, torch.Tensor) and target.dtype in (torch.bool,)
    ):
        raise InvalidTargetError(f"Target must be class indices, got {target!r}.")
    try:
        t = torch.as_tensor(target, device=device)
    except (TypeError, ValueError) as exc:
        raise InvalidTargetError(
            f"Target must be an int, one int per item or a Region, got {target!r}."
        ) from exc
    if (t.is_floating_point() or t.is_complex()) and not bool((t == t.round()).all()):
        raise InvalidTargetError(f"Target classes must be integers, got {target!r}.")
    t = t.long()
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise InvalidTargetError(
            f"Target must be one int or one class per item ({batch}), got shape {tuple(t.shape)}."
        )
    if classes is not None:
        check_target_range(t, classes)
    return t.clone()


def check_target_range(t: torch.Tensor, classes: int, method: str | None = None) -> None:
    """Raise :class:`InvalidTargetError` for a class outside ``0..classes-1``."""
    bad = (t < 0) | (t >= classes)
    if bool(bad.any()):
        who = f"Method {method!r}: t" if method else "T"
        raise InvalidTargetError(
            f"{who}arget class {t[bad].tolist()} out of range: the model scores {classes} "
            f"classes (0..{classes - 1})."
        )


def score_wrapper(
    task: str,
    name: str = "multi_class",
    threshold: float | Literal["otsu"] = 0.5,
    logits: bool = True,
) -> ScoreFn | None:
    """The reduction of a model's output to class scores for ``task``: ``None`` for
    classification; for segmentation :class:`MultiClassScores` (``name="multi_class"``)
    or :class:`ThresholdScores` (``name="threshold"``, with ``threshold`` and
    ``logits``), as a run config's ``task`` and ``wrapper`` say."""
    if task != "segmentation":
        return None
    if name == "threshold":
        return ThresholdScores(threshold, logits=logits)
    return MultiClassScores()

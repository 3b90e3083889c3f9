"""The arguments and scores shared by the perturbation engines.

Occlusion, feature ablation and exact Shapley values (:mod:`.ablation`), feature
permutation (:mod:`.permutation`) and the coalition methods (:mod:`.coalitions`) take
the same inputs, targets, baselines and integer feature masks, and keep only the target
score of each perturbed input. One copy of their checks lives here, so every engine
refuses the same bad argument with the same message naming the method (``who``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from esegeta_core.errors import InvalidModelError, InvalidParamsError, InvalidTargetError

Model = Callable[[torch.Tensor], torch.Tensor]
"""A model returning ``(N, classes)`` scores, or ``(N,)`` scores when no target is
given."""
Baseline = int | float | torch.Tensor | None
"""A number, or a tensor broadcastable to the inputs (``(B, ...)`` per item, ``(1, ...)``
or fewer dimensions for all items); ``None`` is zero."""
Target = int | torch.Tensor | None
"""One class for every item, a ``(B,)`` tensor of classes, or ``None`` for a model
that already returns one score per input."""


def check_inputs(inputs: torch.Tensor, who: str) -> torch.Tensor:
    """The inputs ``(B, C, ...)``, detached and contiguous, or an
    :class:`InvalidParamsError` naming ``who`` (the method)."""
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or inputs.shape[0] < 1:
        raise InvalidParamsError(
            f"{who}: inputs must be one tensor shaped (B, C, *spatial) with B >= 1."
        )
    return inputs.detach().contiguous()


def positive(value: object, name: str, who: str) -> int:
    """``value`` as an integer >= 1, or an :class:`InvalidParamsError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParamsError(f"{who}: {name} must be an integer >= 1, got {value!r}.")
    return value


def target_rows(target: Target, b: int, device: torch.device, who: str) -> torch.Tensor | None:
    """``(B,)`` class indices, or ``None`` for a model with one score per input."""
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, torch.Tensor)):
        raise InvalidTargetError(
            f"{who}: target must be an int, a (B,) tensor of classes or None, got "
            f"{type(target).__name__}."
        )
    t = torch.as_tensor(target, device=device)
    if t.is_floating_point() or t.is_complex() or not (t.numel() == 1 or t.shape == (b,)):
        raise InvalidTargetError(
            f"{who}: target must hold one class or one per item ({b}), got shape "
            f"{tuple(t.shape)} of {t.dtype}."
        )
    return t.reshape(-1).expand(b).long()


def check_initial(initial: torch.Tensor | None, b: int, who: str) -> torch.Tensor | None:
    """``initial``, the ``(B,)`` target scores of the inputs themselves a caller hands an
    engine (the prediction pass's), once it has that shape; None stays None."""
    if initial is not None and initial.shape != (b,):
        raise InvalidParamsError(
            f"{who}: the inputs' own scores have shape {tuple(initial.shape)}, expected ({b},)."
        )
    return initial


def baseline_value(baselines: Baseline, x: torch.Tensor, who: str) -> torch.Tensor | float:
    """A number, or the baseline items ``(B or 1, C, *spatial)`` in the inputs' dtype."""
    if baselines is None:
        return 0.0
    if isinstance(baselines, bool) or not isinstance(baselines, (int, float, torch.Tensor)):
        raise InvalidParamsError(
            f"{who}: baselines must be a number or a tensor, got {type(baselines).__name__}."
        )
    if not isinstance(baselines, torch.Tensor):
        return float(baselines)
    per_item = baselines.ndim == x.ndim and baselines.shape[0] == x.shape[0] > 1
    shape = tuple(x.shape) if per_item else (1, *x.shape[1:])
    try:
        base = torch.broadcast_to(baselines.to(device=x.device, dtype=x.dtype), shape)
    except RuntimeError as exc:
        raise InvalidParamsError(
            f"{who}: baselines {tuple(baselines.shape)} do not broadcast to the inputs "
            f"{tuple(x.shape)}."
        ) from exc
    return base.contiguous()


def baseline_items(baselines: Baseline, x: torch.Tensor, who: str) -> torch.Tensor:
    """The baseline as ``(B or 1, C, *spatial)`` items (a number becomes one item of that
    value)."""
    base = baseline_value(baselines, x, who)
    if isinstance(base, torch.Tensor):
        return base
    return torch.full((1, *x.shape[1:]), base, dtype=x.dtype, device=x.device)


def check_feature_mask(feature_mask: torch.Tensor, x: torch.Tensor, who: str) -> torch.Tensor:
    """The feature mask as long ids ``(B or 1, C or 1, *spatial)`` on the inputs' device,
    or an :class:`InvalidParamsError` naming ``who`` (the method)."""
    b, c = x.shape[:2]
    if not isinstance(feature_mask, torch.Tensor) or (
        feature_mask.ndim != x.ndim
        or feature_mask.shape[0] not in (1, b)
        or feature_mask.shape[1] not in (1, c)
    ):
        shape = tuple(feature_mask.shape) if isinstance(feature_mask, torch.Tensor) else None
        raise InvalidParamsError(
            f"{who}: the feature mask {shape} must be a tensor with the inputs' "
            f"{x.ndim} dimensions, a batch of 1 or {b} and a channel axis of 1 or {c}, for "
            f"inputs {tuple(x.shape)}."
        )
    if feature_mask.is_complex() or (
        feature_mask.is_floating_point() and not bool((feature_mask == feature_mask.round()).all())
    ):
        raise InvalidParamsError(f"{who}: the feature mask must hold integer ids.")
    try:
        mask = feature_mask.to(x.device).expand(*feature_mask.shape[:2], *x.shape[2:])
    except RuntimeError as exc:
        raise InvalidParamsError(
            f"{who}: the feature mask {tuple(feature_mask.shape)} does not broadcast "
            f"to the inputs {tuple(x.shape)}."
        ) from exc
    return mask.long()


def pass_scores(
    model: Model, batch: torch.Tensor, targets: torch.Tensor | None, who: str
) -> torch.Tensor:
    """The ``(n,)`` target scores of one pass of ``n`` inputs: through the model's
    ``target_scores`` when it has one (esegeta's score wrapper reduces only the targets'
    classes of a segmentation output), else picked from its whole output."""
    n = batch.shape[0]
    fast = getattr(model, "target_scores", None)
    if targets is not None and callable(fast):
        return select_scores(fast(batch, targets).unsqueeze(1), None, n, who)
    return select_scores(model(batch), targets, n, who)


def select_scores(out: object, targets: torch.Tensor | None, n: int, who: str) -> torch.Tensor:
    """The ``(n,)`` target scores in a model's output for ``n`` inputs."""
    if not isinstance(out, torch.Tensor) or out.shape[:1] != (n,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidModelError(
            f"{who}: the model returned {shape} for {n} inputs; scores shaped (N, "
            "classes) are needed (or (N,) without a target)."
        )
    if targets is None:
        if out.numel() != n:
            raise InvalidTargetError(
                f"{who}: the model returns {tuple(out.shape)} scores; give a target class."
            )
        return out.reshape(n)
    if out.ndim != 2:
        raise InvalidModelError(
            f"{who}: with a target the model must return (N, classes) scores, got "
            f"{tuple(out.shape)}."
        )
    return out.gather(1, targets.unsqueeze(1)).squeeze(1)

"""Faithfulness metrics: does the map describe what the model actually does?

- :func:`infidelity` (Yeh et al. 2019, https://arxiv.org/abs/1901.09392), Captum's
  ``captum.metrics.infidelity`` definition, ``normalize`` option included;
- :func:`max_sensitivity` (same paper), Captum's ``sensitivity_max`` definition;
- :func:`~esegeta_core.evaluation.curves.aopc`, :func:`~esegeta_core.evaluation.curves.deletion`
  and :func:`~esegeta_core.evaluation.curves.insertion` (perturbation curves) live in
  :mod:`esegeta_core.evaluation.curves` and are re-exported here.

All of them are batched over items and perturbation samples (chunks of at most
``batch_size`` inputs per forward pass), N-dimensional (2D and 3D inputs) and run on
the model's device; the model is in eval mode for the call and left as it was found.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from esegeta_core.devices import seeded
from esegeta_core.errors import InvalidParamsError
from esegeta_core.evaluation._common import (
    ExplainFn,
    Score,
    check_attributions,
    check_inputs,
    check_nonnegative,
    check_positive_int,
    check_score,
    check_target,
    chunks,
    cpu,
    eval_mode,
    run_explain,
    target_scores,
)
from esegeta_core.evaluation.curves import aopc, deletion, insertion

log = logging.getLogger(__name__)

PerturbFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]
"""A perturbation: ``inputs -> perturbed`` or ``inputs -> (perturbation, perturbed)``.

``inputs`` is a ``(N, C, *spatial)`` batch of items repeated sample-wise
(``repeat_interleave``, as Captum does). For :func:`infidelity` returning only the
perturbed inputs means ``perturbation = inputs - perturbed`` (Captum's
``infidelity_perturb_func_decorator(False)``). Draw random numbers from torch's global
generator: the metric seeds it (``seed=``) for the call only.
"""

__all__ = [
    "InfidelityResult",
    "PerturbFn",
    "SensitivityResult",
    "aopc",
    "deletion",
    "infidelity",
    "insertion",
    "max_sensitivity",
]


@dataclass(frozen=True)
class InfidelityResult:
    """``infidelity``: ``(B,)``, lower is better (0: the map predicts every change)."""

    infidelity: torch.Tensor


@dataclass(frozen=True)
class SensitivityResult:
    """``sensitivity``: ``(B,)`` largest relative change of the map; lower is better."""

    sensitivity: torch.Tensor


def infidelity(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    attributions: torch.Tensor,
    *,
    noise_std: float = 0.1,
    n_samples: int = 10,
    perturbation: PerturbFn | None = None,
    normalize: bool = True,
    score: Score = "raw",
    batch_size: int = 64,
    seed: int | None = 0,
) -> InfidelityResult:
    """Explanation infidelity: how badly ``attributions`` predict the effect of noise.

    For perturbations ``I`` of the input, the expected squared error between the
    map's prediction ``sum(I * attributions)`` and the observed change of the score
    ``f(x) - f(x - I)`` (Yeh et al. 2019, https://arxiv.org/abs/1901.09392), exactly
    as ``captum.metrics.infidelity`` computes it. With ``normalize`` the map is first
    rescaled by the least-squares factor ``beta = E[I.A (f(x)-f(x-I))] / E[(I.A)^2]``,
    so that the value does not depend on the map's scale (Captum's ``normalize``; on
    by default here, unlike Captum, because methods' maps come in arbitrary units).

    Args:
        model: returns ``(B, classes)`` scores (wrap segmentation models with
            :class:`~esegeta_core.ScoreModel`).
        inputs: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        target: ``(B,)`` class indices (or one int for all items).
        attributions: shaped like ``inputs``; a ``(B, 1, *spatial)`` map is applied to
            every channel (``I * A`` broadcast over channels).
        noise_std: standard deviation of the default perturbation, ``I ~ N(0, std^2)``
            and ``x - I`` (the original TorchEsegeta used 1e-4).
        n_samples: perturbations per item (Captum's ``n_perturb_samples``).
        perturbation: replaces the Gaussian default, see :data:`PerturbFn`.
        normalize: rescale the map optimally first (see above).
        score: ``"raw"`` (default: gradient-type maps explain the raw score, and
            Captum and the original compare raw outputs) or ``"softmax"``.
        batch_size: most perturbed inputs per forward pass.
        seed: seeds the noise for the call (``None``: torch's global generator).
    """
    metric = "infidelity"
    x = check_inputs(metric, inputs)
    a = check_attributions(metric, attributions, x)
    check_nonnegative(metric, "noise_std", noise_std)
    check_positive_int(metric, "n_samples", n_samples)
    check_positive_int(metric, "batch_size", batch_size)
    check_score(metric, score)
    if perturbation is not None and not callable(perturbation):
        raise InvalidParamsError(
            f"Metric {metric!r}: perturbation must be a callable inputs -> perturbed (or "
            f"(perturbation, perturbed)), got {type(perturbation).__name__}."
        )
    with eval_mode(model, metric) as device, seeded(seed, device), torch.no_grad():
        x, a = x.to(device), a.to(device)
        t = check_target(metric, target, x.shape[0], device)
        sums = []
        for items in chunks(x.shape[0], batch_size):
            sums.append(
                _infidelity_sums(
                    model,
                    x[items],
                    t[items],
                    a[items],
                    noise_std,
                    n_samples,
                    perturbation,
                    batch_size,
                    score,
                )
            )
        s_aa, s_af, s_ff, s_err = (torch.cat(parts) for parts in zip(*sums))
    if normalize:
        beta = s_af / torch.where(s_aa == 0, torch.ones_like(s_aa), s_aa)
        value = beta * beta * s_aa - 2 * beta * s_af + s_ff
    else:
        value = s_err
    return InfidelityResult(infidelity=cpu(value / n_samples))


def _infidelity_sums(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    a: torch.Tensor,
    noise_std: float,
    n_samples: int,
    perturbation: PerturbFn | None,
    batch_size: int,
    score: Score,
) -> tuple[torch.Tensor, ...]:
    """Per item: sums over samples of (I.A)^2, (I.A)*df, df^2 and (I.A - df)^2."""
    metric = "infidelity"
    b = x.shape[0]
    fx = target_scores(metric, model, x, t, score)
    per_chunk = max(1, min(batch_size // b, n_samples))
    zero = torch.zeros(b, device=x.device, dtype=fx.dtype)
    s_aa, s_af, s_ff, s_err = zero, zero.clone(), zero.clone(), zero.clone()
    for samples in chunks(n_samples, per_chunk):
        m = samples.stop - samples.start
        xs = x.repeat_interleave(m, dim=0)
        pert, xp = _perturb(metric, xs, perturbation, noise_std)
        df = fx.repeat_interleave(m) - target_scores(
            metric, model, xp, t.repeat_interleave(m), score
        )
        dot = (a.repeat_interleave(m, dim=0) * pert).flatten(1).sum(1).to(df.dtype)
        dot, df = dot.view(b, m), df.view(b, m)
        s_aa = s_aa + (dot * dot).sum(1)
        s_af = s_af + (dot * df).sum(1)
        s_ff = s_ff + (df * df).sum(1)
        s_err = s_err + ((dot - df) ** 2).sum(1)
    return s_aa, s_af, s_ff, s_err


def _perturb(
    metric: str, xs: torch.Tensor, perturbation: PerturbFn | None, noise_std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if perturbation is None:
        noise = torch.randn_like(xs) * noise_std
        return noise, xs - noise
    out = perturbation(xs)
    if isinstance(out, torch.Tensor):
        pert, xp = xs - out, out
    elif isinstance(out, tuple) and len(out) == 2:
        pert, xp = out
    else:
        raise InvalidParamsError(
            f"Metric {metric!r}: the perturbation function must return the perturbed "
            f"inputs or (perturbation, perturbed), got {type(out).__name__}."
        )
    if not isinstance(xp, torch.Tensor) or xp.shape != xs.shape or pert.shape != xs.shape:
        raise InvalidParamsError(
            f"Metric {metric!r}: the perturbation function must keep the shape "
            f"{tuple(xs.shape)} of its inputs."
        )
    return pert, xp


def max_sensitivity(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    explain_fn: ExplainFn,
    *,
    attributions: torch.Tensor | None = None,
    perturbation: Literal["uniform", "gaussian"] | PerturbFn = "uniform",
    radius: float = 0.02,
    n_samples: int = 10,
    norm: float | Literal["fro"] = "fro",
    batch_size: int = 64,
    seed: int | None = 0,
) -> SensitivityResult:
    """Max-sensitivity: the largest relative change of the map under small input noise.

    ``max over x' of ||expl(x') - expl(x)|| / ||expl(x)||`` over ``n_samples``
    perturbed inputs ``x'`` (Yeh et al. 2019, https://arxiv.org/abs/1901.09392), as
    ``captum.metrics.sensitivity_max`` computes it (a zero norm of ``expl(x)`` counts
    as 1). A method whose maps jump under imperceptible noise is not robust.

    Args:
        model: returns ``(B, classes)`` scores.
        inputs: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        target: ``(B,)`` class indices (or one int); repeated for the perturbed copies.
        explain_fn: ``(model, inputs, target) -> attributions``, re-run on the
            perturbed inputs (and on ``inputs`` unless ``attributions`` is given).
        attributions: ``expl(x)`` if already computed (saves one call).
        perturbation: ``"uniform"``: ``x + U(-radius, radius)`` (Captum's default);
            ``"gaussian"``: ``x - N(0, radius^2)`` (the original TorchEsegeta's, with
            radius 1e-3); or a callable ``inputs -> perturbed`` (one taking
            ``(inputs, radius)`` gets the radius, as in Captum).
        radius: the uniform half-width or the Gaussian standard deviation.
        n_samples: perturbed copies per item.
        norm: vector norm order over the flattened map (``"fro"``: 2, Captum's).
        batch_size: most inputs per ``explain_fn`` call.
        seed: seeds the noise (and a stochastic ``explain_fn``) for the call.
    """
    metric = "max_sensitivity"
    x = check_inputs(metric, inputs)
    check_nonnegative(metric, "radius", radius)
    check_positive_int(metric, "n_samples", n_samples)
    check_positive_int(metric, "batch_size", batch_size)
    order = 2.0 if norm == "fro" else norm
    if isinstance(order, bool) or not isinstance(order, (int, float)) or order <= 0:
        raise InvalidParamsError(
            f"Metric {metric!r}: norm must be 'fro' or a positive number (inf allowed), "
            f"got {norm!r}."
        )
    perturb = _sensitivity_perturbation(metric, perturbation, radius)
    with eval_mode(model, metric) as device, seeded(seed, device):
        x = x.to(device)
        t = check_target(metric, target, x.shape[0], device)
        if attributions is None:
            base = run_explain(metric, explain_fn, model, x, t, batch_size)
        else:
            base = check_attributions(metric, attributions, x).to(device)
        parts = []
        for items in chunks(x.shape[0], batch_size):
            parts.append(
                _max_sensitivity_items(
                    model,
                    x[items],
                    t[items],
                    base[items],
                    explain_fn,
                    perturb,
                    n_samples,
                    batch_size,
                    float(order),
                )
            )
    return SensitivityResult(sensitivity=cpu(torch.cat(parts)))


def _sensitivity_perturbation(
    metric: str, perturbation: object, radius: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    if perturbation == "uniform":
        return lambda xs: xs + torch.empty_like(xs).uniform_(-radius, radius)
    if perturbation == "gaussian":
        return lambda xs: xs - torch.randn_like(xs) * radius
    if callable(perturbation):
        try:
            takes_radius = len(inspect.signature(perturbation).parameters) > 1
        except (TypeError, ValueError):
            takes_radius = False
        if takes_radius:
            return lambda xs: perturbation(xs, radius)
        return perturbation  # type: ignore[return-value]
    raise InvalidParamsError(
        f"Metric {metric!r}: perturbation must be 'uniform', 'gaussian' or a callable "
        f"inputs -> perturbed, got {perturbation!r}."
    )


def _max_sensitivity_items(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    base: torch.Tensor,
    explain_fn: ExplainFn,
    perturb: Callable[[torch.Tensor], torch.Tensor],
    n_samples: int,
    batch_size: int,
    order: float,
) -> torch.Tensor:
    metric = "max_sensitivity"
    b = x.shape[0]
    base_norm = torch.linalg.vector_norm(base.flatten(1), ord=order, dim=1)
    base_norm = torch.where(base_norm == 0, torch.ones_like(base_norm), base_norm)
    best = torch.full((b,), -torch.inf, device=x.device, dtype=base.dtype)
    per_chunk = max(1, min(batch_size // b, n_samples))
    for samples in chunks(n_samples, per_chunk):
        m = samples.stop - samples.start
        with torch.no_grad():
            xp = perturb(x.repeat_interleave(m, dim=0))
        if not isinstance(xp, torch.Tensor) or xp.shape != (b * m, *x.shape[1:]):
            raise InvalidParamsError(
                f"Metric {metric!r}: the perturbation function must return a tensor of "
                f"the shape of its inputs {(b * m, *x.shape[1:])}."
            )
        expl = run_explain(metric, explain_fn, model, xp.detach(), t.repeat_interleave(m), b * m)
        if expl.shape[1] != base.shape[1]:
            raise InvalidParamsError(
                f"Metric {metric!r}: explain_fn returned {expl.shape[1]} channel(s) for the "
                f"perturbed inputs but {base.shape[1]} for the attributions."
            )
        diff = (expl - base.repeat_interleave(m, dim=0)).flatten(1)
        sens = torch.linalg.vector_norm(diff, ord=order, dim=1) / base_norm.repeat_interleave(m)
        best = torch.maximum(best, sens.view(b, m).max(1).values)
    return best

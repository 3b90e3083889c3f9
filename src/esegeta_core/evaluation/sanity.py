"""Model-parameter randomisation sanity check, cascading (Adebayo et al. 2018).

A method whose maps survive the destruction of the model's weights explains the input,
not the model (https://arxiv.org/abs/1810.03292). On a deep copy of the model, layers
are re-initialised from the output backwards, cumulatively; after each step the
explanation is recomputed and compared with the original maps by Spearman rank
correlation of absolute values and by SSIM. The user's model is never modified.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from esegeta_core.devices import seeded
from esegeta_core.errors import InvalidParamsError
from esegeta_core.evaluation._common import (
    ExplainFn,
    check_attributions,
    check_inputs,
    check_positive_int,
    check_target,
    eval_mode,
    run_explain,
    spatial_map,
)
from esegeta_core.evaluation.similarity import spearman, ssim
from esegeta_core.layers import resolve_layer, unwrap

log = logging.getLogger(__name__)

__all__ = ["RandomisationResult", "cascading_randomisation", "randomisation_layers"]

DEFAULT_THRESHOLD = 0.5
"""Spearman (absolute values) above which fully randomised maps count as unchanged.

Heuristic: in Adebayo et al.'s experiments maps of weight-sensitive methods (gradient,
Grad-CAM) fall far below it once the whole network is random, while guided backprop
and similar methods stay above it.
"""


@dataclass(frozen=True)
class RandomisationResult:
    """Per step ``s`` (layer ``layers[s]`` re-initialised, with all before it):

    ``spearman`` and ``ssim``: ``(S, B)`` similarity with the original maps;
    ``fails``: ``(B,)`` True where the similarity (``verdict_on``) after the last step
    is still above ``threshold``, i.e. the maps barely changed: the method fails the
    check; ``failed``: the same verdict for the batch mean.
    """

    layers: tuple[str, ...]
    spearman: torch.Tensor
    ssim: torch.Tensor
    fails: torch.Tensor
    threshold: float
    verdict_on: str

    @property
    def failed(self) -> bool:
        final = getattr(self, self.verdict_on)[-1]
        return bool(torch.nanmean(final) > self.threshold)


def randomisation_layers(
    model: nn.Module, layers: Literal["parameters", "children"] | Sequence[str] = "parameters"
) -> list[str]:
    """The layer paths (in the user's model) re-initialised, in order (output first).

    ``"parameters"``: every module that owns parameters, in reverse definition order;
    ``"children"``: the top-level children that hold parameters (the children of the
    only child when there is one), reversed, as the original TorchEsegeta did; a list
    of paths is taken as given.
    """
    inner = unwrap(model)
    if isinstance(layers, str):
        if layers == "parameters":
            names = [n for n, m in inner.named_modules() if _owns_parameters(m)]
        elif layers == "children":
            children = list(inner.named_children())
            prefix = ""
            if len(children) == 1:
                prefix = children[0][0] + "."
                children = list(children[0][1].named_children())
            names = [prefix + n for n, m in children if any(True for _ in m.parameters())]
        else:
            raise InvalidParamsError(
                "Metric 'cascading_randomisation': layers must be 'parameters', 'children' "
                f"or a list of layer paths, got {layers!r}."
            )
        names.reverse()
        return [n or "(model)" for n in names]
    names = list(layers)
    for name in names:
        resolve_layer(model, name, method="cascading_randomisation")
    return names


def cascading_randomisation(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    explain_fn: ExplainFn,
    *,
    layers: Literal["parameters", "children"] | Sequence[str] = "parameters",
    init: Literal["reset", "uniform"] = "reset",
    threshold: float = DEFAULT_THRESHOLD,
    verdict_on: Literal["spearman", "ssim"] = "spearman",
    attributions: torch.Tensor | None = None,
    batch_size: int = 64,
    seed: int | None = 0,
) -> RandomisationResult:
    """Cascading model-parameter randomisation (https://arxiv.org/abs/1810.03292).

    Args:
        model: returns ``(B, classes)`` scores; only a deep copy is randomised.
        inputs: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        target: ``(B,)`` class indices (or one int); kept fixed at every step.
        explain_fn: ``(model, inputs, target) -> attributions``; called with the
            randomised copy after every step.
        layers: what one step re-initialises, see :func:`randomisation_layers`.
        init: ``"reset"``: the layer's own ``reset_parameters()`` (PyTorch's default
            initialisation, as Quantus does; BatchNorm statistics reset too), falling
            back to ``"uniform"`` for modules without one; ``"uniform"``: each
            parameter drawn from U(mean - std, mean + std) of its own values (the
            original TorchEsegeta).
        threshold: similarity above which the last step's maps count as unchanged.
        verdict_on: the similarity that decides: ``"spearman"`` or ``"ssim"``.
        attributions: the original maps, if already computed with ``explain_fn``.
        batch_size: most inputs per ``explain_fn`` call.
        seed: seeds the re-initialisation (and a stochastic ``explain_fn``).

    Maps with several channels are summed over channels before comparing.
    """
    metric = "cascading_randomisation"
    x = check_inputs(metric, inputs)
    check_positive_int(metric, "batch_size", batch_size)
    if init not in ("reset", "uniform"):
        raise InvalidParamsError(f"Metric {metric!r}: init must be 'reset' or 'uniform'.")
    if verdict_on not in ("spearman", "ssim"):
        raise InvalidParamsError(f"Metric {metric!r}: verdict_on must be 'spearman' or 'ssim'.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise InvalidParamsError(f"Metric {metric!r}: threshold must be a number.")
    names = randomisation_layers(model, layers)
    if not names:
        raise InvalidParamsError(
            f"Metric {metric!r}: the model has no layers with parameters to randomise."
        )
    with eval_mode(model, metric) as device, seeded(seed, device):
        x = x.to(device)
        t = check_target(metric, target, x.shape[0], device)
        if attributions is None:
            original = run_explain(metric, explain_fn, model, x, t, batch_size)
        else:
            original = check_attributions(metric, attributions, x).to(device)
        original = spatial_map(original)
        work = copy.deepcopy(model).eval()
        rho, sim = [], []
        recurse = layers != "parameters"  # one step: a module's own parameters, or a subtree
        for name in names:
            layer = unwrap(work) if name == "(model)" else resolve_layer(work, name)
            _reinitialise(layer, init, recurse=recurse)
            maps = spatial_map(run_explain(metric, explain_fn, work, x, t, batch_size))
            rho.append(spearman(original, maps))
            sim.append(ssim(original, maps))
            log.debug("%s: %s randomised, spearman %s", metric, name, rho[-1].tolist())
    spear, structural = torch.stack(rho), torch.stack(sim)
    final = (spear if verdict_on == "spearman" else structural)[-1]
    return RandomisationResult(
        layers=tuple(names),
        spearman=spear,
        ssim=structural,
        fails=final > threshold,
        threshold=float(threshold),
        verdict_on=verdict_on,
    )


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


@torch.no_grad()
def _reinitialise(layer: nn.Module, init: str, *, recurse: bool) -> None:
    """Re-initialise ``layer``'s own parameters, or (``recurse``) every parameter-owning
    module inside it."""
    for module in layer.modules() if recurse else [layer]:
        if not _owns_parameters(module):
            continue
        reset = getattr(module, "reset_parameters", None)
        if init == "reset" and callable(reset):
            reset()
            continue
        for p in module.parameters(recurse=False):
            if p.numel() > 1:
                std, mean = torch.std_mean(p)
            else:
                std, mean = torch.zeros((), device=p.device), p.mean()
            lo, hi = float(mean - std), float(mean + std)
            p.uniform_(lo, hi) if hi > lo else p.fill_(lo)

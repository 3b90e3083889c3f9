"""TorchRay's perturbation methods: RISE (random masks) and extremal perturbation
(optimised smooth masks of given areas). Both are 2D only in TorchRay: RISE asserts a
2D input and generates 2D masks, extremal perturbation blurs with a 2D Gaussian and
builds 2D masks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from esegeta_core import MethodResult
from esegeta_core.explainer import Workload
from esegeta_core.toolkit import Call
from esegeta_torchray.base import P, TorchRayMethod
from esegeta_torchray.params import ExtremalPerturbationParams, RiseParams


class PerturbationMethod(TorchRayMethod[P]):
    """A TorchRay perturbation method: many scored copies of each 2D input."""

    family = "perturbation"
    ranks = (2,)
    cost = "high"


class TargetColumns(torch.nn.Module):
    """``model`` scoring only the given class columns, for TorchRay's ``rise``.

    TorchRay's ``rise`` accumulates a map for every column the model returns (a
    ``(columns, H, W)`` matmul per item and mask batch); its ``torch.sigmoid`` is
    element-wise, so dropping the other columns leaves the kept maps unchanged. Works on
    ``(N, C)`` scores and on the ``(N, C, 1, 1)`` ones TorchRay also accepts.
    """

    def __init__(self, model: torch.nn.Module, columns: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.columns = columns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[:, self.columns.to(out.device)]


class Rise(PerturbationMethod[RiseParams]):
    """RISE: score-weighted average of random masks (TorchRay's, the paper's sum; only the
    requested targets scored). ``cnnvis.rise`` centres the sum: the same expected map
    without the noise of the masks' coverage."""

    name = "torchray.rise"
    # TorchRay's rise takes the sigmoid of every score: a segmentation's class scores,
    # sums of logits over every pixel, would all be 0 or 1 and the map flat or empty
    # (cnnvis.rise scores segmentation models by the raw sums)
    tasks = ("classification",)
    count_params = ("num_masks",)
    forward_only = True
    function = "rise:rise"
    paper = "https://arxiv.org/abs/1806.07421"
    batch_params = ("batch_size",)
    pass_params = ("batch_size",)  # masked copies, scored without gradients

    def workload(
        self, params: RiseParams, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """One pass per mask and item; TorchRay masks one item with ``batch_size`` masks
        per pass."""
        given = params.filter_masks
        total = params.num_masks if given is None else int(given.shape[0])
        return Workload(
            passes=total,
            inputs=min(params.batch_size, total),
            counts=("num_masks",) if given is None else ("filter_masks",),
            fix="" if given is None else "give fewer filter_masks",
            batch=("batch_size",),
        )

    def drawn_with(self, params: RiseParams) -> tuple[str, ...]:
        """TorchRay draws its random masks ``batch_size`` at a time: another batch size
        draws other masks (given ``filter_masks`` do not depend on it)."""
        return ("batch_size",) if params.filter_masks is None else ()

    def run(self, fn: Callable[..., Any], call: Call, params: RiseParams) -> torch.Tensor:
        """TorchRay's ``rise`` on the distinct targets' columns, then each item's own
        channel: the ``(B, 1, *spatial)`` map ``rise_class`` gives, with the same masks
        (same seed, chunking and resize), without the other classes' maps."""
        columns, channel = torch.unique(call.target.long(), return_inverse=True)
        saliency = fn(
            TargetColumns(call.model, columns), call.inputs, **params.torchray_kwargs(call)
        )
        items = torch.arange(saliency.shape[0], device=saliency.device)
        return saliency[items, channel.to(saliency.device)].unsqueeze(1)


class ExtremalPerturbation(PerturbationMethod[ExtremalPerturbationParams]):
    """Extremal perturbation: smooth masks of fixed area that keep the target score
    (TorchRay).

    TorchRay explains one image and one class at a time, so items run one by one. The
    attributions are the masks, one channel per area ``(B, len(areas), H, W)``;
    ``saliency()`` sums them (a pixel in more of the nested masks counts more). The
    energy history of each item and area is in ``extras["energy"]`` shaped
    ``(B, len(areas), 2, max_iter)`` (reward, area regulariser).
    """

    name = "torchray.extremal_perturbation"
    count_params = ("max_iter",)
    function = "extremal_perturbation:extremal_perturbation"
    paper = "https://arxiv.org/abs/1910.08485"

    def workload(
        self,
        params: ExtremalPerturbationParams,
        shape: tuple[int, ...],
        layers: Mapping[str, tuple[int, ...]],
    ) -> Workload:
        """``max_iter`` optimisation steps per item, every area's mask in one pass (both
        games at once for ``variant='dual'``), items one at a time; the perturbation
        pyramid holds ``num_levels`` perturbed copies of the item."""
        masks = len(params.areas) * (2 if params.variant == "dual" else 1)
        item_bytes = 4 * math.prod(shape[1:])
        return Workload(
            passes=params.max_iter * masks,
            inputs=masks,
            extra=params.num_levels * item_bytes * 2,
            counts=("max_iter", "areas", "num_levels"),
            fix="lower max_iter, give fewer areas, or lower num_levels",
        )

    def run(
        self, fn: Callable[..., Any], call: Call, params: ExtremalPerturbationParams
    ) -> MethodResult:
        kwargs = params.torchray_kwargs(call)
        masks, energies = [], []
        with warnings.catch_warnings():
            # TorchRay's mask generator calls torch.meshgrid without indexing=
            warnings.filterwarnings("ignore", message=r"torch\.meshgrid")
            for i in range(call.inputs.shape[0]):
                mask, energy = fn(call.model, call.inputs[i : i + 1], int(call.target[i]), **kwargs)
                masks.append(mask.reshape(1, -1, *mask.shape[2:]))
                energies.append(energy)
        return MethodResult(torch.cat(masks), energy=torch.stack(energies))


PERTURBATION: list[type[TorchRayMethod]] = [Rise, ExtremalPerturbation]

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
from esegeta_core.runtime.pass_buffer import PassBuffer
from esegeta_core.runtime.passes import method_passes
from esegeta_core.toolkit import Call, target_pass_scores
from esegeta_torchray.base import P, TorchRayMethod
from esegeta_torchray.params import ExtremalPerturbationParams, RiseParams, torchray_function
from esegeta_torchray.rise_masks import DrawnMasks, MaskRange, given_masks


class PerturbationMethod(TorchRayMethod[P]):
    """A TorchRay perturbation method: many scored copies of each 2D input."""

    family = "perturbation"
    ranks = (2,)
    cost = "high"


class Rise(PerturbationMethod[RiseParams]):
    """RISE: score-weighted average of random masks (TorchRay's masks and sum of
    sigmoid scores; only the requested targets scored). ``cnnvis.rise`` centres the sum:
    the same expected map without the noise of the masks' coverage, and 3D.

    The masks are drawn as TorchRay draws them for ``batch_size`` and ``mask_seed``
    (:mod:`esegeta_torchray.rise_masks`) and scored in passes of ``pass_size``, which
    the pass planner sizes under ``auto_batch``: TorchRay's ``rise_class`` map, up to
    rounding."""

    name = "torchray.rise"
    # TorchRay's rise takes the sigmoid of every score: a segmentation's class scores,
    # sums of logits over every pixel, would all be 0 or 1 and the map flat or empty
    # (cnnvis.rise scores segmentation models by the raw sums)
    tasks = ("classification",)
    count_params = ("num_masks",)
    forward_only = True
    function = "rise:_upsample_reflect"  # the rest is TorchRay's loop, planned passes
    paper = "https://arxiv.org/abs/1806.07421"
    batch_params = ("pass_size",)
    # masked inputs made per pass in a reused buffer (method_passes); batch_size decides
    # the draw, so it is no batch parameter
    pass_params = ("pass_size",)
    # whole masked inputs per pass: smaller on the CPU for big inputs
    pass_unit = "pass"
    own_passes = True

    def workload(
        self, params: RiseParams, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """One pass per mask and item, ``pass_size`` masked inputs per pass; a pass's
        masks, and a draw chunk's for the sum, are made at the input's size from grids
        up-sampled to it plus a cell, with a cell of padding on each side."""
        given = params.filter_masks
        total = params.num_masks if given is None else int(given.shape[0])
        together = min(params.pass_size, total * shape[0])
        spatial = shape[2:]
        chunk = min(params.batch_size, total)
        made = 0
        if given is None:  # TorchRay's _upsample_reflect: the padded grid's size
            cells = params.num_cells
            up = [s + math.ceil(s / cells) for s in spatial]
            made = max(together, chunk) * math.prod(math.ceil(u / cells) * (cells + 2) for u in up)
        masks = max(together, chunk) * math.prod(spatial)
        return Workload(
            passes=total,
            inputs=together,
            extra=4 * (made + masks + shape[0] * math.prod(spatial)),
            counts=("num_masks",) if given is None else ("filter_masks",),
            fix="" if given is None else "give fewer filter_masks",
            batch=("pass_size",),
        )

    def run(self, fn: Callable[..., Any], call: Call, params: RiseParams) -> torch.Tensor:
        """TorchRay's ``rise_class`` map, ``(B, 1, *spatial)``: every item's target
        score (sigmoid) under each mask, in passes of ``pass_size`` masked inputs (the
        planner's under ``auto_batch``), masks in order with every item's inputs
        together; then TorchRay's sum over the masks, ``batch_size`` at a time, and its
        resize."""
        kwargs = params.torchray_kwargs(call)
        x = call.inputs
        b = x.shape[0]
        spatial = (x.shape[2], x.shape[3])
        total, chunk = int(kwargs["num_masks"]), int(kwargs["batch_size"])
        given = kwargs.get("filter_masks")
        masks = (
            given_masks(given)
            if given is not None
            else DrawnMasks.draw(
                total, params.num_cells, params.p, chunk, params.mask_seed, spatial, x.device, fn
            )
        )
        targets = call.target.to(x.device).long()
        with torch.no_grad():
            buffer = PassBuffer(x[0])
            scores = rise_scores(call.model, x, targets, masks, total, buffer, params.pass_size)
            del buffer
            saliency = torch.zeros(b, math.prod(spatial), device=x.device)
            for first in range(0, total, chunk):  # TorchRay's sum, in its order
                last = min(total, first + chunk)
                flat = masks(first, last).reshape(last - first, -1)
                for item in range(b):
                    saliency[item] += (scores[item : item + 1, first:last] @ flat)[0]
            saliency /= total
            resize = torchray_function("common:resize_saliency")
            return resize(
                x, saliency.view(b, 1, *spatial), kwargs["resize"], mode=kwargs["resize_mode"]
            )


def rise_scores(
    model: torch.nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    masks: MaskRange,
    total: int,
    buffer: PassBuffer,
    pass_size: int,
) -> torch.Tensor:
    """The ``(B, total)`` sigmoid target scores of every item under each mask.

    Inputs run mask by mask, each mask's with every item's (a mask is made once per
    pass however many items), ``pass_size`` per pass, or the pass planner's plan within
    it."""
    b = x.shape[0]

    def run_pass(start: int, stop: int, channels_last: bool) -> torch.Tensor:
        batch = buffer.take(stop - start, channels_last)
        first = start // b
        made = masks(first, (stop - 1) // b + 1)
        if b == 1:
            torch.mul(x[0], made, out=batch)
        else:
            for item in range(b):  # the rows of this item: every b-th from its first
                offset = (item - start) % b
                rows = batch[offset::b]
                if rows.shape[0]:
                    at = (start + offset) // b - first
                    torch.mul(x[item], made[at : at + rows.shape[0]], out=rows)
        items = torch.arange(start, stop, device=x.device) % b
        return target_pass_scores(model, batch, targets[items]).float().sigmoid()

    scores = method_passes(total * b, run_pass, pass_size, x[:1], kind="forward")
    return scores.view(total, b).t().contiguous()


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

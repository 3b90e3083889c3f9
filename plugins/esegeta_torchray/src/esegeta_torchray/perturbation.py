"""TorchRay's perturbation methods: RISE (random masks) and extremal perturbation
(optimised smooth masks of given areas). Both are 2D only in TorchRay: RISE asserts a
2D input and generates 2D masks, extremal perturbation blurs with a 2D Gaussian and
builds 2D masks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, WithJsonSchema, model_validator

from esegeta_core import InvalidParamsError, MethodResult
from esegeta_core.explainer import Workload
from esegeta_torchray.base import TorchRayMethod
from esegeta_torchray.common import Call, ResizeParams, SmoothParams, torchray_function

Tensor = Annotated[torch.Tensor, WithJsonSchema({"type": "object", "title": "torch.Tensor"})]
"""A tensor parameter, described in the JSON Schema (pydantic has no schema for it)."""


class RiseParams(ResizeParams):
    """TorchRay's ``rise`` arguments."""

    num_masks: int = Field(8000, ge=1, description="Number of random masks.")
    num_cells: int = Field(
        7,
        ge=2,
        description="Cells per spatial side of the low-resolution random grid (at most the "
        "input's smallest side).",
    )
    p: float = Field(
        0.5, ge=0.0, le=1.0, description="Probability that a grid cell keeps the input (1)."
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="Masks generated and evaluated per forward pass (TorchRay draws the "
        "random masks chunk by chunk, so the masks depend on it too).",
    )
    mask_seed: int = Field(
        0,
        ge=0,
        description="TorchRay's own seed for the masks (it reseeds torch for the call and "
        "restores the generator afterwards), so results repeat without explain(seed=...).",
    )
    filter_masks: Tensor | None = Field(
        None,
        description="Precomputed masks (num_masks, 1, H, W) to use instead of random ones; "
        "num_masks defaults to their number.",
    )

    @model_validator(mode="after")
    def _check_masks(self) -> RiseParams:
        self._only_with(
            ["num_cells", "p", "mask_seed"],
            self.filter_masks is None,
            "random masks (no filter_masks)",
        )
        return self

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        spatial = tuple(call.inputs.shape[2:])
        kwargs.update(num_masks=self.num_masks, batch_size=self.batch_size)
        if self.filter_masks is None:
            if self.num_cells > min(spatial):
                raise InvalidParamsError(
                    f"Method {call.method!r}: num_cells={self.num_cells} exceeds the input's "
                    f"smallest side {min(spatial)}; use at most {min(spatial)}."
                )
            kwargs.update(num_cells=self.num_cells, p=self.p, seed=self.mask_seed)
            return kwargs
        masks = self.filter_masks
        count = masks.shape[0] if masks.ndim else 0
        if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[2:]) != spatial:
            raise InvalidParamsError(
                f"Method {call.method!r}: filter_masks must be shaped (num_masks, 1, "
                f"{', '.join(map(str, spatial))}), got {tuple(masks.shape)}."
            )
        if "num_masks" in self.model_fields_set and self.num_masks != count:
            raise InvalidParamsError(
                f"Method {call.method!r}: num_masks={self.num_masks} but filter_masks holds "
                f"{count} masks; leave num_masks out or make them agree."
            )
        kwargs.update(
            num_masks=count,
            filter_masks=masks.to(device=call.inputs.device, dtype=call.inputs.dtype),
        )
        return kwargs


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


class Rise(TorchRayMethod):
    """RISE: score-weighted average of random masks (TorchRay, only the requested targets
    scored)."""

    name = "torchray.rise"
    count_params = ("num_masks",)
    Params = RiseParams
    function = "rise:rise"
    family = "perturbation"
    ranks = (2,)
    cost = "high"
    paper = "https://arxiv.org/abs/1806.07421"
    batch_params = ("batch_size",)
    pass_params = ("batch_size",)  # masked copies, scored without gradients

    def workload(
        self, params: Any, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
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

    def run(self, fn: Callable[..., Any], call: Call, params: Any) -> torch.Tensor:
        """TorchRay's ``rise`` on the distinct targets' columns, then each item's own
        channel: the ``(B, 1, *spatial)`` map ``rise_class`` gives, with the same masks
        (same seed, chunking and resize), without the other classes' maps."""
        columns, channel = torch.unique(call.target.long(), return_inverse=True)
        saliency = fn(
            TargetColumns(call.model, columns), call.inputs, **params.torchray_kwargs(call)
        )
        items = torch.arange(saliency.shape[0], device=saliency.device)
        return saliency[items, channel.to(saliency.device)].unsqueeze(1)


Area = Annotated[float, Field(gt=0.0, le=1.0)]


class ExtremalPerturbationParams(ResizeParams, SmoothParams):
    """TorchRay's ``extremal_perturbation`` arguments."""

    areas: list[Area] = Field(
        [0.1],
        min_length=1,
        description="Target areas of the masks, fractions in (0, 1]; one mask per area, "
        "stacked in the channel dimension of the attributions.",
    )
    perturbation: Literal["blur", "fade"] = Field(
        "blur", description="How masked-out regions are perturbed: Gaussian blur or fade to 0."
    )
    max_iter: int = Field(800, ge=1, description="Optimisation iterations of the masks.")
    num_levels: int = Field(
        8, ge=2, description="Levels of the perturbation pyramid (interpolated)."
    )
    step: int = Field(7, ge=1, description="Mask parameterisation step in pixels.")
    sigma: float = Field(21.0, gt=0.0, description="Smoothness of the mask (kernel size).")
    jitter: bool = Field(
        True, description="Flip the perturbed input horizontally every other iteration."
    )
    variant: Literal["preserve", "delete", "dual"] = Field(
        "preserve",
        description="Game: keep the score with the area preserved, drop it with the area "
        "deleted, or both.",
    )
    reward: Literal["simple", "contrastive"] = Field(
        "simple",
        description="Reward: the target score, or the target score minus the best other class.",
    )

    def torchray_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().torchray_kwargs(call)
        self._check_mask_size(call)
        module = "extremal_perturbation"
        kwargs.update(
            areas=list(self.areas),
            perturbation=self.perturbation,
            max_iter=self.max_iter,
            num_levels=self.num_levels,
            step=self.step,
            sigma=self.sigma,
            jitter=self.jitter,
            variant=self.variant,
            reward_func=torchray_function(f"{module}:{self.reward}_reward"),
        )
        return kwargs

    def _check_mask_size(self, call: Call) -> None:
        """TorchRay's ``MaskGenerator`` crops ``round(sigma)`` pixels of margin from a
        grid of ``step``-pixel cells; for some step/sigma/size combinations the grid is
        too small and TorchRay fails with a shape mismatch. Say so up front."""
        padding = 1 + math.ceil(2 * self.sigma / self.step)
        radius = 1 + math.ceil(self.sigma / self.step)
        for side in call.inputs.shape[2:]:
            cells = math.ceil(side / self.step) + 2 * padding - 2 * radius
            if self.step * cells - self.step + 1 < round(self.sigma) + side:
                raise InvalidParamsError(
                    f"Method {call.method!r}: TorchRay's mask generator cannot build a "
                    f"{side}-pixel mask with step={self.step} and sigma={self.sigma} (its "
                    "grid is too small for the margin it crops); sigma = 3 * step works, "
                    "as in TorchRay's defaults step=7, sigma=21."
                )


class ExtremalPerturbation(TorchRayMethod):
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
    Params = ExtremalPerturbationParams
    function = "extremal_perturbation:extremal_perturbation"
    family = "perturbation"
    ranks = (2,)
    cost = "high"
    paper = "https://arxiv.org/abs/1910.08485"

    def workload(
        self, params: Any, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
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

    def run(self, fn: Callable[..., Any], call: Call, params: Any) -> MethodResult:
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

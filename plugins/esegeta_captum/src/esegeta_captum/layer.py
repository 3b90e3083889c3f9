"""Captum's layer attribution methods: attributions at an internal layer's resolution.

``explain(...).saliency()`` up-samples them to the input; ``attributions`` keeps the
layer's shape (channels included, except for Grad-CAM with ``attr_dim_summation``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch

from esegeta_captum.base import (
    CaptumMethod,
    DeepLiftMethod,
    LRPMethod,
    P,
    captum_class,
    single_tensor,
)
from esegeta_captum.params.layer import (
    InternalInfluenceParams,
    LayerActivationParams,
    LayerConductanceParams,
    LayerDeepLiftParams,
    LayerDeepLiftShapParams,
    LayerFeatureAblationParams,
    LayerGradCamParams,
    LayerGradientShapParams,
    LayerGradientXActivationParams,
    LayerIntegratedGradientsParams,
    LayerLRPParams,
)
from esegeta_core.explainer import Workload
from esegeta_core.layer_replay import recording_prefix, replaced_scores
from esegeta_core.preparation import layer_tap
from esegeta_core.runtime.indices import device_index
from esegeta_core.toolkit import Call, gather_target, recording


class LayerMethod(CaptumMethod[P]):
    """Base of the layer methods."""

    family = "layer"
    output = "layer"
    needs_layer = True


class LayerConductance(LayerMethod[LayerConductanceParams]):
    """Layer conductance: Integrated Gradients flowing through each unit of a layer.

    Dhamdhere et al. 2018 (the original tool fixed n_steps to 1; here it is a parameter).
    """

    name = "captum.layer_conductance"
    captum_class = "LayerConductance"
    min_steps_per_pass = 2
    cost = "medium"
    paper = "https://arxiv.org/abs/1805.12233"


class InternalInfluence(LayerMethod[InternalInfluenceParams]):
    """Internal influence: gradients at a layer integrated along the input path.

    Leino et al. 2018.
    """

    name = "captum.internal_influence"
    captum_class = "InternalInfluence"
    cost = "medium"
    paper = "https://arxiv.org/abs/1802.03788"


class LayerGradientXActivation(LayerMethod[LayerGradientXActivationParams]):
    """Layer activation times the gradient of the class score at that layer.

    Shrikumar et al. 2016 applied to a layer.
    """

    name = "captum.layer_gradient_x_activation"
    captum_class = "LayerGradientXActivation"
    paper = "https://arxiv.org/abs/1605.01713"


class LayerActivation(LayerMethod[LayerActivationParams]):
    """The layer's activations themselves; independent of the target class.

    Erhan et al. 2009 (activation inspection).
    """

    name = "captum.layer_activation"
    captum_class = "LayerActivation"
    uses_target = False
    paper = "https://www.researchgate.net/publication/265022827"


class LayerGradCam(LayerMethod[LayerGradCamParams]):
    """Grad-CAM: the layer's activations weighted by spatially averaged gradients.

    Selvaraju et al. 2017.
    """

    name = "captum.layer_grad_cam"
    captum_class = "LayerGradCam"
    paper = "https://arxiv.org/abs/1610.02391"


class LayerDeepLift(LayerMethod[LayerDeepLiftParams], DeepLiftMethod[LayerDeepLiftParams]):
    """DeepLIFT contributions of a layer's units relative to a baseline input.

    Shrikumar et al. 2017.
    """

    name = "captum.layer_deep_lift"
    captum_class = "LayerDeepLift"
    paper = "https://arxiv.org/abs/1704.02685"


class LayerDeepLiftShap(
    LayerMethod[LayerDeepLiftShapParams], DeepLiftMethod[LayerDeepLiftShapParams]
):
    """DeepLIFT at a layer averaged over a baseline distribution (at least two references).

    Lundberg and Lee 2017.
    """

    name = "captum.layer_deep_lift_shap"
    captum_class = "LayerDeepLiftShap"
    cost = "medium"
    paper = "https://arxiv.org/abs/1705.07874"


class LayerGradientShap(LayerMethod[LayerGradientShapParams]):
    """GradientSHAP at a layer: expected layer gradients at random path points.

    Lundberg and Lee 2017.
    """

    name = "captum.layer_gradient_shap"
    captum_class = "LayerGradientShap"
    cost = "medium"
    deterministic = False
    paper = "https://arxiv.org/abs/1705.07874"


class LayerIntegratedGradients(LayerMethod[LayerIntegratedGradientsParams]):
    """Integrated Gradients with respect to a layer's activations.

    Sundararajan et al. 2017.
    """

    name = "captum.layer_integrated_gradients"
    captum_class = "LayerIntegratedGradients"
    cost = "medium"
    paper = "https://arxiv.org/abs/1703.01365"


def group_ablation(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    baseline: float,
    chunk: int | None,
    method: str,
) -> torch.Tensor:
    """Captum's ``LayerFeatureAblation`` result for group masks (``None``: each channel
    of the layer's output), with the layers before ``layer`` run once per item
    (:func:`esegeta_core.layer_replay.replaced_scores`): each unit gets the score drop
    when its group is set to ``baseline``."""
    with (
        torch.no_grad(),
        recording([layer]) as seen,
        recording_prefix(model, layer, inputs) as prefix,
    ):
        scores = model(inputs)
    original = cast(torch.Tensor, seen[0][0])
    reference = gather_target(scores, target)
    if mask is None:  # every channel a group of its own
        channels = torch.arange(original.shape[1], device=original.device)
        mask = channels.view(1, -1, *([1] * (original.ndim - 2)))
    groups = torch.broadcast_to(mask.to(original.device), original.shape).long()
    ids = [groups[b].unique() for b in range(len(inputs))]  # sorted, per item
    rows = [(b, g) for b in range(len(inputs)) for g in ids[b].tolist()]

    fill = torch.as_tensor(baseline, dtype=original.dtype, device=original.device)

    def build(item: int, ids: list[int], out: torch.Tensor) -> None:
        chosen = groups[item].unsqueeze(0) == device_index(ids, groups.device).view(
            -1, *([1] * (original.ndim - 1))
        )
        torch.where(chosen, fill, original[item], out=out)

    ablated = replaced_scores(
        model, layer, inputs, original, target, reference, rows, build, chunk=chunk,
        method=method, prefix=prefix,
    )  # fmt: skip
    # each unit takes its group's drop: the rows are each item's sorted ids in turn
    out = torch.empty_like(original)
    start = 0
    for item, found in enumerate(ids):
        drops = (reference[item] - ablated[start : start + len(found)]).to(out.dtype)
        out[item] = drops[torch.searchsorted(found, groups[item].contiguous())]
        start += len(found)
    return out


class LayerFeatureAblation(LayerMethod[LayerFeatureAblationParams]):
    """Score change when groups of a layer's units are set to a constant.

    Ablation at a layer; by default whole channels are ablated. With group masks
    ('channel' or a tensor) the layers before ``layer`` run once per item and only the
    rest of the model per ablated group (the result equals Captum's; the cost grows
    with the number of groups times the part of the model after the layer).
    """

    def run(
        self,
        algorithm: Any,
        inputs: torch.Tensor,
        kwargs: dict[str, Any],
        params: LayerFeatureAblationParams,
    ) -> Any:
        if kwargs["layer_mask"] is not None and not kwargs["attribute_to_layer_input"]:
            chunk = (
                kwargs["perturbations_per_eval"]
                if "perturbations_per_eval" in params.model_fields_set
                else None
            )
            mask = kwargs["layer_mask"]
            return group_ablation(
                algorithm.forward_func, algorithm.layer, inputs, kwargs["target"],
                None if isinstance(mask, str) else mask, kwargs["layer_baselines"], chunk,
                self.name,
            )  # fmt: skip
        # Captum (0.9) does not expand per-item targets when perturbations_per_eval > 1
        # ("Tensor target dimension ... is not valid"): run item by item in that case.
        target = kwargs["target"]
        if inputs.shape[0] == 1 or kwargs["perturbations_per_eval"] == 1:
            return algorithm.attribute(inputs, **kwargs)
        parts = [
            single_tensor(
                algorithm.attribute(inputs[i : i + 1], **{**kwargs, "target": target[i : i + 1]}),
                self.name,
            )
            for i in range(inputs.shape[0])
        ]
        return torch.cat(parts)

    def core_workload(
        self,
        params: LayerFeatureAblationParams,
        shape: tuple[int, ...],
        layers: Mapping[str, tuple[int, ...]],
    ) -> Workload:
        """One evaluation per group of units and item; the layer's shape is read from
        ``layers`` (unknown without it)."""
        mask = params.layer_mask
        if isinstance(mask, torch.Tensor):
            groups = int(torch.unique(mask).numel())
        elif params.layer not in layers:
            return Workload()
        else:
            units = layers[params.layer]
            groups = units[0] if mask == "channel" else math.prod(units)
        return Workload(
            passes=groups,
            inputs=shape[0] * min(params.perturbations_per_eval, groups),
            counts=("layer_mask",),
            fix=f"ablate fewer groups (now {groups:,} per item): layer_mask='channel', "
            "coarser group ids, or a narrower layer",
            batch=("perturbations_per_eval",),
        )

    name = "captum.layer_feature_ablation"
    captum_class = "LayerFeatureAblation"
    own_passes = True  # group masks: layer replay builds its passes (method_passes)
    cost = "medium"
    cost_note = (
        "one forward pass of the layers after `layer` per group of units (per channel by "
        "default: 2048 passes at ResNet-50's layer4) and item; the layers before it run "
        "once per item, unless the model needs whole passes (then one whole pass per group)"
    )
    paper = "https://arxiv.org/abs/1311.2901"


class LayerLRP(LayerMethod[LayerLRPParams], LRPMethod[LayerLRPParams]):
    """Layer-wise Relevance Propagation relevance at a layer, with epsilon rules.

    Bach et al. 2015; the rules of captum.lrp (see esegeta_captum.rules).
    """

    name = "captum.layer_lrp"
    captum_class = "LayerLRP"
    paper = "https://doi.org/10.1371/journal.pone.0130140"

    def build(self, call: Call, params: LayerLRPParams) -> Any:
        """Captum reads a layer's relevance from its rule, which only leaf layers have:
        read it at the core's tap around the layer instead (an identity leaf carrying
        the layer's output, or input), so blocks work too."""
        from captum.attr._utils.lrp_rules import EpsilonRule

        kwargs = params.init_kwargs(call)
        tap = layer_tap(call.model, kwargs["layer"])
        if tap is not None:
            probe = tap.before if params.attribute_to_layer_input else tap.after
            probe.rule = EpsilonRule()
            kwargs["layer"] = probe
        return captum_class(self.captum_class)(call.model, **kwargs)


LAYER: list[type[CaptumMethod]] = [
    LayerConductance,
    InternalInfluence,
    LayerGradientXActivation,
    LayerActivation,
    LayerGradCam,
    LayerDeepLift,
    LayerDeepLiftShap,
    LayerGradientShap,
    LayerIntegratedGradients,
    LayerFeatureAblation,
    LayerLRP,
]

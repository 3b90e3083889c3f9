"""Captum's primary attribution methods: attributions shaped like the input."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from esegeta_captum.base import CaptumMethod, DeepLiftMethod, GuidedMethod, LRPMethod
from esegeta_captum.params.pieces import BatchParams, FeatureMaskParams
from esegeta_captum.params.primary import (
    MAX_EXACT_FEATURES,
    DeconvolutionParams,
    DeepLiftParams,
    DeepLiftShapParams,
    FeatureAblationParams,
    FeaturePermutationParams,
    GradientShapParams,
    GuidedBackpropParams,
    GuidedGradCamParams,
    InputXGradientParams,
    IntegratedGradientsParams,
    KernelShapParams,
    LimeParams,
    LRPParams,
    OcclusionParams,
    SaliencyParams,
    ShapleyValueSamplingParams,
    ShapleyValuesParams,
)
from esegeta_captum.shapes import window_sizes
from esegeta_core.explainer import Workload
from esegeta_core.runtime.ablation import feature_ablation, occlusion, shapley_values

B = TypeVar("B", bound=BatchParams)
"""The parameter model of a perturbation method (it sets ``perturbations_per_eval``)."""


class PerturbationMethod(CaptumMethod[B]):
    """Base of the Captum methods that perturb groups of features: one evaluation per
    feature (times ``per_feature``), ``perturbations_per_eval`` items' worth at a time."""

    family = "perturbation"
    cost = "high"

    def per_feature(self, params: B) -> int:
        """Evaluations per feature and item."""
        return 1

    def core_workload(
        self, params: B, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """One evaluation per feature of the mask (times :meth:`per_feature`); a method
        without a feature mask (occlusion's windows) counts its own."""
        if not isinstance(params, FeatureMaskParams):
            return Workload()
        features, setting, fix = params.feature_count(shape, self.name)
        sampled = "n_samples" in type(params).model_fields
        return perturbation_workload(
            features * self.per_feature(params) + 1,
            features,
            params,
            shape,
            counts=(setting, "n_samples") if sampled else (setting,),
            fix=f"{fix}, or lower n_samples" if sampled else fix,
        )


ENGINE_KWARGS = frozenset({"baselines", "target", "perturbations_per_eval"})
"""The ``attribute`` arguments the ablation engine takes besides the method's own."""


def engine_batch(
    algorithm: Any, inputs: Any, kwargs: dict[str, Any], own: frozenset[str]
) -> int | None:
    """Inputs per pass for the core's ablation engine
    (:mod:`esegeta_core.runtime.ablation`) when it reproduces this Captum call exactly:
    one tensor input, the arguments esegeta passes (``own`` besides
    :data:`ENGINE_KWARGS`), a target of one class or one per item, a number or a
    broadcastable tensor as baseline. ``None``: leave the call to Captum.

    Captum's ``perturbations_per_eval`` counts perturbations per item, so a pass holds
    that many times the batch."""
    if not hasattr(algorithm, "forward_func") or not isinstance(inputs, torch.Tensor):
        return None
    keys = set(kwargs)
    if inputs.ndim < 2 or not own <= keys or not keys <= own | ENGINE_KWARGS:
        return None
    per_eval = kwargs.get("perturbations_per_eval", 1)
    if isinstance(per_eval, bool) or not isinstance(per_eval, int) or per_eval < 1:
        return None
    target = kwargs.get("target")
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or not (
            target.numel() == 1 or target.shape == inputs.shape[:1]
        ):
            return None
    elif target is not None and (isinstance(target, bool) or not isinstance(target, int)):
        return None
    base = kwargs.get("baselines")
    if isinstance(base, torch.Tensor):
        try:
            torch.broadcast_shapes(base.shape, inputs.shape)
        except RuntimeError:
            return None
        if base.ndim > inputs.ndim:
            return None
    elif base is not None and (isinstance(base, bool) or not isinstance(base, (int, float))):
        return None
    return per_eval * inputs.shape[0]


def masked_engine(
    engine: Callable[..., torch.Tensor],
    algorithm: Any,
    inputs: Any,
    kwargs: dict[str, Any],
) -> Any:
    """``engine`` (the core's feature ablation or exact Shapley values) on a Captum call
    with a feature mask, when the engine covers the call (:func:`engine_batch`, a mask
    broadcastable item- and channel-wise); else Captum's own ``attribute``."""
    batch = engine_batch(algorithm, inputs, kwargs, frozenset({"feature_mask"}))
    mask = kwargs.get("feature_mask")
    if (
        batch is None
        or not isinstance(mask, torch.Tensor)
        or mask.ndim != inputs.ndim
        or mask.shape[0] not in (1, inputs.shape[0])
        or mask.shape[1] not in (1, inputs.shape[1])
        or any(m not in (1, n) for m, n in zip(mask.shape[2:], inputs.shape[2:], strict=True))
    ):
        return algorithm.attribute(inputs, **kwargs)
    return engine(
        algorithm.forward_func,
        inputs,
        kwargs.get("target"),
        feature_mask=mask,
        baselines=kwargs.get("baselines"),
        batch_size=batch,
    )


def perturbation_workload(
    passes: int | None,
    per_eval_cap: int,
    params: BatchParams,
    shape: tuple[int, ...],
    *,
    counts: tuple[str, ...],
    fix: str,
    extra: int = 0,
) -> Workload:
    """A workload of ``passes`` evaluations per item, ``perturbations_per_eval`` (at
    most ``per_eval_cap``) copies of each item per pass."""
    together = min(params.perturbations_per_eval, max(1, per_eval_cap))
    return Workload(
        passes=passes,
        inputs=shape[0] * together,
        extra=extra,
        counts=counts,
        fix=fix,
        batch=("perturbations_per_eval",),
    )


class Saliency(CaptumMethod[SaliencyParams]):
    """Gradient of the class score with respect to the input (vanilla saliency).

    Simonyan et al. 2013.
    """

    name = "captum.saliency"
    captum_class = "Saliency"
    paper = "https://arxiv.org/abs/1312.6034"


class IntegratedGradients(CaptumMethod[IntegratedGradientsParams]):
    """Integrated Gradients: gradients averaged along a straight path from a baseline.

    Sundararajan et al. 2017; satisfies completeness (attributions sum to the score
    difference between input and baseline, up to the integration error).
    """

    name = "captum.integrated_gradients"
    captum_class = "IntegratedGradients"
    cost = "medium"
    paper = "https://arxiv.org/abs/1703.01365"


class DeepLift(DeepLiftMethod[DeepLiftParams]):
    """DeepLIFT (rescale rule): contributions relative to a baseline in one backward pass.

    Shrikumar et al. 2017; the rescale rule applies at every element-wise activation
    (reused modules and functional calls get a module per call site).
    """

    name = "captum.deep_lift"
    captum_class = "DeepLift"
    paper = "https://arxiv.org/abs/1704.02685"


class DeepLiftShap(DeepLiftMethod[DeepLiftShapParams]):
    """DeepLIFT averaged over a distribution of baselines (a SHAP approximation).

    Lundberg and Lee 2017. The references are ``baselines`` (default zeros plus a
    blurred copy of every item), at least two.
    """

    name = "captum.deep_lift_shap"
    captum_class = "DeepLiftShap"
    cost = "medium"
    paper = "https://arxiv.org/abs/1705.07874"


class GradientShap(CaptumMethod[GradientShapParams]):
    """GradientSHAP: expected gradients times (input - reference) at random path points.

    Lundberg and Lee 2017; the references are ``baselines`` (default zeros plus a
    blurred copy of every item).
    """

    name = "captum.gradient_shap"
    captum_class = "GradientShap"
    cost = "medium"
    deterministic = False
    paper = "https://arxiv.org/abs/1705.07874"


class InputXGradient(CaptumMethod[InputXGradientParams]):
    """Input times gradient of the class score.

    Shrikumar et al. 2016.
    """

    name = "captum.input_x_gradient"
    captum_class = "InputXGradient"
    paper = "https://arxiv.org/abs/1605.01713"


class GuidedBackprop(GuidedMethod[GuidedBackpropParams]):
    """Guided backpropagation: gradients with negative signals cut at every activation.

    Springenberg et al. 2014. At a ReLU exactly the paper's rule; at GELU, SiLU, PReLU,
    Hardswish and other activations the same gate: the activation's local gradient is
    applied, then negative values are cut. A model without activations is refused.
    """

    name = "captum.guided_backprop"
    captum_class = "GuidedBackprop"
    paper = "https://arxiv.org/abs/1412.6806"


class Deconvolution(GuidedMethod[DeconvolutionParams]):
    """Deconvnet: back-propagates through activations by the sign of the gradient only.

    Zeiler and Fergus 2014; at every activation (ReLU or not) only the positive part of
    the incoming gradient passes. A model without activations is refused.
    """

    name = "captum.deconvolution"
    captum_class = "Deconvolution"
    paper = "https://arxiv.org/abs/1311.2901"


class GuidedGradCam(GuidedMethod[GuidedGradCamParams]):
    """Guided Grad-CAM: guided backprop times the up-sampled Grad-CAM map of a layer.

    Selvaraju et al. 2017; ``layer`` is usually the last convolution.
    """

    name = "captum.guided_grad_cam"
    captum_class = "GuidedGradCam"
    guided_attribute = "guided_backprop"
    needs_layer = True
    paper = "https://arxiv.org/abs/1610.02391"


class FeatureAblation(PerturbationMethod[FeatureAblationParams]):
    """Feature ablation: score change when each feature (grid cell, superpixel) is set
    to the baseline.

    Zeiler and Fergus 2014 style perturbation; one pass per feature, batched.
    """

    name = "captum.feature_ablation"
    captum_class = "FeatureAblation"
    paper = "https://arxiv.org/abs/1311.2901"
    own_passes = True

    def run(
        self,
        algorithm: Any,
        inputs: torch.Tensor,
        kwargs: dict[str, Any],
        params: FeatureAblationParams,
    ) -> Any:
        """The core's ablation engine (the same maps as Captum, without a masked copy of
        the input per perturbation), or Captum for a call the engine does not cover."""
        return masked_engine(feature_ablation, algorithm, inputs, kwargs)


class FeaturePermutation(PerturbationMethod[FeaturePermutationParams]):
    """Permutation importance: score change when a feature is shuffled across the batch.

    Breiman 2001 / Fisher et al. 2019; needs a batch of more than one item (with one
    item every attribution is zero).
    """

    name = "captum.feature_permutation"
    captum_class = "FeaturePermutation"
    deterministic = False
    paper = "https://arxiv.org/abs/1801.01489"

    def core_workload(
        self,
        params: FeaturePermutationParams,
        shape: tuple[int, ...],
        layers: Mapping[str, tuple[int, ...]],
    ) -> Workload:
        features, setting, fix = params.feature_count(shape, self.name)
        return perturbation_workload(features, features, params, shape, counts=(setting,), fix=fix)


class Occlusion(PerturbationMethod[OcclusionParams]):
    """Occlusion: score change when a sliding window is replaced by the baseline.

    Zeiler and Fergus 2014; ``window`` and ``strides`` are spatial sizes (the channel
    axis is covered whole), clipped to the input's size.
    """

    name = "captum.occlusion"
    captum_class = "Occlusion"
    paper = "https://arxiv.org/abs/1311.2901"
    own_passes = True

    def run(
        self, algorithm: Any, inputs: torch.Tensor, kwargs: dict[str, Any], params: OcclusionParams
    ) -> Any:
        """The core's ablation engine (the same maps as Captum, without a masked copy of
        the input per window), or Captum for a call the engine does not cover."""
        own = frozenset({"sliding_window_shapes", "strides"})
        batch = engine_batch(algorithm, inputs, kwargs, own)
        window, strides = kwargs.get("sliding_window_shapes"), kwargs.get("strides")
        if (
            batch is None
            or not isinstance(window, tuple)
            or len(window) != inputs.ndim - 1
            or not (
                isinstance(strides, int)
                or (isinstance(strides, tuple) and len(strides) == len(window))
            )
        ):
            return algorithm.attribute(inputs, **kwargs)
        return occlusion(
            algorithm.forward_func,
            inputs,
            kwargs.get("target"),
            window=window,
            strides=strides,
            baselines=kwargs.get("baselines"),
            batch_size=batch,
        )

    def core_workload(
        self, params: OcclusionParams, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        window = window_sizes(params.window, shape, "window", self.name)
        strides = window_sizes(params.strides, shape, "strides", self.name)
        extents = (shape[1], *shape[2:])
        # Captum's count: windows step until the dimension is covered (the last one may
        # be cut off at the edge)
        windows = math.prod(
            -(-(n - w) // s) + 1 for n, w, s in zip(extents, window, strides, strict=True)
        )
        return perturbation_workload(
            windows + 1,
            windows,
            params,
            shape,
            counts=("window", "strides"),
            fix=f"use larger strides or a larger window (now {windows:,} windows per item)",
        )


class ShapleyValueSampling(PerturbationMethod[ShapleyValueSamplingParams]):
    """Shapley values estimated from random feature permutations.

    Castro et al. 2009; cost is n_samples x features forward passes (batched).
    """

    name = "captum.shapley_value_sampling"
    captum_class = "ShapleyValueSampling"
    deterministic = False
    paper = "https://doi.org/10.1016/j.cor.2008.04.004"

    def per_feature(self, params: ShapleyValueSamplingParams) -> int:
        return params.n_samples


class ShapleyValues(PerturbationMethod[ShapleyValuesParams]):
    """Exact Shapley values from every coalition of the features, each scored once: 2^n
    passes per item.

    Shapley 1953. The values equal Captum's ``ShapleyValues``, which walks all n!
    orderings of the features (n * n! passes); the core's ablation engine scores each of
    the 2^n coalitions once instead. The default grid is 2 x 2 over the last two spatial
    dimensions (4 features; in 3D each cell spans the whole depth) and more than 12
    features is refused.
    """

    name = "captum.shapley_values"
    captum_class = "ShapleyValues"
    paper = "https://doi.org/10.1515/9781400881970-018"
    own_passes = True

    def run(
        self,
        algorithm: Any,
        inputs: torch.Tensor,
        kwargs: dict[str, Any],
        params: ShapleyValuesParams,
    ) -> Any:
        """The core's ablation engine (each coalition scored once: 2^n passes instead of
        Captum's n * n!), or Captum for a call the engine does not cover."""
        return masked_engine(shapley_values, algorithm, inputs, kwargs)

    def core_workload(
        self,
        params: ShapleyValuesParams,
        shape: tuple[int, ...],
        layers: Mapping[str, tuple[int, ...]],
    ) -> Workload:
        if params.feature_mask == "grid" and params.grid_cell is None:
            return perturbation_workload(2**4, 2**4, params, shape, counts=(), fix="")
        features, setting, fix = params.feature_count(shape, self.name)
        if features > MAX_EXACT_FEATURES:  # refused with its own message when it runs
            return Workload()
        coalitions = 2**features  # the engine's passes: every coalition once, no other
        return perturbation_workload(
            coalitions, coalitions, params, shape, counts=(setting,), fix=fix
        )


class Lime(PerturbationMethod[LimeParams]):
    """LIME: a sparse linear surrogate fitted to the scores of random feature subsets.

    Ribeiro et al. 2016; one Lasso surrogate per batch item (scikit-learn).
    """

    name = "captum.lime"
    captum_class = "Lime"
    deterministic = False
    paper = "https://arxiv.org/abs/1602.04938"

    def core_workload(
        self, params: LimeParams, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        return surrogate_workload(self.name, params, shape)


class KernelShap(PerturbationMethod[KernelShapParams]):
    """Kernel SHAP: LIME with the Shapley kernel, so the surrogate estimates Shapley values.

    Lundberg and Lee 2017; one linear surrogate per batch item (scikit-learn).
    """

    name = "captum.kernel_shap"
    captum_class = "KernelShap"
    deterministic = False
    paper = "https://arxiv.org/abs/1705.07874"

    def core_workload(
        self,
        params: KernelShapParams,
        shape: tuple[int, ...],
        layers: Mapping[str, tuple[int, ...]],
    ) -> Workload:
        return surrogate_workload(self.name, params, shape)


def surrogate_workload(
    method: str, params: LimeParams | KernelShapParams, shape: tuple[int, ...]
) -> Workload:
    """LIME and Kernel SHAP: ``n_samples`` evaluations per item, items one at a time,
    every sample's on/off row and score kept for the surrogate fit (float32 in Captum,
    float64 copies in scikit-learn, plus per-sample Python objects)."""
    n = params.n_samples
    features, _, _ = params.feature_count(shape, method)
    return perturbation_workload(
        n,
        n,
        params,
        (1, *shape[1:]),
        counts=("n_samples",),
        fix="lower n_samples",
        extra=n * (features * 24 + 1024),
    )


class LRP(LRPMethod[LRPParams]):
    """Layer-wise Relevance Propagation with Captum's epsilon rules.

    Bach et al. 2015. Epsilon rule for convolutions (1D-3D, transposed), linear layers,
    batch norm, pooling and up-sampling, a proportional rule at skip connections,
    pass-through at activations, shape-only modules and other normalisations (see
    esegeta_captum.rules); rules the user attached are kept. Models with attention or
    gating are refused: use zennit.lrp or a gradient method.
    """

    name = "captum.lrp"
    captum_class = "LRP"
    paper = "https://doi.org/10.1371/journal.pone.0130140"


PRIMARY: list[type[CaptumMethod]] = [
    Saliency,
    IntegratedGradients,
    DeepLift,
    DeepLiftShap,
    GradientShap,
    InputXGradient,
    GuidedBackprop,
    Deconvolution,
    GuidedGradCam,
    FeatureAblation,
    FeaturePermutation,
    Occlusion,
    ShapleyValueSampling,
    ShapleyValues,
    Lime,
    KernelShap,
    LRP,
]

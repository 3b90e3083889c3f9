"""Captum's primary attribution methods: attributions shaped like the input."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import torch

from esegeta_captum.base import (
    CaptumMethod,
    DeepLiftMethod,
    GuidedMethod,
    LRPMethod,
    captum_class,
)
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
from esegeta_captum.similarity import EXP_KERNEL, sample_weights
from esegeta_captum.zero_maps import lasso_warning, maps_of, with_warning
from esegeta_core.explainer import MethodResult, Workload
from esegeta_core.runtime.ablation import feature_ablation, occlusion, shapley_values
from esegeta_core.runtime.coalitions import (
    RandomModelError,
    coalition_scores,
    feature_values,
    shapley_value_sampling,
)
from esegeta_core.runtime.host_blas import one_blas_thread
from esegeta_core.runtime.permutation import feature_permutation
from esegeta_core.runtime.perturb_args import target_rows

B = TypeVar("B", bound=BatchParams)
"""The parameter model of a perturbation method (it sets ``perturbations_per_eval``)."""


class PerturbationMethod(CaptumMethod[B]):
    """Base of the Captum methods that perturb groups of features: one evaluation per
    feature (times ``per_feature``), ``perturbations_per_eval`` items' worth at a time."""

    family = "perturbation"
    cost = "high"
    pass_unit = "item"  # perturbations_per_eval: copies of each item per pass
    forward_only = True  # forward passes on perturbed inputs, scores only
    takes_plain_scores: ClassVar[bool] = False
    """Whether the method's engine scores the plain inputs (occlusion, feature ablation
    and permutation as their first step, Shapley value sampling at each order's end), so
    that it takes them from the core's prediction pass instead (:meth:`plain_scores`)."""
    _plain: tuple[torch.Tensor, torch.Tensor] | None = None
    """The inputs and their ``(B, classes)`` scores the core's prediction pass read."""

    def prediction_pass(
        self, model: torch.nn.Module, inputs: torch.Tensor, params: B
    ) -> torch.Tensor | None:
        """With ``target=None`` the core's prediction pass scores the plain inputs for
        the predicted class: a method whose engine would score them again keeps the
        scores (:meth:`plain_scores`) and runs one input per item fewer (ResNet-50 at
        64 px, occlusion's 64 windows in passes of 32: the plain input was a third pass
        of its own)."""
        self._plain = None
        if not self.takes_plain_scores:
            return None
        scores = model(inputs)
        if isinstance(scores, torch.Tensor) and scores.shape[:1] == inputs.shape[:1]:
            self._plain = (inputs, scores.detach())
        return scores

    def plain_scores(self, inputs: torch.Tensor, target: Any) -> torch.Tensor | None:
        """The ``(B,)`` scores of ``inputs`` for ``target`` that the prediction pass of
        this call read (it serves one call: a patch or another input gets None)."""
        plain, self._plain = self._plain, None
        if plain is None or plain[0] is not inputs or plain[1].ndim != 2:
            return None
        rows = target_rows(target, inputs.shape[0], plain[1].device, self.name)
        if rows is None:
            return None
        return plain[1].gather(1, rows.view(-1, 1)).squeeze(1)

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


def engine_mask(
    algorithm: Any, inputs: Any, kwargs: dict[str, Any], own: frozenset[str]
) -> tuple[int, torch.Tensor] | None:
    """Inputs per pass and the feature mask for a core engine that takes a feature mask
    (:func:`engine_batch` with ``own``, which holds ``"feature_mask"``), when it covers
    the call: a mask tensor with the inputs' dimensions, broadcastable item-, channel-
    and element-wise. ``None``: leave the call to Captum."""
    batch = engine_batch(algorithm, inputs, kwargs, own)
    mask = kwargs.get("feature_mask")
    if (
        batch is None
        or not isinstance(mask, torch.Tensor)
        or mask.ndim != inputs.ndim
        or mask.shape[0] not in (1, inputs.shape[0])
        or mask.shape[1] not in (1, inputs.shape[1])
        or any(m not in (1, n) for m, n in zip(mask.shape[2:], inputs.shape[2:], strict=True))
    ):
        return None
    return batch, mask


def masked_engine(
    engine: Callable[..., torch.Tensor],
    algorithm: Any,
    inputs: Any,
    kwargs: dict[str, Any],
    plain: Callable[[], torch.Tensor | None] | None = None,
) -> Any:
    """``engine`` (the core's feature ablation or exact Shapley values) on a Captum call
    with a feature mask, when the engine covers the call (:func:`engine_mask`); else
    Captum's own ``attribute``. ``plain``: the inputs' own scores, for an engine that
    takes them as ``initial``."""
    found = engine_mask(algorithm, inputs, kwargs, frozenset({"feature_mask"}))
    if found is None:
        return algorithm.attribute(inputs, **kwargs)
    batch, mask = found
    extra = {"initial": plain()} if plain is not None else {}
    return engine(
        algorithm.forward_func,
        inputs,
        kwargs.get("target"),
        feature_mask=mask,
        baselines=kwargs.get("baselines"),
        batch_size=batch,
        **extra,
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
    takes_plain_scores = True

    def run(
        self,
        algorithm: Any,
        inputs: torch.Tensor,
        kwargs: dict[str, Any],
        params: FeatureAblationParams,
    ) -> Any:
        """The core's ablation engine (the same maps as Captum, without a masked copy of
        the input per perturbation), or Captum for a call the engine does not cover."""
        return masked_engine(
            feature_ablation,
            algorithm,
            inputs,
            kwargs,
            plain=lambda: self.plain_scores(inputs, kwargs.get("target")),
        )


class FeaturePermutation(PerturbationMethod[FeaturePermutationParams]):
    """Permutation importance: score change when a feature is shuffled across the batch.

    Breiman 2001 / Fisher et al. 2019; needs a batch of more than one item (with one
    item every attribution is zero: ``min_batch`` refuses it before the model runs).
    The core's permutation engine (:mod:`esegeta_core.runtime.permutation`) computes
    Captum's maps with Captum's own random draws.
    """

    name = "captum.feature_permutation"
    captum_class = "FeaturePermutation"
    min_batch = 2  # a feature is shuffled across the batch: one item is left in place
    deterministic = False
    paper = "https://arxiv.org/abs/1801.01489"
    own_passes = True
    takes_plain_scores = True

    def run(
        self,
        algorithm: Any,
        inputs: torch.Tensor,
        kwargs: dict[str, Any],
        params: FeaturePermutationParams,
    ) -> Any:
        """The core's permutation engine (the same maps and draws as Captum, without a
        copy of the batch and two full-size mask blends per feature, and no pass for an
        item its permutation leaves in place), or Captum for a call the engine does not
        cover: another ``perm_func``, a batch of one item, a mask or argument the engine
        does not take."""
        found = engine_mask(algorithm, inputs, kwargs, frozenset({"feature_mask"}))
        default = inspect.signature(type(algorithm).__init__).parameters.get("perm_func")
        if (
            found is None
            or inputs.shape[0] < 2
            or default is None
            or getattr(algorithm, "perm_func", None) is not default.default
        ):
            return algorithm.attribute(inputs, **kwargs)
        batch, mask = found
        return feature_permutation(
            algorithm.forward_func,
            inputs,
            kwargs.get("target"),
            feature_mask=mask,
            batch_size=batch,
            initial=self.plain_scores(inputs, kwargs.get("target")),
        )

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
    takes_plain_scores = True

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
            initial=self.plain_scores(inputs, kwargs.get("target")),
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


SAMPLING_KWARGS = frozenset({"feature_mask", "n_samples"})
"""The sampling methods' own ``attribute`` arguments the coalition engine takes."""


def sampling_batch(algorithm: Any, inputs: Any, kwargs: dict[str, Any], captum: str) -> int | None:
    """Captum's ``perturbations_per_eval`` for the core's coalition engine
    (:mod:`esegeta_core.runtime.coalitions`) when it reproduces this call of Captum's
    ``captum`` class exactly: :func:`engine_batch`'s conditions with ``feature_mask``
    and ``n_samples``, the class itself (not a subclass or a wrapper), an integer mask
    tensor with the inputs' dimensions broadcastable item-, channel- and element-wise,
    ``n_samples >= 1``, a number or an input-shaped tensor (one item or one per item,
    the inputs' dtype and device) as baseline, a target tensor of at least one dimension
    on the inputs' device, finite inputs and baselines (Captum's blends turn an infinite
    value times zero into NaN). ``None``: leave the call to Captum."""
    if type(algorithm) is not captum_class(captum):
        return None
    if engine_batch(algorithm, inputs, kwargs, SAMPLING_KWARGS) is None:
        return None
    mask, n = kwargs.get("feature_mask"), kwargs.get("n_samples")
    if (
        not isinstance(mask, torch.Tensor)
        or mask.is_floating_point()
        or mask.is_complex()
        or mask.dtype == torch.bool
        or mask.ndim != inputs.ndim
        or mask.shape[0] not in (1, inputs.shape[0])
        or mask.shape[1] not in (1, inputs.shape[1])
        or any(m not in (1, s) for m, s in zip(mask.shape[2:], inputs.shape[2:], strict=True))
        or isinstance(n, bool)
        or not isinstance(n, int)
        or n < 1
    ):
        return None
    base, target = kwargs.get("baselines"), kwargs.get("target")
    if isinstance(base, torch.Tensor) and (
        base.ndim != inputs.ndim
        or base.shape[0] not in (1, inputs.shape[0])
        or base.shape[1:] != inputs.shape[1:]
        or base.dtype != inputs.dtype
        or base.device != inputs.device
        or not bool(torch.isfinite(base).all())
    ):
        return None
    if isinstance(base, float) and not math.isfinite(base):
        return None
    if isinstance(target, torch.Tensor) and (target.ndim == 0 or target.device != inputs.device):
        return None
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        return None
    return int(kwargs.get("perturbations_per_eval", 1))


def engine_or_captum(
    engine: Callable[[], torch.Tensor], algorithm: Any, inputs: torch.Tensor, kwargs: dict[str, Any]
) -> Any:
    """``engine()``, or Captum's ``attribute`` from the same random state when the model
    turns out to draw random numbers itself (its draws would interleave with the
    method's differently than in Captum)."""
    state = torch.get_rng_state()
    try:
        return engine()
    except RandomModelError:
        torch.set_rng_state(state)
        return algorithm.attribute(inputs, **kwargs)


def item_argument(value: Any, item: int, batch: int) -> Any:
    """What Captum's Lime hands the surrogate of ``item`` (``_select_example``): a
    tensor with one row per item is sliced to that item's row, anything else is
    shared."""
    if isinstance(value, torch.Tensor) and batch > 1 and len(value) == batch:
        return value[item : item + 1]
    return value


def surrogate_maps(
    algorithm: Any,
    inputs: torch.Tensor,
    kwargs: dict[str, Any],
    per_eval: int,
    extra: Callable[[int], dict[str, Any]],
) -> torch.Tensor:
    """Captum's Lime / KernelShap maps with Captum's own random draws, similarity and
    surrogate, the model's inputs built and scored by the coalition engine.

    As Captum's ``Lime._attribute_kwargs``: the mask's ids shifted to start at 0
    (``construct_feature_mask``), then item by item (:func:`surrogate_fit`) with the
    item's row of every per-item argument, and each element gets its feature's
    coefficient. ``extra``: the sampling arguments the class adds for a feature count
    (KernelShap's distribution of coalition sizes). Captum's unused forward pass over
    the whole batch (a shape check when the batch has several items) is not run.
    Callers hold :func:`~esegeta_core.runtime.host_blas.one_blas_thread`: each fit on
    numpy's BLAS would otherwise leave its worker threads spinning against the next
    item's passes (10-15% of a ResNet-50's 200 passes on 2 cores)."""
    from captum.attr._core.lime import construct_feature_mask

    masks, count = construct_feature_mask(kwargs["feature_mask"], (inputs,))
    mask, more = masks[0], extra(count)
    batch = inputs.shape[0]
    maps = []
    for i in range(batch):
        item = inputs if batch == 1 else inputs[i : i + 1]
        item_mask = item_argument(mask, i, batch)
        options = {
            "baselines": item_argument(kwargs.get("baselines", 0), i, batch),
            "feature_mask": item_mask,
            "num_interp_features": count,
            **more,
        }
        target = item_argument(kwargs.get("target"), i, batch)
        coefs = surrogate_fit(algorithm, item, target, options, kwargs["n_samples"], per_eval)
        maps.append(feature_values(coefs.reshape(1, -1), item_mask, item))
    return torch.cat(maps)


def surrogate_fit(
    algorithm: Any,
    item: torch.Tensor,
    target: Any,
    options: dict[str, Any],
    n_samples: int,
    per_eval: int,
) -> torch.Tensor:
    """One item's surrogate coefficients, as Captum's ``LimeBase.attribute``: the
    algorithm's ``perturb_func`` draws the interpretable samples (a generator function
    is started once per item), every sample's input is built in the coalition engine's
    pass buffer and handed to ``similarity_func`` (Captum's default kernels are computed
    for all samples at once instead, :mod:`esegeta_captum.similarity`), only its target
    score is kept, and
    ``interpretable_model`` is fitted to exactly the dataset Captum builds (whose
    loader draws once from torch's generator, before the next item's samples)."""
    from torch.utils.data import DataLoader, TensorDataset

    stream = (
        algorithm.perturb_func(item, **options)
        if inspect.isgeneratorfunction(algorithm.perturb_func)
        else None
    )
    samples: list[torch.Tensor] = []
    for _ in range(n_samples):
        try:
            drawn = next(stream) if stream is not None else algorithm.perturb_func(item, **options)
        except StopIteration:
            warnings.warn("Generator completed prior to given n_samples iterations!", stacklevel=2)
            break
        samples.append(drawn)
    similarities: list[torch.Tensor] = [torch.empty(0)] * len(samples)

    def built(j: int, perturbed: torch.Tensor) -> None:
        sim = algorithm.similarity_func(item, perturbed, samples[j], **options)
        similarities[j] = (
            sim.flatten()
            if isinstance(sim, torch.Tensor)
            else torch.tensor([sim], device=item.device)
        )

    coalitions = torch.cat(samples)
    # Captum's default kernels, for every sample at once (no host read per sample)
    weights = sample_weights(algorithm, item, coalitions, options)
    scores = coalition_scores(
        algorithm.forward_func,
        item,
        target,
        feature_mask=options["feature_mask"],
        coalitions=coalitions,
        baselines=options["baselines"],
        batch_size=per_eval,
        built=built if weights is None else None,
    )
    if weights is None:
        weights = torch.cat(similarities)
    dataset = TensorDataset(coalitions.float(), scores.float(), weights.float())
    with torch.no_grad():
        algorithm.interpretable_model.fit(DataLoader(dataset, batch_size=len(samples)))
        return algorithm.interpretable_model.representation()


def interpretable_default(algorithm: Any) -> bool:
    """Whether a Lime-family algorithm samples in the interpretable space and builds
    each input with Captum's ``default_from_interp_rep_transform`` (the blend the
    coalition engine reproduces)."""
    from captum.attr._core.lime import default_from_interp_rep_transform

    return bool(algorithm.perturb_interpretable_space) and (
        algorithm.from_interp_rep_transform is default_from_interp_rep_transform
    )


def kernel_shap_sizes(count: int) -> Any:
    """KernelShap's distribution of coalition sizes, built as Captum's
    ``KernelShap.attribute`` builds it (``num_select_distribution``)."""
    from torch.distributions.categorical import Categorical

    sizes = torch.arange(count, dtype=torch.float)
    denom = sizes * (count - sizes)
    probs = torch.tensor(count - 1) / denom
    probs[0] = 0.0
    return Categorical(probs)


class ShapleyValueSampling(PerturbationMethod[ShapleyValueSamplingParams]):
    """Shapley values estimated from random feature permutations.

    Castro et al. 2009; cost is n_samples x features forward passes (batched). The
    core's coalition engine (:mod:`esegeta_core.runtime.coalitions`) computes Captum's
    maps with Captum's own permutations, building each step's input in a reused pass
    buffer and keeping only the target scores.
    """

    name = "captum.shapley_value_sampling"
    captum_class = "ShapleyValueSampling"
    deterministic = False
    paper = "https://doi.org/10.1016/j.cor.2008.04.004"
    own_passes = True
    takes_plain_scores = True

    def per_feature(self, params: ShapleyValueSamplingParams) -> int:
        return params.n_samples

    def run(
        self,
        algorithm: Any,
        inputs: torch.Tensor,
        kwargs: dict[str, Any],
        params: ShapleyValueSamplingParams,
    ) -> Any:
        """The core's coalition engine (Captum's maps for the same seed, whatever the
        pass size), or Captum for a call the engine does not cover
        (:func:`sampling_batch`) or a model that draws random numbers."""
        from captum.attr._core import shapley_value

        per_eval = sampling_batch(algorithm, inputs, kwargs, "ShapleyValueSampling")
        generator = getattr(shapley_value, "_perm_generator", None)
        if per_eval is None or algorithm.permutation_generator is not generator:
            return algorithm.attribute(inputs, **kwargs)
        plain = self.plain_scores(inputs, kwargs.get("target"))
        return engine_or_captum(
            lambda: shapley_value_sampling(
                algorithm.forward_func,
                inputs,
                kwargs.get("target"),
                feature_mask=kwargs["feature_mask"],
                n_samples=kwargs["n_samples"],
                baselines=kwargs.get("baselines"),
                batch_size=per_eval * inputs.shape[0],
                initial=plain,
            ),
            algorithm,
            inputs,
            kwargs,
        )


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
    own_passes = True
    pass_unit = "pass"  # the items run one at a time, perturbations_per_eval per pass

    def run(
        self, algorithm: Any, inputs: torch.Tensor, kwargs: dict[str, Any], params: LimeParams
    ) -> Any:
        """Captum's sampling, similarity and surrogate with the model's inputs built and
        scored by the core's coalition engine (:func:`surrogate_maps`: the same maps for
        the same seed, whatever the pass size), or Captum for a call the engine does not
        cover (:func:`sampling_batch`, another sampling or similarity function) or a
        model that draws random numbers."""
        from captum.attr._core.lime import default_perturb_func

        per_eval = sampling_batch(algorithm, inputs, kwargs, "Lime")
        kernel = getattr(algorithm.similarity_func, "__qualname__", "")
        with one_blas_thread():  # the surrogates' fits (see surrogate_maps)
            if (
                per_eval is None
                or not interpretable_default(algorithm)
                or algorithm.perturb_func is not default_perturb_func
                or kernel != EXP_KERNEL
            ):
                return algorithm.attribute(inputs, **kwargs)
            return engine_or_captum(
                lambda: surrogate_maps(algorithm, inputs, kwargs, per_eval, lambda count: {}),
                algorithm,
                inputs,
                kwargs,
            )

    def attribute(
        self, model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: LimeParams
    ) -> torch.Tensor | MethodResult:
        """Captum's maps; an item's zero map under the Lasso penalty says why and how to
        fix it (:func:`~esegeta_captum.zero_maps.lasso_warning`)."""
        result = super().attribute(model, inputs, target, params)
        return with_warning(result, lasso_warning(self.name, params.alpha, maps_of(result)))

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
    own_passes = True
    pass_unit = "pass"  # the items run one at a time, perturbations_per_eval per pass

    def run(
        self,
        algorithm: Any,
        inputs: torch.Tensor,
        kwargs: dict[str, Any],
        params: KernelShapParams,
    ) -> Any:
        """Captum's coalition draws, Shapley kernel and linear surrogate with the
        model's inputs built and scored by the core's coalition engine
        (:func:`surrogate_maps`: the same maps for the same seed, whatever the pass
        size), or Captum for a call the engine does not cover (:func:`sampling_batch`)
        or a model that draws random numbers."""
        per_eval = sampling_batch(algorithm, inputs, kwargs, "KernelShap")
        with one_blas_thread():  # the surrogates' fits (see surrogate_maps)
            if (
                per_eval is None
                or not interpretable_default(algorithm)
                or algorithm.perturb_func != algorithm.kernel_shap_perturb_generator
                or algorithm.similarity_func != algorithm.kernel_shap_similarity_kernel
            ):
                return algorithm.attribute(inputs, **kwargs)
            return engine_or_captum(
                lambda: surrogate_maps(
                    algorithm,
                    inputs,
                    kwargs,
                    per_eval,
                    lambda count: {"num_select_distribution": kernel_shap_sizes(count)},
                ),
                algorithm,
                inputs,
                kwargs,
            )

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

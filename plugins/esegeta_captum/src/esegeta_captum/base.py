"""The one mechanism behind every Captum method: build the Captum object from the
parameters, call ``attribute`` (optionally through a NoiseTunnel), return a tensor.

A method is a short subclass ``CaptumMethod[MParams]`` naming its Captum class; its
parameter model (from :mod:`esegeta_captum.params`, assembled from the pieces) is the
type argument. Captum is imported only when a method runs, so listing methods stays
fast and a broken Captum breaks only these methods.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch

from esegeta_captum.params.pieces import (
    CaptumParams,
    FeatureMaskParams,
    GradientSamplingParams,
    NoiseTunnelParams,
    PathParams,
    ShapDistributionParams,
)
from esegeta_captum.references import reference_count
from esegeta_captum.rules import (
    deeplift_on_activations,
    guided_on_activations,
    lrp_rules,
    lrp_unsupported,
)
from esegeta_core import Explainer, MethodFailedError, MethodResult, NotApplicableError
from esegeta_core.explainer import Workload
from esegeta_core.preparation import activation_modules, ensure_prepared
from esegeta_core.toolkit import Call

if TYPE_CHECKING:
    from esegeta_core.tracing import ModelTrace

P = TypeVar("P", bound=CaptumParams)
"""A Captum method's parameter model."""


@contextlib.contextmanager
def numpy_seeded_from_torch() -> Iterator[None]:
    """Seed NumPy's global generator from torch's for the call, then restore it.

    Some Captum methods (GradientShap and its layer/neuron versions) draw from
    ``np.random``; esegeta seeds only torch, so without this ``seed=`` would not make
    them reproducible. The user's NumPy random state is left as it was.
    """
    state = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**31 - 1, ())))
    try:
        yield
    finally:
        np.random.set_state(state)


BATCH_PARAMS = ("perturbations_per_eval", "internal_batch_size", "nt_samples_batch_size")
"""Parameters that only set how much work runs per pass: ``explain(auto_batch=True)``
may size them (declared per method as ``batch_params``)."""


PASS_PARAMS = ("perturbations_per_eval",)
"""Batch parameters of perturbation methods, whose passes run without gradients."""

COUNT_PARAMS = ("n_steps", "n_samples")
"""Parameters that multiply the passes a method runs (``Explainer.count_params``)."""


def captum_class(name: str) -> Any:
    """``captum.attr.<name>``, imported on first use."""
    return getattr(importlib.import_module("captum.attr"), name)


def single_tensor(result: Any, method: str) -> torch.Tensor:
    """Captum returns a tuple/list when a layer has several inputs or outputs: esegeta
    methods return one tensor, so exactly one is required."""
    while isinstance(result, (tuple, list)):
        if len(result) != 1:
            raise MethodFailedError(
                f"Method {method!r}: Captum returned {len(result)} attribution tensors (the "
                "layer has several inputs or outputs); choose a layer with a single tensor."
            )
        result = result[0]
    return result


class CaptumMethod(Explainer[P]):
    """Base of the Captum methods: ``class M(CaptumMethod[MParams])`` sets ``captum_class``
    (the parameter model ``MParams`` comes from :mod:`esegeta_captum.params`)."""

    captum_class: ClassVar[str] = ""
    uses_target: ClassVar[bool] = True
    """False for methods that explain something other than a class score (activations,
    most neuron methods): no ``target`` is passed to Captum."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.batch_params = tuple(p for p in BATCH_PARAMS if p in cls.Params.model_fields)
        # perturbation passes run without gradients: the core's pass planner splits them
        cls.pass_params = tuple(p for p in PASS_PARAMS if p in cls.Params.model_fields)
        cls.count_params = tuple(p for p in COUNT_PARAMS if p in cls.Params.model_fields)

    min_steps_per_pass: ClassVar[int] = 1
    """Path points Captum runs per pass at least when ``internal_batch_size`` is set
    (2 for conductance, which differences consecutive points)."""

    def passes(self, params: P, shape: tuple[int, ...]) -> int | None:
        """Steps, samples or perturbations per item, times the noise tunnel's copies."""
        return self.workload(params, shape, {}).passes

    def workload(
        self, params: P, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """:meth:`core_workload` on the noise tunnel's copies (all at once unless
        ``nt_samples_batch_size`` is set)."""
        if not isinstance(params, NoiseTunnelParams) or params.noise_tunnel is None:
            return self.core_workload(params, shape, layers)
        copies = params.nt_samples
        together = min(params.nt_samples_batch_size or copies, copies)
        inner = self.core_workload(params, (shape[0] * together, *shape[1:]), layers)
        return Workload(
            passes=(inner.passes or 1) * copies,
            inputs=inner.inputs if inner.inputs is not None else shape[0] * together,
            extra=inner.extra,
            counts=(*inner.counts, "nt_samples"),
            fix=f"{inner.fix}, or lower nt_samples" if inner.fix else "",
            batch=(*inner.batch, "nt_samples_batch_size"),
        )

    def core_workload(
        self, params: P, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        """The method's workload without a noise tunnel, on inputs of ``shape``: path
        points (all at once unless ``internal_batch_size``; Gauss-Legendre builds an
        ``n_steps`` x ``n_steps`` table), GradientSHAP's samples (all at once), DeepLIFT
        SHAP's references (every item against every reference at once)."""
        batch = shape[0]
        if isinstance(params, PathParams):
            n, per_pass = params.n_steps, params.internal_batch_size
            least = self.min_steps_per_pass
            steps = n if per_pass is None else min(n, max(least, per_pass // batch))
            table = params.integration_method == "gausslegendre"
            return Workload(
                passes=n,
                inputs=batch * steps,
                extra=16 * n * n if table else 0,
                counts=("n_steps", "integration_method") if table else ("n_steps",),
                fix="lower n_steps (Gauss-Legendre's nodes need an n_steps x n_steps table; "
                "integration_method='riemann_trapezoid' does not)"
                if table
                else "",
                batch=("internal_batch_size",),
            )
        if isinstance(params, GradientSamplingParams):
            n = params.n_samples
            return Workload(passes=n, inputs=batch * n, counts=("n_samples",))
        if isinstance(params, ShapDistributionParams):
            refs = reference_count(params.baselines, shape)
            return Workload(
                passes=refs,
                inputs=batch * refs,
                counts=("baselines",),
                fix=f"use fewer references than {refs} (item-dependent baselines such as "
                "'blurred' add one per batch item; 'zeros' or a number add one), or a "
                "smaller batch",
            )
        return Workload()

    def build(self, call: Call, params: P) -> Any:
        """The Captum attribution object for ``call.model``."""
        return captum_class(self.captum_class)(call.model, **params.init_kwargs(call))

    def adapt(self, algorithm: Any, call: Call) -> Any:
        """Adjust the built Captum object (guided rules on every activation)."""
        return algorithm

    def call_kwargs(self, call: Call, params: P) -> dict[str, Any]:
        """Everything but the inputs that ``attribute`` receives."""
        kwargs = params.call_kwargs(call)
        if self.uses_target:
            kwargs["target"] = call.target
        return kwargs

    def run(self, algorithm: Any, inputs: torch.Tensor, kwargs: dict[str, Any], params: P) -> Any:
        """Call Captum; a method overrides this to work around a Captum limitation or to
        compute the same result faster."""
        return algorithm.attribute(inputs, **kwargs)

    @contextlib.contextmanager
    def prepared(self, call: Call, params: P) -> Iterator[None]:
        """Temporary changes a method needs (rules for its layers); nothing by default."""
        yield

    def attribute(
        self, model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: P
    ) -> torch.Tensor | MethodResult:
        call = Call(model=model, inputs=inputs, target=target, method=self.name)
        kwargs = self.call_kwargs(call, params)
        seeding = contextlib.nullcontext() if self.deterministic else numpy_seeded_from_torch()
        ready = (
            ensure_prepared(model, inputs, self.model_rules, method=self.name)
            if self.model_rules != "none"
            else contextlib.nullcontext()
        )
        with seeding, ready, self.prepared(call, params), warnings.catch_warnings():
            # Lime/KernelShap warn that a batch trains one surrogate per item: expected
            warnings.filterwarnings("ignore", message="You are providing multiple inputs")
            # Captum sets requires_grad on its own copy of the input: nothing to act on
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require")
            # Captum announces the hooks of its rule-based methods; esegeta removes them
            warnings.filterwarnings("ignore", message="Setting .*hooks")
            algorithm = self.adapt(self.build(call, params), call)
            nt = params.noise_tunnel_kwargs() if isinstance(params, NoiseTunnelParams) else {}
            if nt:
                algorithm = captum_class("NoiseTunnel")(algorithm)
            result = single_tensor(self.run(algorithm, inputs, {**nt, **kwargs}, params), self.name)
        if isinstance(params, FeatureMaskParams):
            return MethodResult(result, feature_mask=kwargs["feature_mask"])
        return result


class DeepLiftMethod(CaptumMethod[P]):
    """Base of the DeepLift family: the rescale rule at every activation of the
    prepared model (see :mod:`esegeta_captum.rules`)."""

    model_rules = "gates"

    @contextlib.contextmanager
    def prepared(self, call: Call, params: P) -> Iterator[None]:
        with deeplift_on_activations(call.model):
            yield


class GuidedMethod(CaptumMethod[P]):
    """Base of guided backprop and deconvnet (also at a neuron, and guided Grad-CAM):
    the rule at every activation of the prepared model, whatever its class."""

    model_rules = "gates"
    requirements = (
        "at least one activation (module or function): the guided and deconvnet rules act "
        "on activations, without one the map is the plain gradient",
    )
    guided_attribute: ClassVar[str | None] = None
    """The attribute holding Captum's inner GuidedBackprop/Deconvolution object (None:
    the algorithm itself)."""

    def check_model(self, model: torch.nn.Module, params: P, trace: ModelTrace | None) -> None:
        if trace is not None and not activation_modules(model):
            raise NotApplicableError(
                f"Method {self.name!r} (plugin 'captum') applies its rule at the model's "
                "activations, and this model has none: the map would be the plain gradient. "
                "Use 'captum.saliency' for the gradient."
            )

    def adapt(self, algorithm: Any, call: Call) -> Any:
        inner = getattr(algorithm, self.guided_attribute) if self.guided_attribute else algorithm
        guided_on_activations(inner, call.model)
        return algorithm


class LRPMethod(CaptumMethod[P]):
    """Base of Captum's LRP methods: rules for every layer of the prepared model."""

    model_rules = "relevance"
    requirements = (
        "no multiplicative interaction between activations (attention, gating): LRP's "
        "standard rules define no relevance split for them",
        "every leaf layer is a convolution, linear, pooling, up-sampling, normalisation, "
        "activation or shape-only module",
    )

    def check_model(self, model: torch.nn.Module, params: P, trace: ModelTrace | None) -> None:
        missing = lrp_unsupported(model)
        if missing:
            raise NotApplicableError(
                f"Method {self.name!r} (plugin 'captum') has no LRP rule for "
                f"{', '.join(missing)} layers. Use 'zennit.lrp' (zennit's rules and "
                "canonizers), or give those modules a Captum rule (module.rule = ...)."
            )

    @contextlib.contextmanager
    def prepared(self, call: Call, params: P) -> Iterator[None]:
        with lrp_rules(call.model):
            yield

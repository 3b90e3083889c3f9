"""The one mechanism behind every Captum method: build the Captum object from the
parameters, call ``attribute`` (optionally through a NoiseTunnel), return a tensor.

A method is a short subclass of :class:`CaptumMethod` naming its Captum class and its
``Params`` (assembled from the pieces in :mod:`esegeta_captum.common`). Captum is
imported only when a method runs, so listing methods stays fast and a broken Captum
breaks only these methods.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from esegeta_captum.common import Call, CaptumParams, FeatureMaskParams, NoiseTunnelParams
from esegeta_core import Explainer, MethodFailedError, MethodResult


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


class CaptumMethod(Explainer):
    """Base of the Captum methods; subclasses set ``captum_class`` and ``Params``."""

    captum_class: ClassVar[str] = ""
    uses_target: ClassVar[bool] = True
    """False for methods that explain something other than a class score (activations,
    most neuron methods): no ``target`` is passed to Captum."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.batch_params = tuple(p for p in BATCH_PARAMS if p in cls.Params.model_fields)

    def build(self, call: Call, params: CaptumParams) -> Any:
        """The Captum attribution object for ``call.model``."""
        return captum_class(self.captum_class)(call.model, **params.init_kwargs(call))

    def call_kwargs(self, call: Call, params: CaptumParams) -> dict[str, Any]:
        """Everything but the inputs that ``attribute`` receives."""
        kwargs = params.call_kwargs(call)
        if self.uses_target:
            kwargs["target"] = call.target
        return kwargs

    def run(self, algorithm: Any, inputs: torch.Tensor, kwargs: dict[str, Any]) -> Any:
        """Call Captum; a method overrides this to work around a Captum limitation."""
        return algorithm.attribute(inputs, **kwargs)

    @contextlib.contextmanager
    def prepared(self, call: Call, params: CaptumParams) -> Iterator[None]:
        """Temporary model changes a method needs (LRP rules); nothing by default."""
        yield

    def attribute(
        self, model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: Any
    ) -> torch.Tensor | MethodResult:
        call = Call(model=model, inputs=inputs, target=target, method=self.name)
        kwargs = self.call_kwargs(call, params)
        seeding = contextlib.nullcontext() if self.deterministic else numpy_seeded_from_torch()
        with seeding, self.prepared(call, params), warnings.catch_warnings():
            # Lime/KernelShap warn that a batch trains one surrogate per item: expected
            warnings.filterwarnings("ignore", message="You are providing multiple inputs")
            # Captum sets requires_grad on its own copy of the input: nothing to act on
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require")
            algorithm = self.build(call, params)
            nt = params.noise_tunnel_kwargs() if isinstance(params, NoiseTunnelParams) else {}
            if nt:
                algorithm = captum_class("NoiseTunnel")(algorithm)
            result = single_tensor(self.run(algorithm, inputs, {**nt, **kwargs}), self.name)
        if isinstance(params, FeatureMaskParams):
            return MethodResult(result, feature_mask=kwargs["feature_mask"])
        return result

"""The one mechanism behind every TorchRay method: resolve the parameters into TorchRay
keyword arguments, call the TorchRay function, check and return its map.

TorchRay is imported only when a method runs. Its functions leave the model's
``requires_grad`` flags and mode to the caller in places (the core restores those);
a failure half-way can also leave a probe's hook or a ReLU's ``inplace`` flag behind,
so :func:`restored_on_error` puts the model back before the error propagates.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch

from esegeta_core import Explainer, InvalidParamsError, MethodResult, NotApplicableError
from esegeta_core.model_state import ModelState
from esegeta_core.toolkit import Call
from esegeta_torchray.params import TorchRayParams, torchray_function

if TYPE_CHECKING:
    from esegeta_core import ModelTrace

P = TypeVar("P", bound=TorchRayParams)
"""A TorchRay method's parameter model."""


@contextlib.contextmanager
def restored_on_error(model: torch.nn.Module) -> Iterator[None]:
    """Remove hooks and restore ``inplace`` flags TorchRay's probes left when it raised."""
    state = ModelState.capture(model)
    inplace = [
        (m, m.inplace) for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)
    ]
    try:
        yield
    except BaseException:
        # TorchRay's probes restore a module's inplace flag in __del__, whenever they are
        # collected: free them now (the traceback's frames hold them), not later
        traceback.clear_frames(sys.exc_info()[2])
        gc.collect()
        state.restore()
        for module, flag in inplace:
            module.inplace = flag
        raise


class TorchRayMethod(Explainer[P]):
    """Base of the TorchRay methods: ``class M(TorchRayMethod[MParams])`` names the
    parameter model, ``function`` the TorchRay function.

    Every TorchRay method returns a one-channel map, at the input's or a layer's
    resolution (or the size given by ``resize``), hence ``output = "layer"``.
    """

    function: ClassVar[str] = ""
    """``"module:function"`` inside ``torchray.attribution``."""
    output = "layer"

    def run(self, fn: Callable[..., Any], call: Call, params: P) -> torch.Tensor | MethodResult:
        """One TorchRay call for the whole batch (``target`` is one class per item)."""
        return fn(call.model, call.inputs, call.target, **params.torchray_kwargs(call))

    def attribute(
        self, model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: P
    ) -> torch.Tensor | MethodResult:
        if not isinstance(params, TorchRayParams):
            raise InvalidParamsError(f"Method {self.name!r}: expected {self.Params.__name__}.")
        fn = torchray_function(self.function)
        # a fresh tensor object: TorchRay's input probe sets requires_grad and .grad on it
        call = Call(model=model, inputs=inputs.detach(), target=target, method=self.name)
        with restored_on_error(model), warnings.catch_warnings():
            # TorchRay's ReLU contexts instantiate autograd Functions (deprecated, harmless)
            warnings.filterwarnings("ignore", message=".*should not be instantiated")
            result = self.run(fn, call, params)
        if isinstance(result, MethodResult):
            result.attributions = self.check(result.attributions, call)
            return result
        return self.check(result, call)

    def check(self, saliency: torch.Tensor, call: Call) -> torch.Tensor:
        """The map, detached; an error when the chosen layer has no spatial layout."""
        saliency = saliency.detach()
        if saliency.ndim != call.inputs.ndim or saliency.shape[0] != call.inputs.shape[0]:
            raise InvalidParamsError(
                f"Method {self.name!r}: the saliency map is shaped {tuple(saliency.shape)}, "
                f"not (B, 1, *spatial) like the {call.rank}D input {tuple(call.inputs.shape)}: "
                "pick a convolutional layer (one with spatial output) as layer."
            )
        return saliency


RELU_ONLY = (
    "ReLU activations only: TorchRay's rule replaces ReLU's backward and assumes "
    "non-negative activations; other activations would keep their plain gradient",
)


class ReluRuleMethod(TorchRayMethod[P]):
    """A TorchRay method whose rule is defined for ReLU networks only (deconvnet, guided
    backprop, excitation backprop): a model with any other activation is refused
    before running, naming the activations found, since TorchRay would pass them the
    plain gradient (or divide by negative excitations) without a word."""

    needs_trace = True
    requirements = RELU_ONLY
    alternative: ClassVar[str] = "captum.guided_backprop"

    def check_model(self, model: torch.nn.Module, params: P, trace: ModelTrace | None) -> None:
        if trace is None:
            return
        found = trace.activation_functions()
        other = sorted(name for name in found if name != "relu")
        if other:
            raise NotApplicableError(
                f"Method {self.name!r} (plugin 'torchray') applies TorchRay's ReLU rule, and "
                f"this model also computes {', '.join(other)}, which the rule does not reach. "
                f"Use {self.alternative!r}, which applies its rule at every activation."
            )

"""Captum's neuron attribution methods: how the input drives one internal neuron.

The neuron is ``layer`` plus ``neuron_selector`` (an index into the layer's output
without the batch dimension; missing trailing entries mean the centre, so ``(c,)``
selects channel ``c`` at the spatial centre in 2D and 3D). These methods explain the
neuron, not a class: the target is ignored, except by neuron conductance, which
measures the neuron's share of the target class's score.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from esegeta_captum.base import CaptumMethod, DeepLiftMethod, GuidedMethod, P
from esegeta_captum.params.neuron import (
    NeuronConductanceParams,
    NeuronDeconvolutionParams,
    NeuronDeepLiftParams,
    NeuronDeepLiftShapParams,
    NeuronFeatureAblationParams,
    NeuronGradientParams,
    NeuronGradientShapParams,
    NeuronGuidedBackpropParams,
    NeuronIntegratedGradientsParams,
)
from esegeta_captum.params.pieces import NeuronParams
from esegeta_captum.primary import PerturbationMethod, engine_mask
from esegeta_captum.shapes import full_neuron_index, module_shape
from esegeta_captum.zero_maps import inactive_neuron_warning, maps_of, with_warning
from esegeta_core import MethodResult, layer_calls
from esegeta_core.errors import EsegetaError, InvalidParamsError
from esegeta_core.layers import resolve_layer
from esegeta_core.runtime.ablation import feature_ablation
from esegeta_core.sites import LayoutView, Tap
from esegeta_core.toolkit import Call, layer_output, recording

log = logging.getLogger(__name__)


class NeuronMethod(CaptumMethod[P]):
    """Base of the neuron methods: an item's zero map comes with the reason when the
    neuron is switched off on it (:mod:`esegeta_captum.zero_maps`)."""

    family = "neuron"
    output = "input"
    needs_layer = True
    uses_target = False

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: P
    ) -> torch.Tensor | MethodResult:
        result = super().attribute(model, inputs, target, params)
        if not isinstance(params, NeuronParams):
            return result
        call = Call(model=model, inputs=inputs, target=target, method=self.name)
        warning = inactive_neuron_warning(
            self.name,
            model,
            params.module(call),
            params.layer,
            params.neuron_selector,
            inputs,
            maps_of(result),
            inputs=params.attribute_to_neuron_input,
        )
        return with_warning(result, warning)


class NeuronGradient(NeuronMethod[NeuronGradientParams]):
    """Gradient of one neuron's value with respect to the input (target ignored).

    Simonyan et al. 2013 applied to a neuron.
    """

    name = "captum.neuron_gradient"
    captum_class = "NeuronGradient"
    paper = "https://arxiv.org/abs/1312.6034"


class NeuronIntegratedGradients(NeuronMethod[NeuronIntegratedGradientsParams]):
    """Integrated Gradients of one neuron's value (target ignored).

    Sundararajan et al. 2017.
    """

    name = "captum.neuron_integrated_gradients"
    captum_class = "NeuronIntegratedGradients"
    cost = "medium"
    paper = "https://arxiv.org/abs/1703.01365"


class NeuronConductance(NeuronMethod[NeuronConductanceParams]):
    """Neuron conductance: the input's attribution to the target score through one neuron.

    Dhamdhere et al. 2018; unlike the other neuron methods it uses the target class.
    """

    name = "captum.neuron_conductance"
    captum_class = "NeuronConductance"
    uses_target = True
    cost = "medium"
    paper = "https://arxiv.org/abs/1805.12233"


class NeuronDeepLift(NeuronMethod[NeuronDeepLiftParams], DeepLiftMethod[NeuronDeepLiftParams]):
    """DeepLIFT contributions of the input to one neuron (target ignored).

    Shrikumar et al. 2017.
    """

    name = "captum.neuron_deep_lift"
    captum_class = "NeuronDeepLift"
    paper = "https://arxiv.org/abs/1704.02685"


class NeuronDeepLiftShap(
    NeuronMethod[NeuronDeepLiftShapParams], DeepLiftMethod[NeuronDeepLiftShapParams]
):
    """DeepLIFT to one neuron averaged over a baseline distribution (target ignored).

    Lundberg and Lee 2017; at least two references.
    """

    name = "captum.neuron_deep_lift_shap"
    captum_class = "NeuronDeepLiftShap"
    cost = "medium"
    paper = "https://arxiv.org/abs/1705.07874"


class NeuronGradientShap(NeuronMethod[NeuronGradientShapParams]):
    """GradientSHAP of one neuron's value (target ignored).

    Lundberg and Lee 2017.
    """

    name = "captum.neuron_gradient_shap"
    captum_class = "NeuronGradientShap"
    cost = "medium"
    deterministic = False
    paper = "https://arxiv.org/abs/1705.07874"


class NeuronGuidedBackprop(
    NeuronMethod[NeuronGuidedBackpropParams], GuidedMethod[NeuronGuidedBackpropParams]
):
    """Guided backpropagation from one neuron (target ignored).

    Springenberg et al. 2014.
    """

    name = "captum.neuron_guided_backprop"
    captum_class = "NeuronGuidedBackprop"
    guided_attribute = "guided_backprop"
    paper = "https://arxiv.org/abs/1412.6806"


class NeuronDeconvolution(
    NeuronMethod[NeuronDeconvolutionParams], GuidedMethod[NeuronDeconvolutionParams]
):
    """Deconvnet from one neuron (target ignored).

    Zeiler and Fergus 2014.
    """

    name = "captum.neuron_deconvolution"
    captum_class = "NeuronDeconvolution"
    guided_attribute = "deconv"
    paper = "https://arxiv.org/abs/1311.2901"


class _LastCallReachedError(Exception):
    """Stops a forward pass once the layer has run for the last time."""


class NeuronValue:
    """One neuron's value per input, as Captum's ``NeuronFeatureAblation`` reads it: the
    layer's output (the first tensor of a tuple) at the layer's last call in the
    forward pass, indexed by ``selector`` completed to the output's shape
    (:func:`~esegeta_captum.shapes.full_neuron_index`), with the rest of the forward
    pass skipped.

    Every batch runs only up to the layer's last call (:func:`layer_output` when the
    layer runs once, the usual case) once it is known how often the layer runs in one
    forward pass: from the job's prediction pass (``target=None``, see
    :mod:`esegeta_core.layer_calls`), else from the first batch (:meth:`_count`), whose
    rows go on after the layer as one row only, to count the calls that follow. No
    separate probe pass."""

    def __init__(
        self, model: nn.Module, layer: nn.Module, selector: tuple[int, ...], method: str
    ) -> None:
        self.model, self.layer, self.selector, self.method = model, layer, selector, method
        self.calls: int | None = layer_calls.calls(layer)
        """How often the layer runs in one forward pass (None: not seen yet; the job's
        prediction pass counts it when it runs one)."""
        self.index: tuple[int, ...] | None = None

    def _pick(self, output: object) -> torch.Tensor:
        """The neuron's values ``(N,)`` in a layer output, the index completed from the
        first output seen."""
        value = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(value, torch.Tensor):
            raise InvalidParamsError(
                f"Method {self.method!r}: the layer returns {type(value).__name__}, not a "
                "tensor; pick a layer that outputs a feature map."
            )
        if self.index is None:
            self.index = full_neuron_index(self.selector, tuple(value.shape[1:]), self.method)
        return value[(slice(None), *self.index)].clone()

    def _run(self, x: torch.Tensor, stop: int | None) -> torch.Tensor:
        """The neuron's values at the layer's last call: the forward pass stops after
        call ``stop``, or runs whole (``None``), counting the calls."""
        seen: list[torch.Tensor] = []

        def hook(_m: nn.Module, _args: tuple[object, ...], output: object) -> None:
            seen.append(self._pick(output))
            if len(seen) == stop:
                raise _LastCallReachedError

        handle = self.layer.register_forward_hook(hook)
        try:
            self.model(x)
        except _LastCallReachedError:
            pass
        finally:
            handle.remove()
        if not seen:
            raise InvalidParamsError(
                f"Method {self.method!r}: the layer is not used in the model's forward pass."
            )
        if stop is None:
            self.calls = len(seen)
        return seen[-1]

    def _count(self, x: torch.Tensor) -> torch.Tensor:
        """The first batch, which counts the layer's calls: its rows' values at the
        layer's first call, the pass going on after it with the first row only (the
        layers after the layer are not needed, only whether it runs again: a ResNet-50
        neuron at ``layer3``, 17 inputs at 64 px, 2 CPU threads: 44 ms instead of 54 ms
        whole). A layer that runs again needs its last call's values: the batch runs
        again, stopping there. Where the rest of the model refuses one row (a skip
        connection that concatenates), the pass runs whole instead. A token or
        channels-last layer is read through the core's channels-first view, which maps
        back onto the layer's own output (every row): the cut is made after that, on
        the output of the tap that holds the view."""
        rows = x.shape[0]
        seen: list[torch.Tensor] = []
        later = 0  # calls after a one-row cut
        site = _cut_site(self.model, self.layer)

        def cut(output: object) -> object:
            nonlocal later
            smaller = _one_row(output, rows) if rows > 1 else None
            if smaller is not None:
                later = 1  # counts the first call; the rest of the pass has one row
            return smaller

        def hook(_m: nn.Module, _args: tuple[object, ...], output: object) -> object:
            nonlocal later
            if later:
                later += 1
                return None
            seen.append(self._pick(output))
            return cut(output) if len(seen) == 1 and site is self.layer else None

        def site_hook(_m: nn.Module, _args: tuple[object, ...], output: object) -> object:
            return cut(output) if len(seen) == 1 and not later else None

        handles = [self.layer.register_forward_hook(hook)]
        if site is not self.layer:
            handles.append(site.register_forward_hook(site_hook))
        try:
            self.model(x)
        except (torch.cuda.OutOfMemoryError, EsegetaError):
            raise
        except Exception as exc:  # any failure only rules the one-row cut out
            if not later:
                raise
            log.debug("%s: the model refuses one row after the layer (%s)", self.method, exc)
            return self._run(x, None)
        finally:
            for handle in handles:
                handle.remove()
        if not seen:
            raise InvalidParamsError(
                f"Method {self.method!r}: the layer is not used in the model's forward pass."
            )
        if not later:  # not cut: every call seen with every row
            self.calls = len(seen)
            return seen[-1]
        self.calls = later
        return seen[0] if later == 1 else self._run(x, later)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls is None:  # the first batch shows the calls and the output shape
            return self._count(x)
        if self.calls > 1:
            return self._run(x, self.calls)
        output = layer_output(self.model, self.layer, x, method=self.method, first_of_tuple=True)
        return self._pick(output)


def _cut_site(model: nn.Module, layer: nn.Module) -> nn.Module:
    """Where the counting pass cuts the batch to one row: ``layer``, or, for the core's
    channels-first view of a token or channels-last layer, the tap that holds it (the
    view is mapped back onto the layer's output, which keeps every row)."""
    if isinstance(layer, LayoutView):
        for module in model.modules():
            if isinstance(module, Tap) and module.view is layer:
                return module
    return layer


def _one_row(output: object, rows: int) -> object | None:
    """``output`` cut to its first row (a tensor, or the first tensor of a tuple or
    list), or None where it does not have ``rows`` rows."""
    if isinstance(output, torch.Tensor):
        return output[:1] if output.ndim and output.shape[0] == rows else None
    if type(output) in (tuple, list) and output:  # not a named tuple: its class rebuilds it
        first = _one_row(output[0], rows)  # type: ignore[index]
        return None if first is None else type(output)([first, *output[1:]])  # type: ignore[index]
    return None


def _int_tuple(selector: object) -> bool:
    """Whether ``selector`` is a non-empty tuple of ints (no slices, no callable)."""
    return (
        isinstance(selector, tuple)
        and len(selector) > 0
        and all(isinstance(i, int) and not isinstance(i, bool) for i in selector)
    )


class NeuronFeatureAblation(
    NeuronMethod[NeuronFeatureAblationParams], PerturbationMethod[NeuronFeatureAblationParams]
):
    """Change of one neuron's value when input features are ablated (target ignored).

    Feature ablation (Zeiler and Fergus 2014) applied to a neuron. The core's ablation
    engine runs it with the neuron's value as the model (:class:`NeuronValue`): each
    perturbed input runs only up to the layer, not through the whole model.
    """

    name = "captum.neuron_feature_ablation"
    forward_only = False  # Captum's own path hooks the layer without a tap
    captum_class = "NeuronFeatureAblation"
    family = "neuron"
    cost = "high"
    paper = "https://arxiv.org/abs/1311.2901"
    own_passes = True
    _plain: tuple[torch.Tensor, nn.Module, torch.Tensor] | None = None
    """The inputs, layer and neuron values the core's prediction pass read."""

    def prediction_pass(
        self, model: nn.Module, inputs: torch.Tensor, params: NeuronFeatureAblationParams
    ) -> torch.Tensor | None:
        """With ``target=None`` the core's prediction pass runs the plain inputs
        through the whole model: it also reads the neuron's value there (at the layer's
        last call), the ablation engine's unperturbed row, which then does not run
        again (ResNet-50 at 64 px: 17 passes to ``layer3`` become 16)."""
        self._plain = None
        selector = params.neuron_selector
        if params.attribute_to_neuron_input or not _int_tuple(selector):
            return None
        layer = resolve_layer(model, params.layer, method=self.name)
        with recording([layer]) as records:
            scores = model(inputs)
        outputs = records[0]
        if outputs:
            value = outputs[-1]
            value = value[0] if isinstance(value, (tuple, list)) and value else value
            if isinstance(value, torch.Tensor) and value.ndim >= 2:
                index = full_neuron_index(selector, tuple(value.shape[1:]), self.name)
                self._plain = (inputs, layer, value[(slice(None), *index)].detach().clone())
        return scores

    def call_kwargs(self, call: Call, params: NeuronFeatureAblationParams) -> dict[str, Any]:
        """The neuron as given: its index is completed where the layer's output is first
        seen (the engine's first pass, or a probe pass before Captum), not in a probe
        pass of its own. On the layer's input, as before (Captum's only)."""
        if params.attribute_to_neuron_input:
            return super().call_kwargs(call, params)
        # every argument but the neuron's, from the pieces after NeuronParams
        kwargs = super(NeuronParams, params).call_kwargs(call)
        kwargs["neuron_selector"] = params.neuron_selector
        kwargs["attribute_to_neuron_input"] = False
        return kwargs

    def run(
        self,
        algorithm: Any,
        inputs: torch.Tensor,
        kwargs: dict[str, Any],
        params: NeuronFeatureAblationParams,
    ) -> Any:
        """The core's ablation engine on the neuron's value when it reproduces the call
        (a tuple of ints as selector, on the layer's output, a feature mask and baseline
        the engine takes), else Captum (a tuple of ints completed first)."""
        selector = kwargs.get("neuron_selector")
        on_output = kwargs.get("attribute_to_neuron_input", False) is False
        layer = getattr(algorithm, "layer", None)
        found = None
        if (
            _int_tuple(selector)
            and on_output
            and isinstance(layer, nn.Module)
            and getattr(algorithm, "device_ids", None) is None
        ):
            rest = {k: v for k, v in kwargs.items() if k != "attribute_to_neuron_input"}
            found = engine_mask(
                algorithm, inputs, rest, frozenset({"feature_mask", "neuron_selector"})
            )
        if found is None:
            if _int_tuple(selector) and on_output and isinstance(layer, nn.Module):
                shape = module_shape(algorithm.forward_func, layer, inputs, False, self.name)
                selector = full_neuron_index(selector, shape, self.name)
                kwargs = {**kwargs, "neuron_selector": selector}
            return algorithm.attribute(inputs, **kwargs)
        batch, mask = found
        plain, self._plain = self._plain, None  # a prediction pass serves one call
        initial = None
        if plain is not None and plain[0] is inputs and plain[1] is layer:
            initial = plain[2]
        return feature_ablation(
            NeuronValue(algorithm.forward_func, layer, selector, self.name),
            inputs,
            None,
            feature_mask=mask,
            baselines=kwargs.get("baselines"),
            batch_size=batch,
            kind=("neuron", id(layer)),
            initial=initial,
        )


NEURON: list[type[CaptumMethod]] = [
    NeuronGradient,
    NeuronIntegratedGradients,
    NeuronConductance,
    NeuronDeepLift,
    NeuronDeepLiftShap,
    NeuronGradientShap,
    NeuronGuidedBackprop,
    NeuronDeconvolution,
    NeuronFeatureAblation,
]

"""Shared fixtures: a small in-code plugin ("demo") that exercises the core's contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

import esegeta_core as ec
from esegeta_core import Explainer, LayerPath, MethodParams, MethodResult, hookimpl


class GradParams(MethodParams):
    scale: float = Field(1.0, gt=0, description="Multiplier applied to the map.")


class GradXInput(Explainer):
    """Gradient times input (https://arxiv.org/abs/1605.01713)."""

    name = "demo.grad_x_input"
    Params = GradParams

    def attribute(self, model, inputs, target, params):
        x = inputs.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
        return grad * inputs * params.scale


class LayerParams(MethodParams):
    layer: LayerPath = Field(description="Layer whose activations are returned.")


class LayerMean(Explainer):
    """Channel-mean activation of a layer, at the layer's resolution."""

    name = "demo.layer_mean"
    Params = LayerParams
    family = "layer"
    output = "layer"
    needs_layer = True

    def attribute(self, model, inputs, target, params):
        layer = ec.resolve_layer(model, params.layer)
        seen = []
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            model(inputs)
        finally:
            handle.remove()
        return MethodResult(seen[0].mean(1, keepdim=True), layer=params.layer)


class Flat2D(Explainer):
    """A 2D-only method (like TorchRay's RISE)."""

    name = "demo.flat2d"
    family = "gradient"
    ranks = (2,)

    def attribute(self, model, inputs, target, params):
        return torch.zeros_like(inputs)


class NoiseParams(MethodParams):
    samples: int = Field(4, ge=1, description="Noise samples.")


class Noisy(Explainer):
    """Random maps; deterministic only under a seed."""

    name = "demo.noisy"
    Params = NoiseParams
    family = "perturbation"
    deterministic = False

    def attribute(self, model, inputs, target, params):
        return sum(torch.randn_like(inputs) for _ in range(params.samples))


class Leaky(Explainer):
    """Leaves a forward hook and the model in train mode (a buggy plugin)."""

    name = "demo.leaky"

    def attribute(self, model, inputs, target, params):
        ec.unwrap(model).register_forward_hook(lambda m, i, o: None)
        model.train()
        for p in model.parameters():
            p.requires_grad_(False)
        return F.pad(inputs, (0, 0)) * 0


class Broken(Explainer):
    """Raises inside attribute."""

    name = "demo.broken"

    def attribute(self, model, inputs, target, params):
        raise RuntimeError("backend exploded")


class ChunkParams(MethodParams):
    chunk: int = Field(64, ge=1, description="Samples per internal batch.")
    oom_above: int = Field(1 << 30, ge=0, description="Simulate OOM above this chunk.")


class Chunky(Explainer):
    """Gradient x input whose internal batch can run out of memory (simulated)."""

    name = "demo.chunky"
    Params = ChunkParams
    batch_params = ("chunk",)

    def attribute(self, model, inputs, target, params):
        if params.chunk > params.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return GradXInput().attribute(model, inputs, target, GradParams()) + params.chunk * 0


class DrawnChunky(Chunky):
    """:class:`Chunky` whose ``chunk`` would decide a random draw."""

    name = "demo.drawn_chunky"

    def drawn_with(self, params):
        return ("chunk",)


class AmpFragile(Explainer):
    """Gradient x input that overflows (NaN) under autocast."""

    name = "demo.amp_fragile"

    def attribute(self, model, inputs, target, params):
        out = GradXInput().attribute(model, inputs, target, GradParams())
        if torch.is_autocast_enabled(inputs.device.type):
            out = out * float("nan")
        return out


DEMO_METHODS = [
    GradXInput,
    LayerMean,
    Flat2D,
    Noisy,
    Leaky,
    Broken,
    Chunky,
    DrawnChunky,
    AmpFragile,
]


class DemoPlugin:
    @hookimpl
    def esegeta_register_methods(self):
        return DEMO_METHODS


@pytest.fixture
def demo() -> Iterator[None]:
    """Register the in-code demo plugin for one test."""
    ec.register_plugin(DemoPlugin(), "demo")
    try:
        yield
    finally:
        ec.unregister_plugin("demo")

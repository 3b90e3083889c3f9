"""A third-party esegeta plugin: gradient times input, scaled (the README's example)."""

from __future__ import annotations

import torch
from pydantic import Field

from esegeta_core import Explainer, MethodParams, hookimpl


class TimesInputParams(MethodParams):
    scale: float = Field(1.0, gt=0, description="Multiplier applied to the map.")


class TimesInput(Explainer):
    """Gradient times input, scaled (https://arxiv.org/abs/1605.01713)."""

    name = "acme.times_input"
    Params = TimesInputParams
    family = "gradient"
    ranks = (2, 3)
    paper = "https://arxiv.org/abs/1605.01713"

    def attribute(self, model, inputs, target, params):
        x = inputs.clone().requires_grad_(True)
        score = model(x).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
        return grad * inputs * params.scale


@hookimpl
def esegeta_register_methods():
    return [TimesInput]

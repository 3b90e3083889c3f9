"""The plugin's shared pieces: one parameter module, the rule mixin, the gradient and
layer-image bases, the filter helpers."""

from __future__ import annotations

import pytest
import torch
from esegeta_cnnvis import params
from esegeta_cnnvis.filters import check_filter, filter_mean
from esegeta_cnnvis.gradients import GradientMethod
from esegeta_cnnvis.relu_rules import ActivationRuleMethod
from esegeta_cnnvis.visualizations import LayerImageMethod, LayerVisualization
from torch import nn

from esegeta_core import InvalidParamsError, NotApplicableError, get_registry
from esegeta_core.testing import tiny_input, tiny_model


def _cnnvis_methods() -> list[type]:
    registry = get_registry()
    return [cls for name, cls in registry.methods.items() if registry.plugin_of[name] == "cnnvis"]


def test_every_parameter_model_lives_in_params() -> None:
    for cls in _cnnvis_methods():
        assert cls.Params.__module__ == params.__name__, cls.name
        assert getattr(params, cls.Params.__name__) is cls.Params


def test_gate_methods_share_the_rule_mixin() -> None:
    gated = [cls for cls in _cnnvis_methods() if cls.model_rules == "gates"]
    assert gated and all(issubclass(cls, ActivationRuleMethod) for cls in gated)
    assert all(
        cls.model_rules == "gates"
        for cls in _cnnvis_methods()
        if issubclass(cls, ActivationRuleMethod)
    )
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    for cls in gated:
        cls().check_model(linear, cls.Params(), None)  # no trace: nothing to check
        with pytest.raises(NotApplicableError, match="plain gradient"):
            cls().check_model(linear, cls.Params(), object())


def test_bases_type_their_params() -> None:
    gradient = [cls for cls in _cnnvis_methods() if issubclass(cls, GradientMethod)]
    assert all(issubclass(cls.Params, params.GradientParams) for cls in gradient)
    images = [cls for cls in _cnnvis_methods() if issubclass(cls, LayerImageMethod)]
    assert {cls.family for cls in images} == {"visualization"}


def test_layer_image_activation_is_the_layer_output() -> None:
    model, x = tiny_model("classification", 2), tiny_input("classification", 2)
    layer = model.get_submodule(model.conv_layer)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            act = LayerVisualization().activation(model, model.conv_layer)(x)
    finally:
        handle.remove()
    torch.testing.assert_close(act, seen[0])


def test_filter_helpers() -> None:
    act = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 2, 2)
    torch.testing.assert_close(filter_mean(act, 1), act[:, 1].flatten(1).mean(1))
    torch.testing.assert_close(filter_mean(act, None), act.pow(2).flatten(1).mean(1))
    check_filter(act, 2, "conv", "m")
    check_filter(act, None, "conv", "m")
    with pytest.raises(InvalidParamsError, match="has 3 channels"):
        check_filter(act, 3, "conv", "m")

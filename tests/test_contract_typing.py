"""The contract types itself: ``Explainer[P]`` sets ``Params`` and types every hook's
``params``; the hook markers keep the decorated function's type."""

from __future__ import annotations

import typing

import pytest
import torch
from pydantic import Field

from esegeta_core import Explainer, MethodParams, explain, hookimpl
from esegeta_core.plugin.manager import register_plugin, unregister_plugin


class ScaleParams(MethodParams):
    factor: float = Field(2.0, description="what the input is multiplied by")


class Scale(Explainer[ScaleParams]):
    """The input times a factor (a test method)."""

    name = "typed.scale"

    def attribute(self, model, inputs, target, params: ScaleParams) -> torch.Tensor:
        return inputs * params.factor


class Base(Explainer[ScaleParams]):
    name = "typed.base"

    def attribute(self, model, inputs, target, params: ScaleParams) -> torch.Tensor:
        return inputs


def test_the_type_argument_sets_params():
    assert Scale.Params is ScaleParams
    hints = typing.get_type_hints(Explainer.attribute)
    assert hints["params"].__name__ == "P"


def test_a_subclass_may_narrow_params_but_not_contradict_them():
    class Wider(ScaleParams):
        extra: int = Field(0, description="another option")

    class Narrowed(Base):
        Params = Wider

    assert Narrowed.Params is Wider
    with pytest.raises(TypeError, match=r"declared Explainer\[ScaleParams\]"):

        class Wrong(Explainer[ScaleParams]):
            Params = MethodParams

            def attribute(self, model, inputs, target, params):
                return inputs


def test_a_typed_method_runs_through_explain():
    @hookimpl
    def esegeta_register_methods():
        return [Scale]

    class Plugin:
        pass

    Plugin.esegeta_register_methods = staticmethod(esegeta_register_methods)
    register_plugin(Plugin, name="typed")
    try:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
        x = torch.rand(1, 3, 2, 2)
        out = explain(model, x, "typed.scale", target=0, factor=3.0, progress=False)
        assert torch.allclose(out.attributions, x * 3.0)
    finally:
        unregister_plugin("typed")


def test_hookimpl_keeps_the_function_and_marks_it():
    def esegeta_register_methods() -> list[type[Explainer]]:
        return []

    marked = hookimpl(esegeta_register_methods)
    assert marked is esegeta_register_methods and hasattr(marked, "esegeta_impl")

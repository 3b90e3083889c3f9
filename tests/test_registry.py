"""Plugin discovery: entry points loaded one by one, failures isolated, duplicates and
contract breaks reported with both names, ESEGETA_DISABLED_PLUGINS honoured."""

from __future__ import annotations

import sys
import types
from importlib import metadata

import pytest
from pydantic import Field

import esegeta_core as ec
from esegeta_core import Explainer, MethodParams, hookimpl
from esegeta_core.plugin import manager


def _plugin_module(name: str, *classes: type) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def esegeta_register_methods():
        return list(classes)

    module.esegeta_register_methods = esegeta_register_methods
    return module


def _method(method_name: str, params: type[MethodParams] = MethodParams) -> type[Explainer]:
    class M(Explainer):
        """A test method."""

        name = method_name
        Params = params

        def attribute(self, model, inputs, target, p):
            return inputs

    return M


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Install fake entry points whose modules live in sys.modules."""
    installed: list[metadata.EntryPoint] = []

    def add(ep_name: str, module_name: str, module: types.ModuleType | None) -> None:
        if module is not None:
            monkeypatch.setitem(sys.modules, module_name, module)
        installed.append(metadata.EntryPoint(ep_name, module_name, "esegeta"))

    monkeypatch.setattr(manager, "_entry_points", lambda: list(installed))
    return add


def test_entry_points_are_loaded_and_a_broken_one_is_isolated(fake_entry_points):
    fake_entry_points("alpha", "alpha_mod", _plugin_module("alpha_mod", _method("alpha.one")))
    fake_entry_points("beta", "beta_mod_missing", None)  # import fails
    registry = manager.build_registry()
    assert list(registry.methods) == ["alpha.one"]
    assert registry.plugin("alpha.one") == "alpha"
    assert "beta" in registry.failures
    assert "ModuleNotFoundError" in registry.failures["beta"].error
    with pytest.raises(ec.PluginLoadError, match="beta.*failed to load.*beta_mod_missing") as info:
        registry.get("beta.anything")
    assert isinstance(info.value, ImportError)


def test_a_plugin_whose_hook_raises_is_isolated(fake_entry_points):
    bad = types.ModuleType("bad_mod")

    @hookimpl
    def esegeta_register_methods():
        raise RuntimeError("registration exploded")

    bad.esegeta_register_methods = esegeta_register_methods
    fake_entry_points("bad", "bad_mod", bad)
    fake_entry_points("alpha", "alpha_mod", _plugin_module("alpha_mod", _method("alpha.one")))
    registry = manager.build_registry()
    assert "alpha.one" in registry.methods
    assert "registration exploded" in registry.failures["bad"].error


def test_a_name_claimed_by_two_plugins_does_not_break_the_registry(fake_entry_points):
    # this used to raise PluginConflictError from build_registry, so no method worked
    alpha_m = _method("alpha.m")
    fake_entry_points("alpha", "alpha_mod", _plugin_module("alpha_mod", alpha_m))
    beta = _plugin_module("beta_mod", _method("alpha.m"), _method("beta.ok"))
    fake_entry_points("beta", "beta_mod", beta)
    registry = manager.build_registry()
    assert registry.get("alpha.m") is alpha_m  # the owner of the namespace keeps it
    assert registry.plugin("beta.ok") == "beta"
    (refused,) = registry.refused
    assert (refused.plugin, refused.method) == ("beta", "alpha.m")


def test_duplicate_method_names_name_both_plugins(fake_entry_points):
    fake_entry_points("alpha", "alpha_mod", _plugin_module("alpha_mod", _method("alpha.m")))
    fake_entry_points("alpha", "alpha2_mod", _plugin_module("alpha2_mod", _method("alpha.m")))
    registry = manager.build_registry()
    assert "alpha.m" not in registry.methods
    with pytest.raises(ec.PluginConflictError, match="alpha_mod.*alpha2_mod") as info:
        registry.get("alpha.m")
    assert "ESEGETA_DISABLED_PLUGINS" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_duplicate_name_disables_only_that_method_and_is_reported_once(fake_entry_points, caplog):
    first = _plugin_module("alpha_mod", _method("alpha.m"), _method("alpha.own"))
    second = _plugin_module("alpha2_mod", _method("alpha.m"), _method("alpha.other"))
    fake_entry_points("alpha", "alpha_mod", first)
    fake_entry_points("alpha", "alpha2_mod", second)
    with caplog.at_level("WARNING"):
        registry = manager.build_registry()
    assert {"alpha.own", "alpha.other"} <= set(registry.methods)  # the rest works
    assert "alpha.m" not in registry.methods and list(registry.conflicts) == ["alpha.m"]
    told = [r for r in caplog.records if "'alpha.m' is registered 2 times" in r.getMessage()]
    assert len(told) == 1 and len(registry.warnings) == 1


def test_disabled_plugins_are_skipped(fake_entry_points, monkeypatch):
    fake_entry_points("alpha", "alpha_mod", _plugin_module("alpha_mod", _method("alpha.one")))
    fake_entry_points("beta", "beta_mod", _plugin_module("beta_mod", _method("beta.two")))
    monkeypatch.setenv("ESEGETA_DISABLED_PLUGINS", "beta, gamma")
    registry = manager.build_registry()
    assert list(registry.methods) == ["alpha.one"]
    with pytest.raises(ec.MethodNotFoundError, match="disabled by ESEGETA_DISABLED_PLUGINS"):
        registry.get("beta.two")


class Undocumented(MethodParams):
    steps: int = 5


class Documented(MethodParams):
    steps: int = Field(5, description="Steps.")


class Reserved(MethodParams):
    seed: int = Field(0, description="Clashes with explain(seed=...).")


def _batched(name):
    cls = _method(name, Documented)
    cls.batch_params = ("chunk",)
    return cls


def _passes(name, own):
    cls = _method(name, Documented)
    cls.batch_params = ("steps",)
    if own:
        cls.own_passes = True  # without pass_params
    else:
        cls.pass_params = ("other",)
    return cls


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (_method("alpha.reserved", Reserved), "reserved by explain()"),
        (_batched("alpha.batched"), "batch_params names chunk"),
        (_passes("alpha.passes", own=False), "pass_params names other"),
        (_passes("alpha.own", own=True), "own_passes needs"),
        (_method("alpha.undocumented", Undocumented), "missing for steps"),
        (object, "not an Explainer subclass"),
    ],
)
def test_contract_breaks_are_reported_as_plugin_failures(fake_entry_points, bad, fragment):
    fake_entry_points("alpha", "alpha_mod", _plugin_module("alpha_mod", bad))
    fake_entry_points("ok", "ok_mod", _plugin_module("ok_mod", _method("ok.fine", Documented)))
    registry = manager.build_registry()
    assert "ok.fine" in registry.methods
    assert fragment in registry.failures["alpha"].error


def test_short_names_and_ambiguity(fake_entry_points):
    fake_entry_points("alpha", "alpha_mod", _plugin_module("alpha_mod", _method("alpha.saliency")))
    fake_entry_points(
        "beta",
        "beta_mod",
        _plugin_module("beta_mod", _method("beta.saliency"), _method("beta.rise")),
    )
    registry = manager.build_registry()
    assert registry.get("rise").name == "beta.rise"
    with pytest.raises(ec.AmbiguousMethodError, match="alpha.saliency, beta.saliency"):
        registry.get("saliency")


def test_layer_fields_are_found_in_params():
    class P(MethodParams):
        layer: ec.LayerPath = Field(description="A layer.")
        layers: list[ec.LayerPath] = Field(default_factory=list, description="Layers.")
        other: str = Field("x", description="Not a layer.")

    assert P.layer_fields() == ["layer", "layers"]


def test_list_methods_records(demo):
    records = {m.name: m for m in ec.list_methods(plugin="demo")}
    info = records["demo.layer_mean"]
    assert info.plugin == "demo" and info.family == "layer" and info.needs_layer
    assert info.ranks == (2, 3) and info.output == "layer"
    assert info.description == "Channel-mean activation of a layer, at the layer's resolution."
    assert info.schema["properties"]["layer"]["description"]
    assert records["demo.flat2d"].ranks == (2,)
    assert {m.name for m in ec.list_methods(family="layer")} >= {"demo.layer_mean"}


def test_a_misspelt_hook_is_reported_not_ignored(fake_entry_points):
    module = _plugin_module("typo_mod", _method("typo.one"))

    @hookimpl
    def esegeta_register_method():  # one letter short of esegeta_register_methods
        return []

    module.esegeta_register_method = esegeta_register_method
    fake_entry_points("typo", "typo_mod", module)
    fake_entry_points("ok", "ok_mod", _plugin_module("ok_mod", _method("ok.fine")))
    registry = manager.build_registry()
    assert "ok.fine" in registry.methods and "typo.one" not in registry.methods
    error = registry.failures["typo"].error
    assert "esegeta_register_method" in error and "esegeta_register_methods" in error

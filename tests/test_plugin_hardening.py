"""Plugin discovery hardening: unknown names in ESEGETA_DISABLED_PLUGINS warn, a disabled
plugin says how to enable it, a method outside its plugin's namespace is refused alone,
and two plugins claiming one name lose that name only, never the whole registry."""

from __future__ import annotations

import io
import logging
import sys
import types
from importlib import metadata

import pytest
import torch

import esegeta_core as ec
from esegeta_core import Explainer, MethodParams, cli, hookimpl
from esegeta_core.plugin import manager
from esegeta_core.testing import tiny_input, tiny_model


def _module(name: str, *classes: type) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def esegeta_register_methods():
        return list(classes)

    module.esegeta_register_methods = esegeta_register_methods
    return module


def _method(method_name: str, scale: float = 1.0) -> type[Explainer]:
    class M(Explainer):
        """A test method: the input times a constant."""

        name = method_name
        Params = MethodParams

        def attribute(self, model, inputs, target, p):
            return inputs * scale

    M.__qualname__ = f"M_{method_name.replace('.', '_')}"
    return M


@pytest.fixture
def plugins(monkeypatch):
    """Fake entry points (modules in sys.modules) seen by a fresh process-wide registry;
    the real registry comes back when the test ends."""
    installed: list[metadata.EntryPoint] = []

    def add(ep_name: str, module_name: str, *classes: type, missing: bool = False) -> None:
        if not missing:  # a missing module makes the entry point fail to load
            monkeypatch.setitem(sys.modules, module_name, _module(module_name, *classes))
        installed.append(metadata.EntryPoint(ep_name, module_name, "esegeta"))

    monkeypatch.setattr(manager, "_entry_points", lambda: list(installed))
    monkeypatch.setattr(manager, "_cached", None)
    monkeypatch.setattr(manager, "_extra", [])
    monkeypatch.delenv(manager.DISABLE_ENV, raising=False)
    return add


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


# 1. unknown names in ESEGETA_DISABLED_PLUGINS


def test_unknown_disabled_name_warns_with_known_names_and_a_suggestion(
    plugins, monkeypatch, caplog
):
    plugins("captum", "fake_captum", _method("captum.saliency"))
    plugins("alpha", "alpha_mod", _method("alpha.one"))
    monkeypatch.setenv("ESEGETA_DISABLED_PLUGINS", "captun, alpha")
    with caplog.at_level(logging.WARNING, logger="esegeta_core.plugin.manager"):
        registry = ec.get_registry(refresh=True)
    assert registry.unknown_disabled == ["captun"]
    assert registry.disabled == ["alpha"]
    assert list(registry.methods) == ["captum.saliency"]  # the typo disabled nothing
    (warning,) = [r.getMessage() for r in caplog.records if "captun" in r.getMessage()]
    assert "ESEGETA_DISABLED_PLUGINS" in warning and "Did you mean 'captum'?" in warning
    assert "Installed plugins: alpha, captum" in warning
    assert warning in registry.warnings
    code, text = _cli("methods")
    assert code == 0 and "captun" in text and "Did you mean 'captum'?" in text


# 2. a disabled plugin says so, and how to enable it


def test_explain_of_a_disabled_plugin_says_how_to_enable_it(plugins, monkeypatch):
    plugins("alpha", "alpha_mod", _method("alpha.one"))
    plugins("beta", "beta_mod", _method("beta.two"))
    plugins("delta", "delta_mod", _method("delta.three"))
    monkeypatch.setenv("ESEGETA_DISABLED_PLUGINS", "beta,delta")
    ec.get_registry(refresh=True)
    with pytest.raises(ec.MethodNotFoundError) as info:
        ec.explain(tiny_model(), tiny_input(), "beta.two", target=0)
    message = str(info.value)
    assert "'beta'" in message and "disabled by ESEGETA_DISABLED_PLUGINS" in message
    assert "ESEGETA_DISABLED_PLUGINS=delta" in message  # the value that enables beta only
    monkeypatch.setenv("ESEGETA_DISABLED_PLUGINS", "beta")
    ec.get_registry(refresh=True)
    with pytest.raises(ec.MethodNotFoundError, match="unset ESEGETA_DISABLED_PLUGINS"):
        ec.explain(tiny_model(), tiny_input(), "beta.two", target=0)


def test_cli_methods_plugin_names_a_disabled_failed_or_unknown_plugin(plugins, monkeypatch, capsys):
    plugins("alpha", "alpha_mod", _method("alpha.one"))
    plugins("beta", "beta_mod", _method("beta.two"))
    plugins("gone", "gone_mod_does_not_exist", missing=True)
    monkeypatch.setenv("ESEGETA_DISABLED_PLUGINS", "beta")
    ec.get_registry(refresh=True)

    code, text = _cli("methods", "--plugin", "beta")
    err = capsys.readouterr().err
    assert code == 2 and "No methods installed" not in text
    assert "'beta'" in err and "disabled by ESEGETA_DISABLED_PLUGINS" in err
    assert "unset ESEGETA_DISABLED_PLUGINS" in err

    code, _text = _cli("methods", "--plugin", "gone")
    err = capsys.readouterr().err
    assert code == 2 and "failed to load" in err and "gone_mod_does_not_exist" in err

    code, _text = _cli("methods", "--plugin", "alpah")
    err = capsys.readouterr().err
    assert code == 2 and "Did you mean 'alpha'?" in err

    code, text = _cli("methods", "--plugin", "alpha")
    assert code == 0 and "alpha.one" in text


# 3. a method outside its plugin's namespace is refused, alone


def test_method_outside_the_plugin_prefix_is_refused_and_the_rest_works(plugins, caplog):
    plugins("captum", "fake_captum", _method("captum.saliency", scale=1.0))
    plugins(
        "acme",
        "acme_mod",
        _method("acme.times", scale=3.0),
        _method("captum.saliency", scale=-1.0),  # hijacks another plugin's name
        _method("lime.lime", scale=-1.0),  # a plugin that is not installed
        _method("x", scale=-1.0),  # no namespace at all
    )
    with caplog.at_level(logging.WARNING, logger="esegeta_core.plugin.manager"):
        registry = ec.get_registry(refresh=True)
    assert sorted(registry.methods) == ["acme.times", "captum.saliency"]
    assert registry.plugin("captum.saliency") == "captum"
    assert "acme" not in registry.failures
    refused = {f.method: f for f in registry.refused}
    assert sorted(refused) == ["captum.saliency", "lime.lime", "x"]
    assert all(f.plugin == "acme" and "acme_mod" in f.source for f in refused.values())
    assert "may only register names 'acme.<method>'" in refused["captum.saliency"].error
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "'captum.saliency'" in logged and "'lime.lime'" in logged and "'x'" in logged

    x = tiny_input()
    e = ec.explain(tiny_model(), x, "captum.saliency", target=0)
    assert torch.allclose(e.attributions, x)  # captum's own class, not acme's
    assert torch.allclose(ec.explain(tiny_model(), x, "acme.times", target=0).attributions, 3 * x)
    with pytest.raises(ec.PluginConflictError, match="Plugin 'acme'.*'acme.lime'"):
        ec.explain(tiny_model(), x, "lime.lime", target=0)
    with pytest.raises(ec.PluginConflictError, match="Plugin 'acme'.*'acme.x'"):
        ec.explain(tiny_model(), x, "x", target=0)
    code, text = _cli("methods")
    assert code == 0 and "'lime.lime'" in text and "acme.times" in text


def test_installed_plugins_all_stay_inside_their_namespace():
    registry = ec.get_registry(refresh=True)
    assert registry.refused == [] and registry.conflicts == {}
    for method, plugin in registry.plugin_of.items():
        assert method.startswith(plugin + "."), (method, plugin)


# 4. two claims of one name: that name only is unavailable


def test_two_plugins_claiming_one_name_lose_it_and_nothing_else(plugins, caplog):
    plugins("alpha", "alpha_mod", _method("alpha.m", 1.0), _method("alpha.one", 2.0))
    plugins("alpha", "alpha_fork_mod", _method("alpha.m", -1.0), _method("alpha.two", 3.0))
    plugins("beta", "beta_mod", _method("beta.ok", 4.0))
    with caplog.at_level(logging.WARNING, logger="esegeta_core.plugin.manager"):
        registry = ec.get_registry(refresh=True)  # used to raise PluginConflictError
    assert sorted(registry.methods) == ["alpha.one", "alpha.two", "beta.ok"]
    conflict = registry.conflicts["alpha.m"]
    assert conflict.plugins == ("alpha", "alpha")
    assert "alpha_mod" in conflict.error and "alpha_fork_mod" in conflict.error
    assert any("alpha.m" in r.getMessage() for r in caplog.records)
    assert any("alpha.m" in w for w in registry.warnings)

    x = tiny_input()
    for name, scale in [("alpha.one", 2.0), ("alpha.two", 3.0), ("beta.ok", 4.0)]:
        assert torch.allclose(ec.explain(tiny_model(), x, name, target=0).attributions, scale * x)
    with pytest.raises(ec.PluginConflictError) as info:
        ec.explain(tiny_model(), x, "alpha.m", target=0)
    message = str(info.value)
    assert "alpha_mod" in message and "alpha_fork_mod" in message
    assert "Uninstall one" in message and "ESEGETA_DISABLED_PLUGINS" in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(ec.PluginConflictError, match="alpha_fork_mod"):
        ec.explain(tiny_model(), x, "m", target=0)  # the short name too


def test_in_code_plugin_claiming_an_installed_name_and_a_third_claim(plugins):
    plugins("beta", "beta_mod", _method("beta.ok", 1.0), _method("beta.kept", 2.0))
    plugins("beta", "beta_again_mod", _method("beta.ok", 3.0))

    class InCode:
        @hookimpl
        def esegeta_register_methods(self):
            return [_method("beta.ok", 5.0), _method("beta.new", 6.0)]

    ec.register_plugin(InCode(), "beta")
    registry = ec.get_registry()
    assert sorted(registry.methods) == ["beta.kept", "beta.new"]
    conflict = registry.conflicts["beta.ok"]
    assert len(conflict.plugins) == 3 and "registered in code as beta" in conflict.error
    assert "unregister_plugin('beta')" in conflict.error
    ec.unregister_plugin("beta")
    assert sorted(ec.get_registry().conflicts["beta.ok"].plugins) == ["beta", "beta"]


def test_one_plugin_registering_two_classes_under_one_name(plugins):
    plugins("alpha", "alpha_mod", _method("alpha.m", 1.0), _method("alpha.m", 2.0))
    plugins("alpha2", "alpha2_mod", _method("alpha2.m", 1.0))
    registry = ec.get_registry(refresh=True)
    assert list(registry.methods) == ["alpha2.m"]
    assert "rename one" in registry.conflicts["alpha.m"].error

"""The TorchEsegeta method table agrees with the installed methods.

``esegeta_core.legacy_config.table`` is a static copy of the plugins' parameter names
(so converting needs no plugin installed). Here every entry whose plugin is installed
is checked against the live registry: the method exists, every parameter name the
entry maps to is a field or an alias of the method's ``Params``, and every parameter
the method requires gets a placeholder. A plugin that is not installed skips its case;
with every plugin installed (CI's ``tests`` session) every entry is checked.
"""

from __future__ import annotations

import pytest

import esegeta_core as ec
from esegeta_core.legacy_config import METHODS, Target
from esegeta_core.plugin.manager import Registry

LIBRARIES = sorted(METHODS)
TABLE_SIZE = sum(len(targets) for targets in METHODS.values())


def _installed(plugin: str, registry: Registry) -> bool:
    """Whether the plugin is installed: loaded, failed to load, or disabled (the last
    two fail the check with the registry's reason rather than skip it)."""
    return plugin in registry.plugins or plugin in registry.failures or plugin in registry.disabled


def _mapped(target: Target) -> set[str]:
    """Every esegeta parameter name the entry maps to."""
    return {*target.params, *target.required, *target.preset, *target.renames.values()}


def _problems(target: Target, registry: Registry) -> list[str]:
    """What in the entry disagrees with the installed method (empty: nothing)."""
    cls = registry.methods.get(target.name)
    if cls is None:
        return [f"{target.name}: no such method is registered"]
    params = cls.Params
    aliases = params.all_aliases()
    live = set(params.model_fields) | set(aliases)
    where = f"{params.__module__}.{params.__qualname__}"
    problems = [
        f"{target.name}: {name!r} is neither a field nor an alias of {where}"
        for name in sorted(_mapped(target) - live)
    ]
    required = {name for name, info in params.model_fields.items() if info.is_required()}
    placeholders = {aliases.get(name, name) for name in target.required}
    problems += [
        f"{target.name}: {where} requires {name!r}, which the entry's `required` lacks"
        for name in sorted(required - placeholders)
    ]
    return problems


def _check(library: str, registry: Registry) -> int:
    """Check every entry of a library against the installed plugin of that name;
    return how many entries were checked."""
    registry.require_plugin(library)  # installed but broken or disabled: fail, not skip
    problems: list[str] = []
    checked = 0
    for target in METHODS[library]:
        problems += _problems(target, registry)
        checked += 1
    assert problems == []
    return checked


def test_each_library_lists_methods_of_the_plugin_of_its_name() -> None:
    for library, targets in METHODS.items():
        assert targets, library
        for target in targets:
            assert target.name.split(".", 1)[0] == library, target.name


@pytest.mark.parametrize("library", LIBRARIES)
def test_table_matches_the_installed_methods(library: str) -> None:
    registry = ec.get_registry()
    if not _installed(library, registry):
        pytest.skip(f"plugin {library!r} is not installed")
    assert _check(library, registry) == len(METHODS[library]) > 0


def test_every_entry_is_checked_when_every_plugin_is_installed() -> None:
    registry = ec.get_registry()
    missing = [library for library in LIBRARIES if not _installed(library, registry)]
    if missing:
        pytest.skip(f"plugins not installed: {', '.join(missing)}")
    checked = sum(_check(library, registry) for library in LIBRARIES)
    assert checked == TABLE_SIZE


@pytest.mark.usefixtures("demo")
def test_a_drifted_entry_is_reported() -> None:
    registry = ec.get_registry()
    where = _params_name(registry, "demo.grad_x_input")
    good = Target("demo.grad_x_input", frozenset({"scale"}), renames={"factor": "scale"})
    stale = Target("demo.grad_x_input", frozenset({"scale", "old"}), renames={"x": "gone"})
    no_placeholder = Target("demo.layer_mean", frozenset({"layer"}))
    assert _problems(good, registry) == []
    assert _problems(stale, registry) == [
        f"demo.grad_x_input: 'gone' is neither a field nor an alias of {where}",
        f"demo.grad_x_input: 'old' is neither a field nor an alias of {where}",
    ]
    assert _problems(no_placeholder, registry) == [
        f"demo.layer_mean: {_params_name(registry, 'demo.layer_mean')} requires 'layer', "
        "which the entry's `required` lacks"
    ]
    missing = Target("demo.no_such_method", frozenset())
    assert _problems(missing, registry) == ["demo.no_such_method: no such method is registered"]


def _params_name(registry: Registry, method: str) -> str:
    """The dotted name of a method's ``Params`` class, as the problems name it."""
    params = registry.methods[method].Params
    return f"{params.__module__}.{params.__qualname__}"

"""Discovering plugins and building the method registry.

Each entry point in the group ``esegeta`` is loaded in its own ``try/except``: a
plugin that fails to import is recorded with its error and skipped, so one broken
backend never takes the others down (pluggy's ``load_setuptools_entrypoints`` stops at
the first failure, which is why we load them ourselves). ``ESEGETA_DISABLED_PLUGINS``
(comma separated entry-point names) switches plugins off.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from esegeta_core.errors import (
    AmbiguousMethodError,
    MethodNotFoundError,
    PluginConflictError,
    PluginLoadError,
    did_you_mean,
)
from esegeta_core.explainer import Explainer, MethodParams
from esegeta_core.plugin import PROJECT, spec

log = logging.getLogger(__name__)

DISABLE_ENV = "ESEGETA_DISABLED_PLUGINS"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered, with the reason."""

    plugin: str
    source: str
    error: str
    details: str = ""


@dataclass
class Registry:
    """Every method known to this process, by name, and every plugin that failed."""

    methods: dict[str, type[Explainer]] = field(default_factory=dict)
    plugin_of: dict[str, str] = field(default_factory=dict)
    failures: dict[str, PluginFailure] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)

    def get(self, name: str) -> type[Explainer]:
        """The class registered as ``name``; a unique short name (``"saliency"``) works too."""
        if name in self.methods:
            return self.methods[name]
        short = [m for m in self.methods if m.split(".", 1)[-1] == name]
        if len(short) == 1:
            return self.methods[short[0]]
        if len(short) > 1:
            raise AmbiguousMethodError(
                f"Method name {name!r} is provided by several plugins: "
                + ", ".join(sorted(short))
                + ". Use the full dotted name."
            )
        prefix = name.split(".", 1)[0] if "." in name else ""
        if prefix in self.failures:
            failure = self.failures[prefix]
            raise PluginLoadError(
                f"Method {name!r} belongs to plugin {prefix!r}, which failed to load: "
                f"{failure.error}. Fix or reinstall the plugin ({failure.source}) and retry."
            )
        if prefix in self.disabled:
            raise MethodNotFoundError(
                f"Method {name!r} belongs to plugin {prefix!r}, disabled by {DISABLE_ENV}."
            )
        message = f"Unknown method {name!r}." + did_you_mean(name, self.methods)
        installed = sorted(set(self.plugin_of.values()))
        message += " Installed plugins: " + (", ".join(installed) or "none") + "."
        if self.failures:
            message += (
                " Plugins that failed to load: "
                + "; ".join(f"{f.plugin} ({f.error})" for f in self.failures.values())
                + "."
            )
        message += " Run `esegeta methods` to list every method."
        raise MethodNotFoundError(message)

    def plugin(self, name: str) -> str:
        """The plugin (entry-point name) that registered the method ``name``."""
        return self.plugin_of[self.get(name).name]

    def add(self, plugin: str, classes: Iterable[Any]) -> None:
        """Validate and add a plugin's classes; contract breaks and duplicates raise."""
        for cls in classes:
            _check_contract(plugin, cls)
            other = self.plugin_of.get(cls.name)
            if other is not None and self.methods[cls.name] is not cls:
                raise PluginConflictError(
                    f"Method {cls.name!r} is registered twice: by plugin {other!r} "
                    f"({_where(self.methods[cls.name])}) and by plugin {plugin!r} "
                    f"({_where(cls)}). Uninstall or disable one of them "
                    f"({DISABLE_ENV}={plugin})."
                )
            self.methods[cls.name] = cls
            self.plugin_of[cls.name] = plugin


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_contract(plugin: str, cls: Any) -> None:
    """Raise :class:`PluginConflictError` naming the plugin when ``cls`` breaks the contract."""
    if not (isinstance(cls, type) and issubclass(cls, Explainer)):
        raise PluginConflictError(
            f"Plugin {plugin!r} registered {cls!r}, which is not an Explainer subclass."
        )
    where = f"{_where(cls)} from plugin {plugin!r}"
    if not cls.name or "." not in cls.name:
        raise PluginConflictError(
            f"{where} needs a dotted name such as '{plugin}.my_method' (got {cls.name!r})."
        )
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, MethodParams)):
        raise PluginConflictError(f"{where}: Params must subclass esegeta_core.MethodParams.")
    missing = [n for n, f in cls.Params.model_fields.items() if not f.description]
    if missing:
        raise PluginConflictError(
            f"{where}: every parameter needs a description (Field(..., description=...)); "
            f"missing for {', '.join(missing)}."
        )
    from esegeta_core.api import RESERVED

    clash = sorted(RESERVED & set(cls.Params.model_fields))
    if clash:
        raise PluginConflictError(
            f"{where}: parameter name(s) {', '.join(clash)} are reserved by explain(); rename them."
        )
    unknown = [p for p in cls.batch_params if p not in cls.Params.model_fields]
    if unknown:
        raise PluginConflictError(
            f"{where}: batch_params names {', '.join(unknown)}, which are not parameters."
        )
    if not cls.ranks or any(r not in (2, 3) for r in cls.ranks):
        raise PluginConflictError(f"{where}: ranks must be a subset of (2, 3), got {cls.ranks}.")


def _disabled() -> list[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=PROJECT), key=lambda ep: ep.name)


def build_registry(extra: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Load every entry point of the ``esegeta`` group, one at a time, plus ``extra``
    ``(name, plugin object)`` pairs registered in code, and collect their methods."""
    registry = Registry(disabled=_disabled())
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(spec)
    sources: list[tuple[str, str, Any]] = []
    for ep in _entry_points():
        if ep.name in registry.disabled:
            log.info("plugin %s disabled by %s", ep.name, DISABLE_ENV)
            continue
        source = f"entry point {ep.name} = {ep.value}"
        if ep.dist is not None:
            source += f" in {ep.dist.name} {ep.dist.version}"
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            registry.failures[ep.name] = PluginFailure(
                ep.name, source, f"{type(exc).__name__}: {exc}", traceback.format_exc()
            )
            log.warning("esegeta plugin %s failed to load: %s", ep.name, exc)
            continue
        sources.append((ep.name, source, obj))
    sources.extend((name, f"registered in code as {name}", obj) for name, obj in extra)
    for name, source, obj in sources:
        try:
            pm.register(obj, name=name)
            results = pm.subset_hook_caller(
                "esegeta_register_methods",
                remove_plugins=[p for p in pm.get_plugins() if p is not obj],
            )()
            classes = [cls for batch in results for cls in (batch or ())]
            for cls in classes:
                _check_contract(name, cls)
        except Exception as exc:  # noqa: BLE001 - same isolation for a failing hook
            registry.failures[name] = PluginFailure(
                name, source, f"{type(exc).__name__}: {exc}", traceback.format_exc()
            )
            log.warning("esegeta plugin %s failed to register: %s", name, exc)
            continue
        registry.add(name, classes)
    return registry


_lock = threading.Lock()
_cached: Registry | None = None
_extra: list[tuple[str, Any]] = []


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use (``refresh=True`` rebuilds it)."""
    global _cached
    with _lock:
        if _cached is None or refresh:
            _cached = build_registry(_extra)
        return _cached


def register_plugin(obj: Any, name: str) -> None:
    """Register a plugin object (a module or any object with hook implementations) in
    code, without an entry point: handy in notebooks and tests."""
    _extra.append((name, obj))
    get_registry(refresh=True)


def unregister_plugin(name: str) -> None:
    """Undo :func:`register_plugin`."""
    _extra[:] = [(n, o) for n, o in _extra if n != name]
    get_registry(refresh=True)

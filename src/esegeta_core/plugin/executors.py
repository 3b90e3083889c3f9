"""Executor discovery: the core's ``local`` executor and every plugin's, by name.

The plugin layer finds executors as it finds methods: each entry point of the
``esegeta`` group whose plugin implements ``esegeta_register_executors`` (see
:mod:`esegeta_core.runtime.executor` for the contract an executor keeps).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from pydantic import ValidationError

from esegeta_core.errors import InvalidParamsError, PluginConflictError
from esegeta_core.plugin.manager import DISABLE_ENV, hook_results, loaded_plugins
from esegeta_core.runtime.executor import DEFAULT_EXECUTOR, Executor, LocalExecutor

log = logging.getLogger(__name__)

__all__ = ["executor_options", "executor_sources", "executors", "get_executor"]


def _plugin_executors() -> dict[str, tuple[type[Executor], str]]:
    """``{name: (class, source)}`` from every plugin's ``esegeta_register_executors``."""
    found: dict[str, tuple[type[Executor], str]] = {}
    for plugin, _source, obj in loaded_plugins("executors", in_code=False):
        for cls in hook_results(plugin, obj, "esegeta_register_executors"):
            source = f"plugin {plugin}"
            if not (isinstance(cls, type) and issubclass(cls, Executor)):
                raise PluginConflictError(
                    f"{source}: esegeta_register_executors returned {cls!r}, not an "
                    "esegeta_core.runtime.executor.Executor subclass; return the classes."
                )
            if cls.name == DEFAULT_EXECUTOR or cls.name in found:
                other = "the core" if cls.name == DEFAULT_EXECUTOR else found[cls.name][1]
                raise PluginConflictError(
                    f"{source} registers the executor {cls.name!r}, which {other} "
                    f"registers too; rename it (or disable one plugin with {DISABLE_ENV})."
                )
            found[cls.name] = (cls, source)
    return found


_CACHE: dict[str, type[Executor]] | None = None


def executors(*, refresh: bool = False) -> dict[str, type[Executor]]:
    """Every executor by name: ``local`` first, then the plugins' (cached)."""
    global _CACHE
    if _CACHE is None or refresh:
        _CACHE = {DEFAULT_EXECUTOR: LocalExecutor}
        _CACHE.update({name: cls for name, (cls, _) in sorted(_plugin_executors().items())})
    return dict(_CACHE)


def executor_sources() -> dict[str, str]:
    """``{executor name: entry-point name of its plugin}`` (``core`` for ``local``)."""
    found = {DEFAULT_EXECUTOR: "core"}
    found.update(
        {name: source.removeprefix("plugin ") for name, (_, source) in _plugin_executors().items()}
    )
    return found


def get_executor(name: str, options: dict[str, Any] | None = None) -> Executor:
    """The executor ``name`` with its options validated.

    Raises :class:`InvalidParamsError` naming the executor and the fix for an unknown
    name (with the plugin that provides it when known) or invalid options."""
    known = executors()
    if name not in known:
        missing_ray = name == "ray" and not _installed("esegeta-ray")
        hint = " (pip install esegeta-ray)" if missing_ray else ""
        raise InvalidParamsError(
            f"executor: unknown executor {name!r}{hint}; installed: {', '.join(known)}. "
            "Executors come from plugins (entry-point group 'esegeta', hook "
            "esegeta_register_executors)."
        )
    cls = known[name]
    try:
        parsed = cls.Options.model_validate(options or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(options)'}: {err['msg']}" for err in exc.errors()
        )
        fields = ", ".join(cls.Options.model_fields) or "none"
        raise InvalidParamsError(
            f"executor {name!r}: invalid options: {problems}. Its options: {fields} "
            "(`esegeta executors` lists them)."
        ) from None
    return cls(parsed)


def executor_options(cls: type[Executor]) -> Sequence[tuple[str, str, str]]:
    """``(option, type and default, description)`` rows for ``esegeta executors``."""
    rows = []
    for option, info in cls.Options.model_fields.items():
        kind = getattr(info.annotation, "__name__", str(info.annotation))
        default = "required" if info.is_required() else f"default {info.default!r}"
        rows.append((option, f"{kind}, {default}", info.description or ""))
    return rows


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True

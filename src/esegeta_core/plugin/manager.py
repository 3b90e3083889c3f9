"""Discovering plugins and building the method registry.

Each entry point in the group ``esegeta`` is loaded in its own ``try/except``: a
plugin that fails to import is recorded with its error and skipped, so one broken
backend never takes the others down (pluggy's ``load_setuptools_entrypoints`` stops at
the first failure, which is why we load them ourselves). ``ESEGETA_DISABLED_PLUGINS``
(comma separated entry-point names) switches plugins off; a name there that matches no
plugin is warned about.

A plugin registers names in its own namespace only (plugin ``acme``: ``acme.x``), so it
cannot take over another plugin's method; other names are refused one by one. A name
claimed twice (two distributions with one entry-point name, an in-code plugin over an
installed one) is withdrawn for every claimant. Both are recorded and logged, and the
plugin's other methods keep working.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Iterable, Iterator
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
from esegeta_core.explainer import RESERVED, Explainer, MethodParams
from esegeta_core.plugin import PROJECT, spec
from esegeta_core.targets import TASKS

log = logging.getLogger(__name__)

DISABLE_ENV = "ESEGETA_DISABLED_PLUGINS"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered, with the reason.

    ``method`` is set when only that method was refused (its name is outside the
    plugin's namespace) and the plugin's other methods work.
    """

    plugin: str
    source: str
    error: str
    details: str = ""
    method: str = ""


@dataclass(frozen=True)
class MethodConflict:
    """A method name claimed by several plugins (or twice by one): no claim wins, so the
    name is unavailable until all but one go; the plugins' other methods work."""

    method: str
    plugins: tuple[str, ...]
    sources: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def error(self) -> str:
        """What happened and how to fix it, naming every claim."""
        claims = "; ".join(
            f"plugin {p!r} ({c}, {s})"
            for p, s, c in zip(self.plugins, self.sources, self.classes, strict=True)
        )
        message = (
            f"Method {self.method!r} is registered {len(self.plugins)} times, so it is "
            f"unavailable: {claims}."
        )
        if len(set(zip(self.plugins, self.sources, strict=True))) == 1:
            return (
                f"{message} Plugin {self.plugins[0]!r} returns several classes under one "
                "name: rename one (fix the plugin)."
            )
        in_code = sorted({p for p, s in zip(self.plugins, self.sources) if s.startswith(_IN_CODE)})
        installed = [p for p, s in zip(self.plugins, self.sources) if not s.startswith(_IN_CODE)]
        fixes = []
        if installed:
            names = sorted(set(installed))
            shared = len(names) == 1 and len(installed) > 1
            fixes.append("uninstall one of them (pip uninstall DISTRIBUTION, named above)")
            fixes.append(
                "disable one with "
                + " or ".join(f"{DISABLE_ENV}={p}" for p in names)
                + (f" (this disables every installed plugin named {names[0]!r})" if shared else "")
            )
        if in_code:
            fixes.append(
                "drop the one registered in code with "
                + " or ".join(f"esegeta_core.unregister_plugin({p!r})" for p in in_code)
            )
        fix = ", or ".join(fixes)
        return f"{message} {fix[:1].upper()}{fix[1:]}."


@dataclass
class Registry:
    """Every method known to this process, by name, and every plugin or method that failed.

    ``failures`` holds whole plugins that could not be loaded, ``refused`` single methods
    named outside their plugin's namespace, ``conflicts`` names claimed more than once;
    ``warnings`` says all of that (and unknown names in ``ESEGETA_DISABLED_PLUGINS``) in
    words, for ``esegeta methods``.
    """

    methods: dict[str, type[Explainer]] = field(default_factory=dict)
    plugin_of: dict[str, str] = field(default_factory=dict)
    failures: dict[str, PluginFailure] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    unknown_disabled: list[str] = field(default_factory=list)
    refused: list[PluginFailure] = field(default_factory=list)
    conflicts: dict[str, MethodConflict] = field(default_factory=dict)
    plugins: dict[str, str] = field(default_factory=dict)
    """Plugins that loaded and registered, by name, with where they came from."""
    source_of: dict[str, str] = field(default_factory=dict)
    """Where each method's plugin came from (entry point and distribution, or in code)."""
    warnings: list[str] = field(default_factory=list)

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
        if prefix:  # the owner failed to load or is disabled
            self.require_plugin(prefix, method=name)
        conflicts = [c for c in self.conflicts if name in (c, c.split(".", 1)[-1])]
        if len(conflicts) == 1:
            raise PluginConflictError(self.conflicts[conflicts[0]].error)
        refused = [f for f in self.refused if f.method == name]
        if refused:
            raise PluginConflictError(" ".join(f.error for f in refused))
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

    def require_plugin(self, plugin: str, method: str = "") -> None:
        """Raise when ``plugin`` is unusable: it failed to load (:class:`PluginLoadError`)
        or is disabled by ``ESEGETA_DISABLED_PLUGINS`` (:class:`MethodNotFoundError`, with
        how to enable it). Without ``method`` (``esegeta methods --plugin``) an unknown
        plugin raises too; with it, the caller reports the unknown method."""
        what = f"Method {method!r} belongs to plugin {plugin!r}, which" if method else ""
        what = what or f"Plugin {plugin!r}"
        if plugin in self.plugins:
            return
        if plugin in self.failures:
            failure = self.failures[plugin]
            raise PluginLoadError(
                f"{what} failed to load: {failure.error}. Fix or reinstall the plugin "
                f"({failure.source}) and retry."
            )
        if plugin in self.disabled:
            rest = [p for p in self.disabled if p != plugin]  # unknown names do nothing
            enable = f"{DISABLE_ENV}={','.join(rest)}" if rest else f"unset {DISABLE_ENV}"
            raise MethodNotFoundError(
                f"{what} is disabled by {DISABLE_ENV}={','.join(self.disabled)}. To enable "
                f"it, remove {plugin!r} from that variable (`{enable}`) and start a new "
                "process (or call esegeta_core.get_registry(refresh=True))."
            )
        if not method:
            known = sorted({*self.plugins, *self.failures, *self.disabled})
            raise MethodNotFoundError(
                f"No plugin named {plugin!r}."
                + did_you_mean(plugin, known)
                + " Installed plugins: "
                + (", ".join(known) or "none")
                + ". Install a backend, e.g. `pip install esegeta-captum`."
            )

    def plugin(self, name: str) -> str:
        """The plugin (entry-point name) that registered the method ``name``."""
        return self.plugin_of[self.get(name).name]

    def add(self, plugin: str, classes: Iterable[Any], source: str = "") -> None:
        """Add a plugin's classes (their contract checked by the caller, once, before any
        is added). A name outside ``PLUGIN.`` is refused and a name claimed twice is
        withdrawn (both recorded and logged), so neither takes the plugin's other methods
        or other plugins down."""
        source = source or f"{_IN_CODE} {plugin}"
        self.plugins.setdefault(plugin, source)
        for cls in classes:
            if not cls.name.startswith(plugin + ".") or cls.name == plugin + ".":
                tail = cls.name.rsplit(".", 1)[-1] or "my_method"
                failure = PluginFailure(
                    plugin,
                    source,
                    f"Plugin {plugin!r} registers {_where(cls)} as {cls.name!r}, but it may "
                    f"only register names '{plugin}.<method>', so that method is refused (the "
                    f"plugin's other methods work). Rename it, e.g. '{plugin}.{tail}'.",
                    method=cls.name,
                )
                self.refused.append(failure)
                self._warn(failure.error)
                continue
            first = self.methods.get(cls.name)
            if first is cls:
                continue  # the same class twice is no conflict
            if first is None and cls.name not in self.conflicts:
                self.methods[cls.name] = cls
                self.plugin_of[cls.name] = plugin
                self.source_of[cls.name] = source
                continue
            if first is not None:  # the first claim moves from the methods to the conflict
                self.conflicts[cls.name] = MethodConflict(
                    cls.name,
                    (self.plugin_of.pop(cls.name),),
                    (self.source_of.pop(cls.name),),
                    (_where(self.methods.pop(cls.name)),),
                )
            conflict = self.conflicts[cls.name]
            self.conflicts[cls.name] = MethodConflict(
                cls.name,
                (*conflict.plugins, plugin),
                (*conflict.sources, source),
                (*conflict.classes, _where(cls)),
            )

    def finish(self) -> None:
        """Log and record the conflicts once every plugin is in."""
        for conflict in self.conflicts.values():
            self._warn(conflict.error)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)


_IN_CODE = "registered in code as"


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_contract(plugin: str, cls: Any) -> None:
    """Raise :class:`PluginConflictError` naming the plugin when ``cls`` breaks the contract."""
    if not (isinstance(cls, type) and issubclass(cls, Explainer)):
        raise PluginConflictError(
            f"Plugin {plugin!r} registered {cls!r}, which is not an Explainer subclass."
        )
    where = f"{_where(cls)} from plugin {plugin!r}"
    if not isinstance(cls.name, str):
        raise PluginConflictError(
            f"{where} needs a string name such as '{plugin}.my_method' (got {cls.name!r})."
        )
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, MethodParams)):
        raise PluginConflictError(f"{where}: Params must subclass esegeta_core.MethodParams.")
    missing = [n for n, f in cls.Params.model_fields.items() if not f.description]
    if missing:
        raise PluginConflictError(
            f"{where}: every parameter needs a description (Field(..., description=...)); "
            f"missing for {', '.join(missing)}."
        )
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
    stray = [p for p in cls.pass_params if p not in cls.batch_params]
    if stray:
        raise PluginConflictError(
            f"{where}: pass_params names {', '.join(stray)}, which are not batch_params."
        )
    if cls.own_passes and not cls.pass_params:
        raise PluginConflictError(
            f"{where}: own_passes needs the pass parameter it sizes in pass_params."
        )
    if not cls.ranks or any(r not in (2, 3) for r in cls.ranks):
        raise PluginConflictError(f"{where}: ranks must be a subset of (2, 3), got {cls.ranks}.")
    if not isinstance(cls.min_batch, int) or cls.min_batch < 1:
        raise PluginConflictError(f"{where}: min_batch must be an int >= 1, got {cls.min_batch!r}.")
    if not cls.tasks or any(t not in TASKS for t in cls.tasks):
        raise PluginConflictError(f"{where}: tasks must be a subset of {TASKS}, got {cls.tasks}.")


def _disabled() -> list[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=PROJECT), key=lambda ep: ep.name)


def entry_point_source(ep: metadata.EntryPoint) -> str:
    """Where an entry point's plugin comes from, in words (errors name it)."""
    where = f" in {ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
    return f"entry point {ep.name} = {ep.value}{where}"


def loaded_plugins(what: str, *, in_code: bool = True) -> Iterator[tuple[str, str, Any]]:
    """``(plugin name, source, plugin object)`` of every enabled plugin that loads (then,
    with ``in_code``, of those registered in code), for the hooks other than the
    methods' (executors, commands). A plugin that fails to load is skipped with a debug
    line: the methods registry reports it (``what`` names what is skipped)."""
    disabled = set(_disabled())
    for ep in _entry_points():
        if ep.name in disabled:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - the methods registry reports broken plugins
            log.debug("plugin %s failed to load (%s); its %s are skipped", ep.name, exc, what)
            continue
        yield ep.name, entry_point_source(ep), obj
    if in_code:
        for name, obj in list(_extra):
            yield name, f"{_IN_CODE} {name}", obj


def hook_results(plugin: str, obj: Any, hook: str) -> list[Any]:
    """Everything one plugin's ``hook`` returns, flattened, called in a plugin manager of
    its own (so plugins that share a name or a module cannot clash inside pluggy); []
    when the plugin does not implement it."""
    if not hasattr(obj, hook):
        return []
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(spec)
    pm.register(obj, name=plugin)
    return [item for batch in getattr(pm.hook, hook)() for item in (batch or ())]


def _unknown_disabled(name: str, installed: list[str], in_code: list[str]) -> str:
    """The warning for a name in ``ESEGETA_DISABLED_PLUGINS`` that matches no entry point."""
    if name in in_code:
        return (
            f"{DISABLE_ENV} names {name!r}, a plugin registered in code "
            f"(register_plugin), which {DISABLE_ENV} does not switch off: call "
            f"esegeta_core.unregister_plugin({name!r}) instead."
        )
    return (
        f"{DISABLE_ENV} names {name!r}, which is no installed plugin, so it disables nothing."
        + did_you_mean(name, installed)
        + " Installed plugins: "
        + (", ".join(installed) or "none")
        + " (entry-point names, as `esegeta methods` lists them)."
    )


def _register(name: str, obj: Any) -> list[Any]:
    """Call one plugin's hook, in a plugin manager of its own (so plugins that share a
    name or a module cannot clash inside pluggy), and return its classes."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(spec)
    pm.register(obj, name=name)
    try:  # a hook implementation no specification names (a misspelt hook) is an error
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        hooks = ", ".join(n for n in dir(spec) if n.startswith("esegeta_"))
        raise PluginConflictError(
            f"Plugin {name!r}: {exc}. esegeta's hooks are {hooks}: rename the function "
            "(a misspelt hook would otherwise be ignored without a word)."
        ) from exc
    results = pm.hook.esegeta_register_methods()
    return [cls for batch in results for cls in (batch or ())]


def build_registry(extra: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Load every entry point of the ``esegeta`` group, one at a time, plus ``extra``
    ``(name, plugin object)`` pairs registered in code, and collect their methods."""
    extra = list(extra)
    entry_points = _entry_points()
    installed = sorted({ep.name for ep in entry_points})
    registry = Registry()
    for name in dict.fromkeys(_disabled()):
        if name in installed:
            registry.disabled.append(name)
        else:
            registry.unknown_disabled.append(name)
            registry._warn(_unknown_disabled(name, installed, [n for n, _ in extra]))
    sources: list[tuple[str, str, Any]] = []
    for ep in entry_points:
        if ep.name in registry.disabled:
            log.info("plugin %s disabled by %s", ep.name, DISABLE_ENV)
            continue
        source = entry_point_source(ep)
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            registry.failures[ep.name] = PluginFailure(
                ep.name, source, f"{type(exc).__name__}: {exc}", traceback.format_exc()
            )
            log.warning("esegeta plugin %s failed to load: %s", ep.name, exc)
            continue
        sources.append((ep.name, source, obj))
    sources.extend((name, f"{_IN_CODE} {name}", obj) for name, obj in extra)
    for name, source, obj in sources:
        try:
            classes = _register(name, obj)
            for cls in classes:
                _check_contract(name, cls)
        except Exception as exc:  # noqa: BLE001 - same isolation for a failing hook
            registry.failures[name] = PluginFailure(
                name, source, f"{type(exc).__name__}: {exc}", traceback.format_exc()
            )
            log.warning("esegeta plugin %s failed to register: %s", name, exc)
            continue
        registry.add(name, classes, source)
    registry.finish()
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

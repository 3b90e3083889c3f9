"""What is installed: one :class:`MethodInfo` record per method, read from class
attributes without running anything."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from esegeta_core.explainer import Explainer
from esegeta_core.plugin.manager import PluginFailure, get_registry


@dataclass(frozen=True)
class MethodInfo:
    """The capabilities and parameter schema of one method."""

    name: str
    plugin: str
    family: str
    output: str
    ranks: tuple[int, ...]
    needs_layer: bool
    cost: str
    deterministic: bool
    description: str
    paper: str
    schema: dict[str, Any]
    requirements: tuple[str, ...] = ()
    cost_note: str = ""
    model_rules: str = "none"
    tasks: tuple[str, ...] = ("classification", "segmentation")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def method_info(cls: type[Explainer], plugin: str) -> MethodInfo:
    """The record of one explainer class."""
    return MethodInfo(
        name=cls.name,
        plugin=plugin,
        family=cls.family,
        output=cls.output,
        ranks=tuple(cls.ranks),
        needs_layer=cls.needs_layer,
        cost=cls.cost,
        deterministic=cls.deterministic,
        description=cls.description(),
        paper=cls.paper,
        schema=cls.Params.model_json_schema(),
        requirements=tuple(cls.requirements),
        cost_note=cls.cost_note,
        model_rules=cls.model_rules,
        tasks=tuple(cls.tasks),
    )


def list_methods(plugin: str | None = None, family: str | None = None) -> list[MethodInfo]:
    """Every installed method, sorted by name; optionally only one plugin or family."""
    registry = get_registry()
    out = [method_info(cls, registry.plugin_of[name]) for name, cls in registry.methods.items()]
    out = [m for m in out if (plugin is None or m.plugin == plugin)]
    out = [m for m in out if (family is None or m.family == family)]
    return sorted(out, key=lambda m: m.name)


def describe_method(name: str) -> MethodInfo:
    """The record of one method (full or unique short name)."""
    registry = get_registry()
    cls = registry.get(name)
    return method_info(cls, registry.plugin_of[cls.name])


def plugin_failures() -> list[PluginFailure]:
    """Plugins that were found but could not be loaded, with the reason."""
    return list(get_registry().failures.values())

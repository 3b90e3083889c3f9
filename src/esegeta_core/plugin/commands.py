"""Plugin sub-commands: every ``esegeta NAME`` that plugins add, by name.

Found as methods and executors are: each entry point of the ``esegeta`` group (and each
plugin registered in code with ``register_plugin``) whose plugin implements the hook
``esegeta_register_commands`` (see :class:`~esegeta_core.command.Command` for the
contract). The core keeps the names: a plugin command named like a core command is
refused, and a name that several plugins claim is withdrawn from all of them, as a
method name is. Both are logged and recorded, and every other command works. A plugin
whose hook fails is logged and skipped, never fatal: ``esegeta --help`` always works.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from esegeta_core.command import Command
from esegeta_core.errors import PluginConflictError
from esegeta_core.plugin.manager import _IN_CODE, DISABLE_ENV, hook_results, loaded_plugins

log = logging.getLogger(__name__)

__all__ = ["CommandTable", "PluginCommand", "collect_commands"]

HOOK = "esegeta_register_commands"
"""The hook through which plugins add commands (named in error messages)."""

_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class PluginCommand:
    """A plugin's command with the plugin (entry-point name) and where it came from."""

    command: Command
    plugin: str
    source: str


@dataclass
class CommandTable:
    """The plugin commands that can run, and why the others cannot.

    ``unavailable`` maps a name claimed by several plugins to the error that names them
    all; ``warnings`` says everything refused or failed in words (each also logged)."""

    commands: dict[str, PluginCommand] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def refuse(self, message: str, name: str = "") -> None:
        """Record and log ``message``; with ``name``, that command is unavailable."""
        self.warnings.append(message)
        log.warning("%s", message)
        if name:
            self.unavailable[name] = message


def collect_commands(reserved: Collection[str] = ()) -> CommandTable:
    """Every plugin command by name, sorted; a name in ``reserved`` (the core's own
    commands) or claimed twice is refused (see :class:`CommandTable`)."""
    table = CommandTable()
    for name, claimed in sorted(_claims(table, reserved).items()):
        if len(claimed) == 1:
            table.commands[name] = claimed[0]
        else:
            table.refuse(_conflict(name, claimed), name)
    return table


def _claims(table: CommandTable, reserved: Collection[str]) -> dict[str, list[PluginCommand]]:
    """Every plugin's commands by name, as claimed; what is refused goes to ``table``."""
    claims: dict[str, list[PluginCommand]] = {}
    for plugin, source, obj in loaded_plugins("commands"):
        try:
            found = hook_results(plugin, obj, HOOK)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            table.refuse(
                f"Plugin {plugin!r} ({source}): its commands failed to load: "
                f"{type(exc).__name__}: {exc}"
            )
            continue
        for item in found:
            try:
                command = _checked(item, plugin, source, reserved)
            except PluginConflictError as exc:
                table.refuse(str(exc))
                continue
            claims.setdefault(command.name, []).append(PluginCommand(command, plugin, source))
    return claims


def _checked(item: object, plugin: str, source: str, reserved: Collection[str]) -> Command:
    """``item`` as a command of ``plugin``; :class:`PluginConflictError` saying why the
    core refuses it (not a :class:`Command`, a bad name, a core command's name)."""
    where = f"Plugin {plugin!r} ({source})"
    if not isinstance(item, Command):
        raise PluginConflictError(
            f"{where}: {HOOK} returned {item!r}, not an esegeta_core.command.Command, so it "
            "is refused; return Command objects."
        )
    if not (isinstance(item.name, str) and _NAME.fullmatch(item.name)):
        raise PluginConflictError(
            f"{where} registers a command named {item.name!r}, which is refused: a command "
            "name is one word of letters, digits, '-', '_' or '.', not starting with '-'."
        )
    if item.name in reserved:
        raise PluginConflictError(
            f"{where} registers the command {item.name!r}, which is a core command, so the "
            f"plugin's command is refused (`esegeta {item.name}` stays the core's); rename it."
        )
    return item


def _conflict(name: str, claimed: list[PluginCommand]) -> str:
    """The error for a command name that several plugins (or one, twice) register."""
    claims = "; ".join(f"plugin {c.plugin!r} ({c.source})" for c in claimed)
    message = (
        f"The command {name!r} is registered {len(claimed)} times, so it is unavailable: {claims}."
    )
    plugins = sorted({c.plugin for c in claimed})
    if len(plugins) == 1 and len({c.source for c in claimed}) == 1:
        return f"{message} Plugin {plugins[0]!r} returns several commands of that name: rename one."
    in_code = sorted({c.plugin for c in claimed if c.source.startswith(_IN_CODE)})
    installed = sorted({c.plugin for c in claimed if not c.source.startswith(_IN_CODE)})
    fixes = ["Rename one"]
    if installed:
        fixes.append("disable one with " + " or ".join(f"{DISABLE_ENV}={p}" for p in installed))
    if in_code:
        fixes.append(
            "drop the one registered in code with "
            + " or ".join(f"esegeta_core.unregister_plugin({p!r})" for p in in_code)
        )
    return f"{message} {', or '.join(fixes)}."

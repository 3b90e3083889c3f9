"""The contract of a sub-command that a plugin adds to the ``esegeta`` command.

A plugin returns :class:`Command` objects from its ``esegeta_register_commands`` hook;
``esegeta NAME ARGS...`` then reads ``ARGS`` with the options the command adds and runs
it. The core keeps the names: one that a core command or another plugin already uses is
refused (see :mod:`esegeta_core.plugin.commands`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Command"]


@dataclass(frozen=True)
class Command:
    """One ``esegeta NAME`` sub-command.

    ``add_arguments(parser)`` adds the command's options and arguments to the parser of
    ``esegeta NAME``, and ``run(args)`` runs the command with what that parser read and
    returns the exit status. The core calls both only for the command the user typed,
    so ``esegeta --help`` lists every command without loading any: import heavy
    libraries (a web server, a training loop) inside them, not where the command is
    declared. ``run`` raises :class:`~esegeta_core.errors.EsegetaError` for a user's
    mistake; the core prints it as ``esegeta NAME: error: ...`` (exit status 2).
    """

    name: str
    """The word after ``esegeta``: letters, digits, ``-``, ``_`` or ``.``."""
    help: str
    """One line for the command list of ``esegeta --help``."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    """What ``esegeta NAME --help`` says above the options (default: nothing)."""

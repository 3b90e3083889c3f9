"""Hook specifications every esegeta plugin may implement."""

from __future__ import annotations

from collections.abc import Sequence

from esegeta_core.command import Command
from esegeta_core.explainer import Explainer
from esegeta_core.plugin import hookspec
from esegeta_core.runtime.executor import Executor


@hookspec
def esegeta_register_methods() -> Sequence[type[Explainer]]:
    """Return the :class:`~esegeta_core.Explainer` subclasses this plugin provides.

    Keep it pure and cheap: return classes, import no heavy backend here.
    """


@hookspec
def esegeta_register_executors() -> Sequence[type[Executor]]:
    """Return the :class:`~esegeta_core.runtime.executor.Executor` subclasses this plugin
    provides (where a run's jobs are computed: ``esegeta run --executor NAME``).

    Keep it cheap as well: import the cluster library inside the executor, not here.
    """


@hookspec
def esegeta_register_commands() -> Sequence[Command]:
    """Return the :class:`~esegeta_core.command.Command` objects this plugin adds to the
    ``esegeta`` command (``esegeta NAME ...``).

    Called for ``esegeta --help`` too, so keep it cheap: the command imports what it
    needs inside its ``add_arguments`` and ``run``.
    """

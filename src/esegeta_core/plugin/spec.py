"""Hook specifications every esegeta plugin may implement."""

from __future__ import annotations

from collections.abc import Sequence

from esegeta_core.explainer import Explainer
from esegeta_core.plugin import hookspec


@hookspec
def esegeta_register_methods() -> Sequence[type[Explainer]]:
    """Return the :class:`~esegeta_core.Explainer` subclasses this plugin provides.

    Keep it pure and cheap: return classes, import no heavy backend here.
    """

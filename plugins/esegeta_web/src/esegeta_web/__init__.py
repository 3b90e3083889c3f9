"""esegeta-web: ``esegeta serve``, a local web app that launches esegeta runs, follows
them live and shows their maps.

The app can launch code, so it binds to 127.0.0.1 by default, needs a token on any
other host, protects POST requests against CSRF, lets users pick only the models the
server's owner declared and confines every path to the workspace.

This module is the plugin's ``esegeta`` entry point: it adds the command ``serve`` and
loads the web app (FastAPI) only on first use of :func:`create_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esegeta_core import hookimpl
from esegeta_core.command import Command

if TYPE_CHECKING:  # loads lazily, on first use (see __getattr__)
    from esegeta_web.app import create_app

__all__ = ["create_app", "esegeta_register_commands"]


def __getattr__(name: str) -> object:
    """``create_app`` on first use (PEP 562), so that listing commands loads no web server."""
    if name != "create_app":
        raise AttributeError(f"module 'esegeta_web' has no attribute {name!r}")
    from esegeta_web.app import create_app

    globals()[name] = create_app
    return create_app


@hookimpl
def esegeta_register_commands() -> list[Command]:
    """The command ``esegeta serve``."""
    from esegeta_web.cli import COMMAND

    return [COMMAND]

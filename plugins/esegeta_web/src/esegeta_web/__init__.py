"""esegeta-web: ``esegeta serve``, a local web app that launches esegeta runs, follows
them live and shows their maps.

The app can launch code, so it binds to 127.0.0.1 by default, needs a token on any
other host, protects POST requests against CSRF, lets users pick only the models the
server's owner declared and confines every path to the workspace."""

from __future__ import annotations

from esegeta_web.app import create_app

__all__ = ["create_app"]

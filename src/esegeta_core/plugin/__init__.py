"""Plugin machinery: the ``hookimpl`` marker, the hook specification and the registry.

Plugins are Python distributions that declare an entry point in the group
``esegeta`` pointing at a module (or object) with an ``esegeta_register_methods``
hook implementation marked with :data:`hookimpl`.
"""

from __future__ import annotations

import pluggy

PROJECT = "esegeta"
"""The pluggy project name and the entry-point group plugins register under."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Decorate a plugin's ``esegeta_register_methods`` function with this."""

hookspec = pluggy.HookspecMarker(PROJECT)

__all__ = ["PROJECT", "hookimpl", "hookspec"]

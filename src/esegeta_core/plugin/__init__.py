"""Plugin machinery: the ``hookimpl`` marker, the hook specification and the registry.

Plugins are Python distributions that declare an entry point in the group
``esegeta`` pointing at a module (or object) with an ``esegeta_register_methods``
hook implementation marked with :data:`hookimpl`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pluggy

PROJECT = "esegeta"
"""The pluggy project name and the entry-point group plugins register under."""

_F = TypeVar("_F", bound=Callable[..., object])

_impl_marker = pluggy.HookimplMarker(PROJECT)
_spec_marker = pluggy.HookspecMarker(PROJECT)


def hookimpl(function: _F) -> _F:
    """Mark a plugin's hook function (``esegeta_register_methods`` and the others of
    :mod:`esegeta_core.plugin.spec`); the function keeps its own type."""
    return _impl_marker(function)


def hookspec(function: _F) -> _F:
    """Mark a hook specification of :mod:`esegeta_core.plugin.spec`."""
    return _spec_marker(function)


__all__ = ["PROJECT", "hookimpl", "hookspec"]

"""Placeholder until the methods of this module land."""

from __future__ import annotations

from esegeta_core import Explainer

GRADIENT_METHODS: list[type[Explainer]] = []

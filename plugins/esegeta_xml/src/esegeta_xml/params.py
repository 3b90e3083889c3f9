"""The parameters of ``xml.explainer``."""

from __future__ import annotations

from esegeta_core import MethodParams


class XmlExplainerParams(MethodParams):
    """``xml.explainer`` has no parameters: the trained explainer is the method."""

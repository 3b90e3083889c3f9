"""Small HTML pieces shared by the report's tables and page: escaping, JSON blocks and
times. Everything the report shows passes through :func:`escape`: names, errors and
parameters are user data."""

from __future__ import annotations

import html
import json
import math

__all__ = ["escape", "json_block", "seconds_text"]


def escape(text: object) -> str:
    """``text`` as HTML text or an attribute value (quotes escaped too)."""
    return html.escape(str(text), quote=True)


def json_block(data: object) -> str:
    """``data`` pretty-printed as JSON and escaped, for a ``<pre>`` block."""
    return escape(json.dumps(data, indent=2, sort_keys=False, default=str, ensure_ascii=False))


def seconds_text(value: float | None) -> str:
    """A duration as the page shows it (``"0.5 s"``, ``"120 s"``); empty when unknown."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"

"""Reading the original's loosely typed values, and the placeholders the converter writes.

TorchEsegeta configs wrote flags as booleans, 0/1 or strings and left settings unset in
several ways (missing, null, false, empty, -1); these helpers read them all alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "MODEL_PLACEHOLDER",
    "REPLACE_ME",
    "Warn",
    "floats",
    "norm",
    "off",
    "truthy",
    "unset",
]

REPLACE_ME = "REPLACE_ME"
"""The value written where esegeta needs something the original config did not name."""
MODEL_PLACEHOLDER = f"{REPLACE_ME}:build_model"
"""The model factory written in place of the one the original config never named."""

Warn = Callable[[str], None]
"""Where the converter reports what it could not carry over (one sentence per call)."""


def norm(name: object) -> str:
    """Comparison key of a name: lower case, '++' -> 'pp', letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower().replace("++", "pp"))


def truthy(value: Any) -> bool:
    """The original's flags: booleans, 0/1, "True"/"False" strings."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def unset(value: Any) -> bool:
    """A setting left unset in the original: missing, null, false, empty or -1."""
    if value is None or value is False:
        return True
    if isinstance(value, (list, tuple, str, dict)):
        return not value or (isinstance(value, (list, tuple)) and all(v == -1 for v in value))
    return isinstance(value, (int, float)) and value == -1


def off(value: Any) -> bool:
    """A size left unset: :func:`unset`, or no positive number in it."""
    if unset(value):
        return True
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(isinstance(v, (int, float)) and v <= 0 for v in values)


def floats(value: Any) -> list[float]:
    """A number or a list of numbers as a list of floats."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]

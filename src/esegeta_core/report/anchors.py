"""Element ids of the report page: readable, valid and unique.

Ids are derived from the data (a job id, a method name), not from counters, so a link to
a map stays the same between renders of the same data.
"""

from __future__ import annotations

import re

__all__ = ["UniqueIds", "anchor_id"]


def anchor_id(text: str) -> str:
    """A valid, readable HTML id from any text: lower case letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "x"


class UniqueIds:
    """Hands out unique ids: the first use of a base keeps it, later ones get -2, -3."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, base: str) -> str:
        """The id for ``base`` (made valid by :func:`anchor_id`), marked as used."""
        base = anchor_id(base)
        candidate, n = base, 1
        while candidate in self.used:
            n += 1
            candidate = f"{base}-{n}"
        self.used.add(candidate)
        return candidate

"""Browser assets of the report and of esegeta-web: the report page's style sheet and
script, NiiVue and esegeta-viewer.js (see README.md in this folder for versions, sources
and licences). Package data: read from the installed package, never from the network."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ["ASSETS_DIR", "asset_bytes", "asset_text"]

ASSETS_DIR = Path(__file__).parent


@lru_cache(maxsize=8)
def asset_bytes(name: str) -> bytes:
    """The bytes of an asset of this folder (cached: NiiVue is 2 MB)."""
    return (ASSETS_DIR / Path(name).name).read_bytes()


def asset_text(name: str) -> str:
    """An asset as text (UTF-8)."""
    return asset_bytes(name).decode("utf-8")

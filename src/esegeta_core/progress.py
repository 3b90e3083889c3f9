"""Progress bars (tqdm) that can be silenced with ``progress=False``."""

from __future__ import annotations

from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""

    def set_postfix_str(self, text: str) -> None:
        """Ignore the status text."""


def progress_bar(total: int, description: str, *, enabled: bool = True) -> Any:
    """A tqdm bar over ``total`` steps, or a silent stand-in when disabled."""
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

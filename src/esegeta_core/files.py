"""File helpers every layer may use: atomic writes and confinement to a folder.

A leaf module (it imports nothing of esegeta but its errors), so that the configs, the
leaderboard, the report and the runs can all write files without importing each other.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from esegeta_core.errors import InvalidInputError

__all__ = ["atomic_path", "inside", "write_json"]


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux
    reports it in /proc; elsewhere set and restore it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: an existing file keeps its own, a new
    one gets ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def inside(root: Path, name: str | Path, what: str) -> Path:
    """``name`` resolved against ``root``; :class:`InvalidInputError` unless it stays
    inside ``root`` (``..``, absolute paths elsewhere and symbolic links out are refused):
    a record or a user must never make esegeta read or serve a file from elsewhere."""
    base = Path(root).resolve()
    try:
        path = (base / name).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise InvalidInputError(f"{what} {str(name)!r} cannot be resolved: {exc}") from exc
    if not path.is_relative_to(base):
        raise InvalidInputError(f"{what} {str(name)!r} lies outside {base}")
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder that replaces ``path`` when the block ends
    without error (and is removed otherwise). The result has the permissions a plain
    ``open()`` would give (``mkstemp`` alone leaves 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _plain_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))

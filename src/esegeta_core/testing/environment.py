"""What a test needs from the machine: an installed method, a Chromium to drive.

Tests that need a backend plugin or a browser skip with the reason when it is missing
(CI installs both); these helpers keep that logic in one place for the core's and the
plugins' tests.
"""

from __future__ import annotations

import os
import shutil


def require_method(*names: str) -> str:
    """The first of ``names`` that an installed plugin provides; skips the calling test
    (``pytest.skip``) naming them when none is installed."""
    import pytest

    from esegeta_core.plugin.manager import get_registry

    registry = get_registry()
    for name in names:
        try:
            registry.get(name)
        except LookupError:
            continue
        return name
    pytest.skip(f"needs one of the methods {', '.join(names)} (none is installed)")


def find_chromium() -> str | None:
    """A Chromium executable: ``$ESEGETA_CHROMIUM``, else the first of chromium,
    chromium-browser and google-chrome on the PATH; None when there is none."""
    override = os.environ.get("ESEGETA_CHROMIUM")
    if override:
        return override
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def modules_loaded_by(code: str, prefixes: tuple[str, ...] = ()) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (only those starting
    with one of ``prefixes``, when given): for tests that a command or an import stays
    light (no web server, no training code loaded by ``esegeta --help``)."""
    import subprocess
    import sys

    listing = "\nimport sys as _sys\nprint(' '.join(sorted(_sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code + listing],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    loaded = set(done.stdout.strip().splitlines()[-1].split())
    return {m for m in loaded if m.startswith(prefixes)} if prefixes else loaded

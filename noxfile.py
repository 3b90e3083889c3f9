"""Development sessions: one per package, one for all together, lint and the demo.

    nox -s tests          # everything together: the README's test command and CI
    nox -s core           # the core alone (with the two fixture plugins of its tests)
    nox -s plugin         # each plugin alone: core + that plugin, so an undeclared
                          # dependency fails (nox -s "plugin(name='esegeta_captum')")
    nox -s lint           # ruff, and the core's import layers (tests/test_import_layers.py)
    nox -s demo           # the README's main-job command
    nox -s zoo            # every method on the full model zoo -> benchmarks/results/zoo.json

Plugins are found by globbing plugins/*/pyproject.toml: a new plugin joins every
session without editing this file. Each session is its own virtualenv (about 5.5 GB
and a minute with torch), so CI runs only lint and tests.
"""

from __future__ import annotations

from pathlib import Path

import nox
from nox.command import CommandFailed

ROOT = Path(__file__).parent
PLUGINS = sorted(p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml"))
FIXTURE_PLUGINS = sorted(str(p.parent) for p in ROOT.glob("tests/plugins/*/pyproject.toml"))

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


def _editable(*paths: str) -> list[str]:
    return [arg for path in paths for arg in ("-e", path)]


@nox.session
def core(session: nox.Session) -> None:
    """The core's tests with no backend plugin installed."""
    session.install(*_editable(".[test]", *FIXTURE_PLUGINS))
    session.run("pytest", "tests", *session.posargs)


@nox.session
@nox.parametrize("name", PLUGINS)
def plugin(session: nox.Session, name: str) -> None:
    """One plugin alone with the core: its own tests, nothing else installed."""
    session.install(*_editable(".", f"plugins/{name}[test]"))
    if "[project.entry-points.esegeta]" in (ROOT / "plugins" / name / "pyproject.toml").read_text():
        session.run("esegeta", "methods", "--plugin", name.removeprefix("esegeta_"))
    session.run("pytest", f"plugins/{name}", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Every package together: the core's tests and every plugin's tests."""
    session.install(
        *_editable(".[test]", *(f"plugins/{p}[test]" for p in PLUGINS), *FIXTURE_PLUGINS)
    )
    # One pytest process per package: the plugins' test folders share module names
    # (test_conformance.py, conftest.py), which cannot live in one pytest process.
    # They share one cache of the synthetic benchmark's trained models, so each model
    # trains once per session (tests that check the caching itself use their own).
    session.env.setdefault("ESEGETA_CACHE", str(Path(session.create_tmp()) / "esegeta-cache"))
    failed = []
    for path in ("tests", *(f"plugins/{p}" for p in PLUGINS)):
        try:
            session.run("pytest", path, *session.posargs)
        except CommandFailed:
            failed.append(path)
    if failed:
        session.error(f"tests failed in: {', '.join(failed)}")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check over the whole repository, and the core's import
    layers (no cycle, no upward import: read from the source, nothing installed)."""
    session.install("ruff", "pytest")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("pytest", "--noconftest", "-p", "no:cacheprovider", "tests/test_import_layers.py")


@nox.session
def zoo(session: nox.Session) -> None:
    """Every installed method on the full model zoo of real architectures (torchvision,
    timm, MONAI, Hugging Face; random weights): the table behind the README's figures.
    CI runs the fast subset (tests/test_zoo.py) inside ``tests``."""
    session.install(*_editable(".[test]", *(f"plugins/{p}" for p in PLUGINS)))
    session.run(
        "python", "benchmarks/zoo.py", "--out", "benchmarks/results/zoo.json", *session.posargs
    )


@nox.session
def demo(session: nox.Session) -> None:
    """Install the core with every plugin, list the methods, run `esegeta demo`."""
    session.install(*_editable(".", *(f"plugins/{p}" for p in PLUGINS)))
    session.run("esegeta", "methods")
    session.run("esegeta", "demo", *session.posargs)

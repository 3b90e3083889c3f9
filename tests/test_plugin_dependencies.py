"""Every plugin declares what it imports: an import of a distribution that is neither
declared in the plugin's pyproject.toml nor required by esegeta-core fails here, in
the all-together environment (the per-plugin nox sessions check the same for real)."""

from __future__ import annotations

import ast
import re
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))


def _installed(plugin: Path) -> bool:
    name = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]["name"]
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


# imports can only be mapped to distributions where the plugin is installed (nox -s tests)
INSTALLED = [p for p in PLUGINS if _installed(p)]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs: list[str]) -> set[str]:
    return {_norm(re.split(r"[\s<>=!~\[;(]", r, maxsplit=1)[0]) for r in reqs}


def _core_requirements() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return _requirement_names(data["project"]["dependencies"]) | {"esegeta-core"}


def _imports(src: Path) -> set[str]:
    found = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("plugin", INSTALLED, ids=lambda p: p.name)
def test_plugin_imports_are_declared(plugin):
    data = tomllib.loads((plugin / "pyproject.toml").read_text())
    declared = _requirement_names(data["project"]["dependencies"]) | _core_requirements()
    own = {p.name for p in (plugin / "src").iterdir() if p.is_dir()}
    dists = metadata.packages_distributions()
    missing = {}
    for module in _imports(plugin / "src") - own - set(sys.stdlib_module_names):
        providers = {_norm(d) for d in dists.get(module, [module])}
        if not providers & declared:
            missing[module] = sorted(providers)
    assert not missing, (
        f"{plugin.name} imports {missing} but its pyproject.toml does not declare them"
    )


def test_plugins_register_under_the_esegeta_group():
    for plugin in PLUGINS:
        data = tomllib.loads((plugin / "pyproject.toml").read_text())
        # one group for everything a plugin adds: methods, executors, CLI commands
        groups = set(data["project"]["entry-points"])
        assert groups == {"esegeta"}, plugin.name

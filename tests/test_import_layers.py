"""The core's imports point one way: no import cycle (module-level, local and
type-checking imports all count), the runtime never reaches up into the plugin layer,
the evaluation, the report or the runs, leaf modules stay leaves, and no module imports
another package's private names. Read from the source with ``ast``, so a new cycle
fails here before it can bite at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "esegeta_core"


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, str]]:
    """``(imported module, imported name)`` of every import in ``module``'s source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full, "") if full in MODULES else (base, alias.name))
    return [(m, n) for m, n in out if m.split(".")[0] == PACKAGE]


GRAPH = {
    m: {t for name, _ in _imports(m) if (t := _resolve(name)) not in (None, m)} for m in MODULES
}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    assert len(MODULES) > 50 and "esegeta_core.api" in GRAPH["esegeta_core"]
    assert "esegeta_core.runtime.passes" in GRAPH["esegeta_core.layer_replay"]


def test_no_import_cycle():
    assert _cycles() == []


UPPER = ("esegeta_core.plugin", "esegeta_core.evaluation", "esegeta_core.report")
UPPER_MODULES = ("esegeta_core.runs", "esegeta_core.cli", "esegeta_core.api")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if ".runtime" in m))
def test_the_runtime_does_not_reach_up(module):
    upward = sorted(t for t in GRAPH[module] if t.startswith(UPPER) or t in UPPER_MODULES)
    assert upward == [], f"{module} imports {upward}"


@pytest.mark.parametrize(
    "leaf",
    [
        "esegeta_core.command",
        "esegeta_core.errors",
        "esegeta_core.files",
        "esegeta_core.metric_info",
    ],
)
def test_leaf_modules_stay_leaves(leaf):
    assert GRAPH[leaf] <= {"esegeta_core.errors"}, f"{leaf} imports {GRAPH[leaf]}"


def test_the_toolkit_stays_low():
    low = {"esegeta_core.errors", "esegeta_core.layers", "esegeta_core.baselines"}
    assert GRAPH["esegeta_core.toolkit"] <= low, GRAPH["esegeta_core.toolkit"]


def test_no_private_names_from_another_package():
    reaches = []
    for module in MODULES:
        own = module.rpartition(".")[0] if MODULES[module].name != "__init__.py" else module
        for target, name in _imports(module):
            resolved = _resolve(target)
            if not name.startswith("_") or resolved is None:
                continue
            home = (
                resolved if MODULES[resolved].name == "__init__.py" else resolved.rpartition(".")[0]
            )
            if home != own:
                reaches.append(f"{module} imports {resolved}.{name}")
    assert reaches == []

"""The README stays true: its two commands come first, CI runs the test command
verbatim, and its method table lists every method of the repository's plugins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import esegeta_core as ec

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block, "README must start with a bash block of two commands"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_starts_with_two_commands_and_ci_runs_the_second():
    first_block = README.split("```bash\n", 1)
    assert first_block[0].strip() == "# esegeta", "the commands must come first"
    commands = _commands()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, ".ci/run must run the README's test command verbatim"


def test_method_table_lists_every_repository_plugin_method():
    ours = {p.name.removeprefix("esegeta_") for p in ROOT.glob("plugins/esegeta_*")}
    methods = [m.name for m in ec.list_methods() if m.plugin in ours]
    missing = [m for m in methods if f"`{m}`" not in README]
    assert not missing, f"README's method table lacks {missing}: run `esegeta methods --markdown`"


def test_method_table_is_the_generated_one():
    """The table is ``esegeta methods --markdown`` for the repository's plugins, to the
    letter: a changed description, family, rank or paper shows here."""
    from esegeta_core.cli import markdown_table

    ours = {p.name.removeprefix("esegeta_") for p in ROOT.glob("plugins/esegeta_*")}
    methods = [m for m in ec.list_methods() if m.plugin in ours]
    if {m.plugin for m in methods} != {p for p in ours if _has_methods(p)}:
        pytest.skip("not every plugin of the repository is installed here")
    start = README.index("| method | plugin |")
    table = README[start : README.index("\n\n", start)]
    generated = markdown_table(methods)
    assert table == generated, (
        "README's method table differs from the installed methods: replace it with the "
        "output of `esegeta methods --markdown` (the repository's plugins installed)"
    )


def _has_methods(plugin: str) -> bool:
    """Plugins that register methods (the ray and web plugins add an executor and an app)."""
    source = ROOT / "plugins" / f"esegeta_{plugin}" / "src"
    return any("esegeta_register_methods" in f.read_text() for f in source.rglob("*.py"))

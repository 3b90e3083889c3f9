"""Plugin sub-commands: ``esegeta NAME ...`` runs the command a plugin adds through the
hook ``esegeta_register_commands``; the core keeps the names."""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points

import pytest

from esegeta_core import cli, hookimpl, register_plugin, unregister_plugin
from esegeta_core.command import Command
from esegeta_core.errors import InvalidParamsError
from esegeta_core.plugin import commands as plugin_commands
from esegeta_core.testing.environment import modules_loaded_by

CALLS: list[argparse.Namespace] = []


def _hello_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="*")
    parser.add_argument("--fast", action="store_true")


def _hello(args: argparse.Namespace) -> int:
    CALLS.append(args)
    return 3


def _fails(args: argparse.Namespace) -> int:
    raise InvalidParamsError("bad config.yaml")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _gone(parser: argparse.ArgumentParser) -> None:
    raise ImportError("No module named 'fake_plugin'")


class _Plugin:
    """A plugin object whose hook returns ``items``."""

    def __init__(self, *items: object) -> None:
        self.items = list(items)

    @hookimpl
    def esegeta_register_commands(self) -> list[object]:
        return self.items


class _BrokenPlugin:
    @hookimpl
    def esegeta_register_commands(self) -> list[object]:
        raise RuntimeError("the hook broke")


HELLO = Command("hello", "say hello", _hello_arguments, _hello, description="Say it.")
FAILS = Command("fails", "always fails", _no_arguments, _fails)
GONE = Command("gone", "cannot load", _gone, _hello)


@pytest.fixture
def plugin() -> Iterator[Callable[[object, str], None]]:
    """Register plugin objects in code for one test."""
    names: list[str] = []

    def add(obj: object, name: str) -> None:
        register_plugin(obj, name)
        names.append(name)

    CALLS.clear()
    yield add
    for name in names:
        unregister_plugin(name)


def test_a_plugin_command_is_in_the_help_and_runs(plugin, capsys):
    plugin(_Plugin(HELLO), "greeter")
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    assert "hello" in capsys.readouterr().out.split("options:")[0]
    assert cli.main(["-v", "hello", "train", "cfg.yaml", "--fast"]) == 3
    assert [(a.words, a.fast) for a in CALLS] == [(["train", "cfg.yaml"], True)]
    with pytest.raises(SystemExit):
        cli.main(["hello", "--help"])
    assert "usage: esegeta hello" in capsys.readouterr().out


def test_core_commands_load_no_plugin(monkeypatch):
    def boom(reserved: object = ()) -> None:
        raise AssertionError("plugins were loaded for a core command")

    monkeypatch.setattr(plugin_commands, "collect_commands", boom)
    out = io.StringIO()
    assert cli.main(["schema"], out=out) == 0
    assert '"properties"' in out.getvalue()


def test_unknown_command_lists_core_and_plugin_commands(plugin, capsys):
    plugin(_Plugin(HELLO), "greeter")
    assert cli.main(["helo", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'helo'" in err and "Did you mean 'hello'" in err
    assert "methods" in err and "hello" in err and "esegeta_register_commands" in err


def test_plugin_errors_exit_2_with_the_message(plugin, capsys):
    plugin(_Plugin(FAILS, GONE), "greeter")
    assert cli.main(["fails"]) == 2
    assert "esegeta fails: error: bad config.yaml" in capsys.readouterr().err
    assert cli.main(["gone"]) == 2
    err = capsys.readouterr().err
    assert "'gone'" in err and "fake_plugin" in err and "failed to load" in err
    assert "greeter" in err  # where the command came from


def test_unread_arguments_are_reported_by_the_commands_parser(plugin, capsys):
    plugin(_Plugin(FAILS), "greeter")
    with pytest.raises(SystemExit) as done:
        cli.main(["fails", "--bogus"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "usage: esegeta fails" in err
    assert "esegeta fails: error: unrecognized arguments: --bogus" in err


def test_a_core_command_name_is_refused_and_logged(plugin, caplog):
    run = Command("run", "take over esegeta run", _no_arguments, _hello)
    plugin(_Plugin(run, HELLO), "greedy")
    with caplog.at_level(logging.WARNING):
        table = plugin_commands.collect_commands(reserved=cli.build_commands().parsers)
    assert "run" not in table.commands and "hello" in table.commands
    assert any("'greedy'" in w and "core command" in w for w in table.warnings)
    assert any("core command" in r.getMessage() for r in caplog.records)


def test_a_name_two_plugins_claim_is_withdrawn_naming_both(plugin, caplog, capsys):
    plugin(_Plugin(HELLO, FAILS), "alpha")
    plugin(_Plugin(Command("hello", "also hello", _no_arguments, _hello)), "beta")
    with caplog.at_level(logging.WARNING):
        assert cli.main(["hello"]) == 2
    err = capsys.readouterr().err
    assert "'hello'" in err and "'alpha'" in err and "'beta'" in err and "unavailable" in err
    logged = [r.getMessage() for r in caplog.records]
    assert any("'alpha'" in m and "'beta'" in m for m in logged)
    assert cli.main(["fails"]) == 2  # alpha's other command still runs
    assert "bad config.yaml" in capsys.readouterr().err


def test_a_broken_hook_or_a_wrong_object_is_logged_not_fatal(plugin, caplog, capsys):
    plugin(_BrokenPlugin(), "broken_hook")
    plugin(_Plugin("not a command", Command("-x", "a bad name", _no_arguments, _hello)), "odd")
    plugin(_Plugin(HELLO), "greeter")
    with caplog.at_level(logging.WARNING):
        table = plugin_commands.collect_commands()
    assert "hello" in table.commands and "-x" not in table.commands
    text = "\n".join(table.warnings)
    assert "'broken_hook'" in text and "the hook broke" in text
    assert "'not a command'" in text and "'-x'" in text
    assert cli.main(["-v", "hello"]) == 3  # the others keep working


def test_no_plugin_uses_the_old_entry_point_group():
    assert list(entry_points(group="esegeta.cli")) == []


def test_help_loads_no_web_server_and_no_training():
    code = (
        "import contextlib, io\n"
        "from esegeta_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
    )
    heavy = {"fastapi", "uvicorn", "starlette", "esegeta_web.app", "esegeta_xml.training"}
    assert heavy & modules_loaded_by(code) == set()

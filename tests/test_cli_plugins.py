"""Plugin sub-commands: ``esegeta NAME ...`` runs the ``esegeta.cli`` entry point NAME."""

from __future__ import annotations

import io

import pytest

from esegeta_core import cli
from esegeta_core.errors import InvalidParamsError

CALLS: list[list[str]] = []


class _EntryPoint:
    def __init__(self, target, value="fake_plugin.cli:main"):
        self.target, self.value = target, value

    def load(self):
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def _hello(argv: list[str]) -> int:
    CALLS.append(list(argv))
    return 3


def _fails(argv: list[str]) -> int:
    raise InvalidParamsError("bad config.yaml")


@pytest.fixture
def commands(monkeypatch):
    fake = {
        "hello": _EntryPoint(_hello),
        "fails": _EntryPoint(_fails),
        "gone": _EntryPoint(ImportError("No module named 'fake_plugin'")),
    }
    monkeypatch.setattr(cli, "plugin_commands", lambda: fake)
    CALLS.clear()
    return fake


def test_unknown_command_dispatches_to_the_plugin_with_the_rest_of_argv(commands):
    assert cli.main(["-v", "hello", "train", "cfg.yaml", "--fast"]) == 3
    assert CALLS == [["train", "cfg.yaml", "--fast"]]


def test_builtin_commands_are_not_dispatched(commands):
    out = io.StringIO()
    assert cli.main(["schema"], out=out) == 0
    assert CALLS == [] and '"properties"' in out.getvalue()


def test_missing_command_lists_builtin_and_plugin_commands(commands, capsys):
    assert cli.main(["helo", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'helo'" in err and "Did you mean 'hello'" in err
    assert "methods" in err and "hello" in err and "esegeta.cli" in err


def test_plugin_errors_exit_2_with_the_message(commands, capsys):
    assert cli.main(["fails"]) == 2
    assert "esegeta fails: error: bad config.yaml" in capsys.readouterr().err
    assert cli.main(["gone"]) == 2
    err = capsys.readouterr().err
    assert "'gone'" in err and "fake_plugin" in err and "failed to load" in err


def test_installed_plugin_commands_are_entry_points():
    for name, ep in cli.plugin_commands().items():
        assert ep.group == cli.PLUGIN_COMMANDS_GROUP and name == ep.name

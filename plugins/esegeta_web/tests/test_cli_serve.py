"""``esegeta serve`` is a command the plugin adds through the hook
``esegeta_register_commands`` (issue 18): listed by ``esegeta --help`` without loading
the web server, with the same options and help as the plugin's own parser."""

from __future__ import annotations

from pathlib import Path

import esegeta_web
import pytest
from esegeta_web.cli import COMMAND, parser

from esegeta_core.cli import main
from esegeta_core.errors import InvalidParamsError
from esegeta_core.plugin.commands import collect_commands
from esegeta_core.testing.environment import modules_loaded_by


def test_the_plugin_registers_serve():
    assert esegeta_web.esegeta_register_commands() == [COMMAND]
    found = collect_commands().commands["serve"]
    assert found.plugin == "web" and found.command is COMMAND


def test_serve_is_listed_and_its_help_is_the_plugins(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out.split("options:")[0]
    assert "serve" in listed and COMMAND.help.split(":")[0] in listed
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out == parser().format_help()


def test_serve_checks_its_options_through_esegeta(tmp_path: Path, capsys):
    assert main(["serve", "--workspace", str(tmp_path / "missing")]) == 2
    assert "esegeta serve: error: --workspace" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["serve", "--port", "abc"])
    assert done.value.code == 2
    assert "esegeta serve: error: argument --port" in capsys.readouterr().err
    with pytest.raises(InvalidParamsError, match="--max-upload"):
        COMMAND.run(parser().parse_args(["--workspace", str(tmp_path), "--max-upload", "0"]))


def test_help_and_core_commands_load_no_web_server():
    code = (
        "import contextlib, io\n"
        "from esegeta_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "    main(['schema'])\n"
    )
    heavy = {"fastapi", "starlette", "uvicorn", "esegeta_web.app"}
    assert heavy & modules_loaded_by(code) == set()

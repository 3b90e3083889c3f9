"""``esegeta xml`` is a command the plugin adds through the hook
``esegeta_register_commands`` (issue 18): listed by ``esegeta --help`` without loading
the training code, with the same help as the ``esegeta-xml`` console script."""

from __future__ import annotations

import esegeta_xml
import pytest
from esegeta_xml.cli import COMMAND, build_parser

from esegeta_core.cli import main
from esegeta_core.plugin.commands import collect_commands
from esegeta_core.testing.environment import modules_loaded_by


def test_the_plugin_registers_xml():
    assert esegeta_xml.esegeta_register_commands() == [COMMAND]
    found = collect_commands().commands["xml"]
    assert found.plugin == "xml" and found.command is COMMAND


def test_xml_help_is_the_console_scripts(capsys):
    with pytest.raises(SystemExit) as done:
        main(["xml", "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out == build_parser().format_help()
    with pytest.raises(SystemExit) as done:
        main(["xml"])
    assert done.value.code == 2
    assert "esegeta xml: error: the following arguments are required: command" in (
        capsys.readouterr().err
    )


def test_a_missing_config_is_one_line(tmp_path, capsys):
    assert main(["xml", "train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esegeta xml: error: ") and "Traceback" not in err


def test_listing_methods_and_commands_loads_no_training():
    code = (
        "import contextlib, io\n"
        "import esegeta_xml\n"
        "esegeta_xml.esegeta_register_methods()\n"
        "from esegeta_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
    )
    assert "esegeta_xml.training" not in modules_loaded_by(code)


def test_public_names_load_on_first_use():
    for name in esegeta_xml.__all__:
        assert getattr(esegeta_xml, name) is not None
    methods = esegeta_xml.METHODS
    assert methods == [esegeta_xml.XmlExplainer]
    with pytest.raises(AttributeError, match="no_such_name"):
        esegeta_xml.no_such_name  # noqa: B018

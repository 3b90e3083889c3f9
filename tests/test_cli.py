"""The esegeta command: the methods table, one method's parameters, failures, errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from esegeta_core.cli import main, schema_type


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_methods_table_lists_methods_and_failed_plugins(demo):
    code, text = _run("methods")
    assert code == 0
    assert "demo.grad_x_input" in text and "demo.flat2d" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("demo.flat2d"))
    assert "2D" in line and "3D" not in line
    assert "Plugins that failed to load" in text and "broken" in text


def test_method_detail_shows_parameters_from_the_schema(demo):
    code, text = _run("methods", "demo.grad_x_input")
    assert code == 0
    row = next(ln for ln in text.splitlines() if ln.startswith("scale"))
    assert "float" in row and "1.0" in row and "Multiplier applied to the map." in row
    assert "[> 0]" in row
    code, text = _run("methods", "demo.layer_mean")
    row = next(ln for ln in text.splitlines() if ln.startswith("layer"))
    assert "(required)" in row


def test_json_output(demo):
    _code, text = _run("methods", "--json", "--plugin", "demo")
    data = json.loads(text)
    assert {m["name"] for m in data["methods"]} >= {"demo.grad_x_input", "demo.layer_mean"}
    assert all(m["plugin"] == "demo" for m in data["methods"])


def test_unknown_method_exits_2_with_suggestion(demo, capsys):
    code, _ = _run("methods", "demo.grad_x_inpt")
    assert code == 2
    assert "Did you mean 'demo.grad_x_input'" in capsys.readouterr().err


def test_console_script_runs():
    done = subprocess.run(
        [sys.executable, "-m", "esegeta_core.cli", "methods"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "method" in done.stdout


def test_schema_type_rendering():
    assert schema_type({"anyOf": [{"type": "integer"}, {"type": "null"}]}) == "int | None"
    assert schema_type({"enum": ["a", "b"]}) == '"a" | "b"'
    assert schema_type({"type": "array", "items": {"type": "number"}}) == "list[float]"

"""Run configs and the CLI under hostile or broken input: convert-config never clobbers,
YAML alias bombs and huge files are refused, syntax errors name the line, run names stay
inside output_dir, devices and output_dir are checked, ``validate --plan`` and ``run``
report every problem before any job, and the CLI never dumps a traceback."""

from __future__ import annotations

import inspect
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from esegeta_core import cli, runs
from esegeta_core.cli import main
from esegeta_core.config import MAX_CONFIG_BYTES, RunConfig, load_config
from esegeta_core.config_checks import check_config, device_problems
from esegeta_core.errors import EsegetaError, InvalidParamsError
from esegeta_core.legacy_config import convert_legacy, write_converted
from esegeta_core.testing import tiny_input

FACTORY = "esegeta_core.testing.models:tiny_model"
LEGACY = {"model_name": "m", "methods": [{"library": "captum", "method_name": "Saliency"}]}
BOMB = textwrap.dedent(
    """\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    model: {factory: "esegeta_core.testing.models:tiny_model", kwargs: {x: *i}}
    inputs: {paths: [x.npy]}
    methods: [{method: acme.times_input}]
    """
)


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def _data(tmp_path: Path, **overrides) -> dict:
    """A valid 2D classification config over one tiny .npy batch in ``tmp_path``."""
    np.save(tmp_path / "x.npy", tiny_input("classification", 2, batch=1).numpy())
    data = {
        "name": "r",
        "output_dir": str(tmp_path / "out"),
        "model": {"factory": FACTORY, "kwargs": {"task": "classification", "rank": 2}},
        "inputs": {"paths": ["x.npy"], "rank": 2, "batch_dim": True},
        "targets": [0],
        "methods": [{"method": "acme.times_input"}],
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"figures": False, "report": False},
    }
    data.update(overrides)
    return data


def _write(tmp_path: Path, data: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# 1. convert-config -------------------------------------------------------------------


def test_convert_refuses_to_replace_an_existing_yaml_without_force(tmp_path, capsys):
    src = tmp_path / "old.json"
    src.write_text(json.dumps(LEGACY))
    (tmp_path / "old.yaml").write_text("# mine\n")
    assert _run("convert-config", str(src))[0] == 2
    err = capsys.readouterr().err
    assert "old.yaml" in err and "--force" in err and "Traceback" not in err
    assert (tmp_path / "old.yaml").read_text() == "# mine\n"
    code, text = _run("convert-config", "--force", str(src))
    assert code == 0 and "wrote" in text
    assert yaml.safe_load((tmp_path / "old.yaml").read_text())["name"] == "m"


def test_convert_never_writes_over_its_source_even_with_force(tmp_path, capsys):
    src = tmp_path / "legacy.yaml"  # a JSON file named *.yaml: the default output is itself
    original = json.dumps(LEGACY)
    src.write_text(original)
    assert _run("convert-config", "--force", str(src))[0] == 2
    assert "own source" in capsys.readouterr().err
    link = tmp_path / "alias.yaml"  # the same file under another name
    os.link(src, link)
    assert _run("convert-config", "--force", str(src), "-o", str(link))[0] == 2
    assert "own source" in capsys.readouterr().err
    assert src.read_text() == original


def test_convert_writes_atomically(tmp_path, monkeypatch):
    src = tmp_path / "old.json"
    src.write_text(json.dumps(LEGACY))
    dst = tmp_path / "old.yaml"
    dst.write_text("# previous\n")
    real = Path.write_text

    def half_then_disk_full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_disk_full)
    with pytest.raises(EsegetaError, match="No space left"):
        write_converted(src, dst, force=True)
    monkeypatch.undo()
    assert dst.read_text() == "# previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json", "old.yaml"]


def test_convert_names_the_line_of_bad_json(tmp_path, capsys):
    src = tmp_path / "old.json"
    src.write_text('{\n  "model_name": "m",\n}\n')
    assert _run("convert-config", str(src))[0] == 2
    err = capsys.readouterr().err
    assert str(src) in err and "line 3" in err and "Traceback" not in err


def test_converted_names_and_devices_are_valid(tmp_path):
    legacy = {
        "model_name": "../up",
        "methods": [{"library": "captum", "method_name": "Saliency", "device_id": ["gpu1", "tpu"]}],
    }
    out, warnings = convert_legacy(legacy)
    assert out["name"] == ".._up" and out["devices"] == ["cuda:1"]
    assert any("'tpu'" in w for w in warnings) and any("one folder name" in w for w in warnings)
    out["inputs"]["paths"] = ["x.npy"]
    RunConfig.model_validate(out)


# 2-3. alias bombs, size, syntax errors ---------------------------------------------------


def test_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 1000
    start = time.perf_counter()
    with pytest.raises(InvalidParamsError, match=r"bomb\.yaml.*line 2.*alias \*a"):
        load_config(path)
    assert _run("validate", str(path))[0] == 2
    assert time.perf_counter() - start < 5
    assert "alias" in capsys.readouterr().err


def test_a_single_alias_is_refused_too(tmp_path):
    data = yaml.safe_dump(_data(tmp_path))
    path = tmp_path / "run.yaml"
    path.write_text(data.replace("name: r", "name: &n r\ntitle_copy: *n"))
    with pytest.raises(InvalidParamsError, match="alias"):
        load_config(path)


def test_config_over_the_size_cap_is_refused(tmp_path):
    path = _write(tmp_path, _data(tmp_path))
    load_config(path)  # fine as it is
    with path.open("a") as handle:  # a comment: still valid YAML, just huge
        handle.write("#" + "x" * MAX_CONFIG_BYTES + "\n")
    size = path.stat().st_size
    with pytest.raises(InvalidParamsError) as info:
        load_config(path)
    assert str(path) in str(info.value) and f"{size:,} bytes" in str(info.value)
    assert f"{MAX_CONFIG_BYTES:,}" in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("bad.yaml", "name: r\nmodel: {factory: [unclosed\n", "line 3"),
        ("bad.yml", "name: r\n  methods: x\n", "line 2"),
        ("bad.json", '{"name": "r",\n "model": {factory: 1}}', "line 2, column 12"),
        ("tag.yaml", "name: !!python/object:os.system x\n", "line 1"),
    ],
)
def test_syntax_errors_name_the_file_and_line(tmp_path, capsys, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidParamsError) as info:
        load_config(path)
    assert str(path) in str(info.value) and where in str(info.value)
    assert _run("validate", str(path))[0] == 2
    err = capsys.readouterr().err
    assert where in err and "Traceback" not in err


def test_non_utf8_and_missing_files_are_named(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(InvalidParamsError, match=r"latin\.yaml is not UTF-8"):
        load_config(path)
    with pytest.raises(InvalidParamsError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


# 4. run names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "a/b", "a\\b", "..", ".", "", "  ", "a\0b"])
def test_run_name_must_be_one_folder(tmp_path, name):
    with pytest.raises(ValidationError, match="name"):
        RunConfig.model_validate(_data(tmp_path, name=name))


def test_run_dir_refuses_a_folder_outside_output_dir(tmp_path):
    config = RunConfig.model_validate(_data(tmp_path))
    assert config.run_dir(tmp_path) == (tmp_path / "out" / "r").resolve()
    sneaky = config.model_copy(update={"name": "../../escaped"})  # skips validation
    with pytest.raises(InvalidParamsError, match="output_dir"):
        sneaky.run_dir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r").symlink_to(tmp_path)  # a run folder that leads elsewhere
    with pytest.raises(InvalidParamsError, match="resolves to"):
        config.run_dir(tmp_path)


def test_cli_run_with_a_traversing_name_writes_nothing(tmp_path, capsys):
    data = _data(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data).replace("name: r", "name: ../../x"))
    assert _run("run", str(path))[0] == 2
    assert "name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


# 5. devices ----------------------------------------------------------------------------


def test_unknown_device_strings_are_rejected(tmp_path):
    for bad in (["gpu0"], ["cuda:x"], ["cuda0"], ["CPU"], []):
        with pytest.raises(ValidationError, match="device"):
            RunConfig.model_validate(_data(tmp_path, devices=bad))
    with pytest.raises(ValidationError, match="cuda:N"):
        RunConfig.model_validate(_data(tmp_path, devices=["gpu0"]))
    ok = RunConfig.model_validate(_data(tmp_path, devices=["cpu", "cuda", "cuda:1", "mps"]))
    assert ok.devices == ["cpu", "cuda", "cuda:1", "mps"]


def test_validate_plan_checks_devices_on_this_host(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    path = _write(tmp_path, _data(tmp_path, devices=["cpu", "cuda:3"]))
    assert _run("validate", str(path))[0] == 0  # without --plan the host is not checked
    assert _run("validate", "--plan", str(path))[0] == 2
    err = capsys.readouterr().err
    assert "devices" in err and "cuda:3" in err and "'cpu'" not in err
    path = _write(tmp_path, _data(tmp_path, devices=["cpu"]))
    assert _run("validate", "--plan", str(path))[0] == 0


def test_run_checks_devices_before_any_folder_or_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    path = _write(tmp_path, _data(tmp_path, devices=["cuda:0"]))
    monkeypatch.setattr(runs, "plan_jobs", lambda *a: pytest.fail("a job was planned"))
    assert _run("run", str(path))[0] == 2
    err = capsys.readouterr().err
    assert "'cuda:0' needs a CUDA GPU" in err and "set devices to auto or cpu" in err
    assert not (tmp_path / "out").exists()
    assert device_problems(["cpu"]) == [] and device_problems("auto") == []


# 6. output_dir -------------------------------------------------------------------------


@pytest.mark.parametrize("under", ["", "sub"])
def test_output_dir_that_is_a_file_fails_before_any_job(tmp_path, capsys, monkeypatch, under):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    output_dir = blocker / under if under else blocker
    path = _write(tmp_path, _data(tmp_path, output_dir=str(output_dir)))
    monkeypatch.setattr(runs, "plan_jobs", lambda *a: pytest.fail("a job was planned"))
    assert _run("run", str(path))[0] == 2
    err = capsys.readouterr().err
    assert "output_dir" in err and str(blocker) in err and "not a folder" in err
    config = load_config(path)
    with pytest.raises(InvalidParamsError, match="output_dir"):
        runs.run(config, tmp_path)
    assert blocker.read_text() == "not a folder"


def test_unwritable_output_dir_is_reported(tmp_path, monkeypatch):
    config = RunConfig.model_validate(_data(tmp_path))
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode)
    )
    problems = check_config(config, tmp_path)
    assert any("not writable" in p and str(tmp_path) in p for p in problems)


# 7. validate --plan --------------------------------------------------------------------


def test_validate_plan_reports_every_problem_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    (tmp_path / "blocker").write_text("")
    data = _data(
        tmp_path,
        output_dir=str(tmp_path / "blocker"),
        model={"factory": "esegeta_core.testing.models:no_such_factory", "checkpoint": "w.pt"},
        targets=[{"label": 1, "mask": "missing_mask.npy"}],
        methods=[
            {"method": "acme.times_inptu"},
            {"method": "acme.times_input", "params": {"scal": 2.0}},
        ],
        devices=["cuda:0"],
        evaluation={"masks": ["gt_*.npy"]},
    )
    path = _write(tmp_path, data)
    assert _run("validate", "--plan", str(path))[0] == 2
    err = capsys.readouterr().err
    for expected in (
        "no_such_factory",
        "model.checkpoint",
        "w.pt",
        "targets.0.mask",
        "missing_mask.npy",
        "evaluation.masks.0",
        "gt_*.npy",
        "acme.times_inptu",
        "scal",
        "devices",
        "output_dir",
    ):
        assert expected in err, expected
    assert "8 problem(s)" in err and "Traceback" not in err


def test_validate_plan_names_a_corrupt_input(tmp_path, capsys):
    data = _data(tmp_path, inputs={"paths": ["*.npy"], "rank": 2, "batch_dim": True})
    (tmp_path / "y.npy").write_bytes(b"\x93NUMPY not really")
    path = _write(tmp_path, data)
    assert _run("validate", "--plan", str(path))[0] == 2
    err = capsys.readouterr().err
    assert "y.npy" in err and "1 problem(s)" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("factory", "source", "expected"),
    [
        ("no_such_pkg_xyz.models:build", None, "no module named 'no_such_pkg_xyz.models'"),
        ("esegeta_core.testing.models:nope", None, "defines no function 'nope'"),
        ("missing.py:build", None, "does not exist"),
        ("net.py:build", "def other():\n    pass\n", "defines no function 'build'"),
        ("net.py:build", "raise RuntimeError('broken module')\n", "broken module"),
        ("net.py:build", "{}['x']\n", "importing net.py failed: KeyError"),
    ],
)
def test_validate_plan_checks_the_factory(tmp_path, factory, source, expected):
    if source is not None:
        (tmp_path / "net.py").write_text(source)
    config = RunConfig.model_validate(_data(tmp_path, model={"factory": factory}))
    problems = check_config(config, tmp_path, plan=True)
    assert any(p.startswith("model.factory") and expected in p for p in problems), problems
    assert check_config(config, tmp_path) == []  # without plan: no import


def test_validate_plan_imports_but_never_calls_the_factory(tmp_path, capsys):
    marker = tmp_path / "called"
    (tmp_path / "net.py").write_text(
        "from pathlib import Path\n"
        "from esegeta_core.testing.models import tiny_model\n\n"
        "def build(**kwargs):\n"
        f"    Path({str(marker)!r}).write_text('x')\n"
        "    return tiny_model(**kwargs)\n"
    )
    data = _data(tmp_path)
    data["model"]["factory"] = "net.py:build"
    path = _write(tmp_path, data)
    code, text = _run("validate", "--plan", str(path))
    assert code == 0, capsys.readouterr().err
    assert "1 jobs" in text and not marker.exists()


# 8. run validates everything before any job ----------------------------------------------


def test_run_with_param_typos_fails_once_listing_every_problem(tmp_path, capsys):
    data = _data(
        tmp_path,
        methods=[
            {"method": "acme.times_input", "params": {"scal": 2.0}},
            {"method": "acme.times_input", "params": {"scale": -1}},
            {"method": "acme.nope"},
        ],
    )
    path = _write(tmp_path, data)
    assert _run("run", str(path))[0] == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err and "methods.0" in err and "methods.1" in err
    assert "methods.2" in err and "acme.nope" in err
    assert not (tmp_path / "out").exists()  # no run folder, no job
    with pytest.raises(InvalidParamsError, match=r"3 problem\(s\)"):
        runs.run(load_config(path), tmp_path)
    assert not (tmp_path / "out").exists()


# 9. run --force --------------------------------------------------------------------------


def test_run_force_flag_reaches_runs_run(tmp_path, monkeypatch):
    seen = {}

    def fake_run(config, base, **kwargs):
        seen.update(kwargs)
        return runs.RunSummary(config.run_dir(base), [], 0)

    monkeypatch.setattr(runs, "run", fake_run)
    path = _write(tmp_path, _data(tmp_path))
    assert _run("run", str(path))[0] == 0 and seen == {"force": False}
    assert _run("run", "--force", str(path))[0] == 0 and seen == {"force": True}


@pytest.mark.skipif(
    "force" not in inspect.signature(runs.run).parameters,
    reason="runs.run(force=...) is not there yet (the runs part of issue 15 adds it)",
)
def test_run_force_reruns_a_changed_config(tmp_path, capsys):
    path = _write(tmp_path, _data(tmp_path))
    assert _run("run", str(path))[0] == 0
    changed = _data(
        tmp_path, inputs={"paths": ["x.npy"], "rank": 2, "batch_dim": True, "scale": "minmax"}
    )
    _write(tmp_path, changed)
    assert _run("run", str(path))[0] == 2
    assert "--force" in capsys.readouterr().err
    code, text = _run("run", "--force", str(path))
    assert code == 0 and "1 of 1 jobs ok (0 finished earlier)" in text


# 10. no tracebacks -----------------------------------------------------------------------


def _boom(args, out):
    raise RuntimeError("disk on fire\nsecond line")


def test_unexpected_errors_are_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(cli, "cmd_schema", _boom)
    assert _run("schema")[0] == 1
    err = capsys.readouterr().err
    assert "esegeta schema: unexpected error: RuntimeError: disk on fire" in err
    assert "run with -v" in err and "Traceback" not in err and "second line" not in err
    assert _run("-v", "schema")[0] == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "disk on fire" in err


def test_esegeta_errors_and_ctrl_c(monkeypatch, capsys):
    def esegeta_error(args, out):
        raise InvalidParamsError("bad field x")

    def ctrl_c(args, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_schema", esegeta_error)
    assert _run("schema")[0] == 2
    assert "esegeta: error: bad field x" in capsys.readouterr().err
    monkeypatch.setattr(cli, "cmd_schema", ctrl_c)
    assert _run("schema")[0] == 130
    err = capsys.readouterr().err
    assert "interrupted; run again to resume" in err and "Traceback" not in err


def test_plugin_command_errors_are_one_line(capsys):
    from esegeta_core import hookimpl, register_plugin, unregister_plugin
    from esegeta_core.command import Command

    class Plugin:
        @hookimpl
        def esegeta_register_commands(self):
            return [Command("oops", "fails", lambda parser: None, lambda args: {}["missing"])]

    register_plugin(Plugin(), "fake")
    try:
        assert cli.main(["oops"]) == 1
    finally:
        unregister_plugin("fake")
    err = capsys.readouterr().err
    assert "esegeta oops: unexpected error: KeyError" in err and "Traceback" not in err


def _subprocess(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_subprocess_unexpected_error_and_sigint():
    done = _subprocess(
        "import esegeta_core.cli as c\n"
        "def boom(args, out):\n    raise ZeroDivisionError('oops')\n"
        "c.cmd_schema = boom\nraise SystemExit(c.main(['schema']))\n"
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "esegeta schema: unexpected error: ZeroDivisionError: oops",
        "run with -v for the traceback: esegeta -v schema ...",
    ]
    done = _subprocess(
        "import os, signal, time\nimport esegeta_core.cli as c\n"
        "def slow(args, out):\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(30)\n"
        "c.cmd_schema = slow\nraise SystemExit(c.main(['schema']))\n"
    )
    assert done.returncode == 130 and "Traceback" not in done.stderr
    assert "interrupted; run again to resume" in done.stderr


def test_subprocess_alias_bomb_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    done = subprocess.run(
        [sys.executable, "-m", "esegeta_core.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "alias" in done.stderr and "Traceback" not in done.stderr


def test_amp_takes_tf32_and_refuses_other_names(tmp_path: Path) -> None:
    assert RunConfig.model_validate(_data(tmp_path, amp="tf32")).amp == "tf32"
    with pytest.raises(ValidationError, match="tf32"):
        RunConfig.model_validate(_data(tmp_path, amp="fp8"))

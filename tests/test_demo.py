"""esegeta demo with no backend installed: a clear error before any training."""

from __future__ import annotations

import pytest

from esegeta_core import demo
from esegeta_core.cli import main
from esegeta_core.errors import MethodNotFoundError


def test_demo_without_backends_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "_installed", lambda: {"acme.something"})

    def no_training(*args, **kwargs):
        raise AssertionError("the demo trained although it had nothing to run")

    monkeypatch.setattr("esegeta_core.synthetic.pretrained", no_training)
    with pytest.raises(MethodNotFoundError, match="pip install esegeta-captum"):
        demo.run_demo(tmp_path, quick=True, progress=False)
    assert main(["demo", "--output-dir", str(tmp_path), "--no-progress"]) != 0
    assert "none of the demo's attribution methods is installed" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()

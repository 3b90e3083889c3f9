"""Paths in the configs the app writes under ``.esegeta-web/configs/``: ``esegeta run``
resolves relative paths against that folder, so every path the app writes must be
absolute (a factory file of the allowlist, checkpoints, inputs, masks) or rebased."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from esegeta_web.app import create_app
from esegeta_web.evaluate_pages import Evaluations
from esegeta_web.jobs import JobManager
from esegeta_web.models import DeclaredModel, load_models, sanitise_config
from esegeta_web.security import CSRF_COOKIE
from fastapi.testclient import TestClient

from esegeta_core.errors import InvalidParamsError
from esegeta_core.testing import tiny_input
from esegeta_core.testing.environment import require_method

FACTORY = "esegeta_core.testing.models:tiny_model"
NET = "from esegeta_core.testing.models import tiny_model\n\ndef make():\n    return tiny_model()\n"


def _allowlist(workspace: Path) -> Path:
    """``conf/models.yaml`` declaring ``tiny`` by a factory file relative to ``conf/``
    (so neither the workspace nor ``.esegeta-web/configs/`` is its base)."""
    (workspace / "conf" / "nets").mkdir(parents=True)
    (workspace / "conf" / "nets" / "tiny_net.py").write_text(NET)
    path = workspace / "conf" / "models.yaml"
    path.write_text(yaml.safe_dump({"tiny": {"factory": "nets/tiny_net.py:make"}}))
    return path


def test_a_relative_factory_file_of_the_allowlist_runs_from_the_app(tmp_path: Path) -> None:
    method = require_method("captum.saliency", "cnnvis.vanilla_backprop")
    models = load_models(_allowlist(tmp_path))
    assert models["tiny"].spec["factory"] == f"{tmp_path / 'conf/nets/tiny_net.py'}:make"
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "x.npy", tiny_input("classification", 2, batch=1).numpy())
    config = {
        "name": "relative",
        "model": "tiny",
        "inputs": {"paths": ["data/x.npy"], "batch_dim": True},
        "targets": [0],
        "methods": [{"method": method}],
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"report": False, "figures": False},
    }
    client = TestClient(create_app(tmp_path, models=models))
    client.get("/runs/new")
    try:
        response = client.post(
            "/runs",
            data={
                "config": yaml.safe_dump(config),
                "format": "yaml",
                "csrf_token": client.cookies[CSRF_COOKIE],
            },
        )
        assert response.status_code == 201, response.text
        run = response.json()["run"]
        end, status = time.monotonic() + 60, {}
        while time.monotonic() < end:
            got = client.get(f"/runs/{run}/status")
            status = got.json() if got.status_code == 200 else {}
            if status.get("state") in ("finished", "stopped"):
                break
            time.sleep(0.05)
        log = (tmp_path / run / "serve.log").read_text()
        assert (status.get("state"), status.get("ok"), status.get("failed")) == (
            "finished",
            1,
            0,
        ), f"{status}\n{log}"
    finally:
        client.app.state.jobs.shutdown()  # type: ignore[attr-defined]


def test_the_allowlist_refuses_a_missing_factory_file_and_matches_its_text(
    tmp_path: Path,
) -> None:
    models = load_models(_allowlist(tmp_path))
    # a config repeating the factory as the models file writes it is that model
    (tmp_path / "x.npy").write_bytes(b"")
    data = sanitise_config(
        {"model": {"factory": "nets/tiny_net.py:make"}, "inputs": {"paths": ["x.npy"]}},
        models,
        tmp_path,
    )
    assert data["model"]["factory"] == models["tiny"].spec["factory"]
    bad = tmp_path / "conf" / "bad.yaml"
    bad.write_text(yaml.safe_dump({"gone": {"factory": "nets/missing.py:make"}}))
    with pytest.raises(InvalidParamsError, match=r"gone.*missing\.py does not exist"):
        load_models(bad)


def test_evaluating_a_terminal_run_rebases_its_relative_paths(tmp_path: Path) -> None:
    """A run started with ``esegeta run exp/config.yaml``: its config.json's paths are
    relative to ``exp/``; the config the app writes to evaluate it must name the same
    input files and the same run folder."""
    (tmp_path / "exp").mkdir()
    np.save(tmp_path / "exp" / "x.npy", np.zeros((1, 1, 8, 8), dtype=np.float32))
    np.save(tmp_path / "exp" / "m.npy", np.ones((1, 1, 8, 8), dtype=np.float32))
    run_dir = tmp_path / "exp" / "out" / "r"
    run_dir.mkdir(parents=True)
    stored = {
        "name": "r",
        "output_dir": "out",
        "model": {"factory": FACTORY, "kwargs": {}},
        "inputs": {"paths": ["x.npy"]},
        "methods": [{"method": "captum.saliency"}],
        "evaluation": {"masks": ["m.npy"]},
    }
    (run_dir / "config.json").write_text(json.dumps(stored))
    models = {"tiny": DeclaredModel("tiny", {"factory": FACTORY, "kwargs": {}})}
    data = Evaluations(tmp_path, JobManager(tmp_path))._config(run_dir, models)
    assert data["inputs"]["paths"] == [str(tmp_path / "exp" / "x.npy")]
    assert data["evaluation"]["masks"] == [str(tmp_path / "exp" / "m.npy")]
    assert Path(data["output_dir"]) / data["name"] == run_dir

"""Runs the app did not launch (``esegeta run`` from a terminal): Stop after verifying
the process holding the run folder, Resume from the folder's own config.json, and the
refusals when the holder or the config cannot be trusted."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from esegeta_web.app import create_app
from esegeta_web.models import DeclaredModel
from esegeta_web.security import CSRF_COOKIE
from fastapi.testclient import TestClient

from esegeta_core.testing import tiny_input
from esegeta_core.testing.environment import require_method

FACTORY = "esegeta_core.testing.models:tiny_model"
SLOW = "slow_model.py:factory"
"""In the workspace, named by its absolute path: the tiny model, each forward pass
delayed by $ESEGETA_TEST_DELAY seconds, so the terminal run is slow (stopped mid-way for
sure) and the resumed one is not."""
SLOW_SOURCE = f"""
import os, time
from {FACTORY.replace(":", " import ")}

def factory():
    model = tiny_model()
    delay = float(os.environ.get("ESEGETA_TEST_DELAY", "0"))
    model.register_forward_pre_hook(lambda module, args: time.sleep(delay))
    return model
"""


def _models(workspace: Path) -> dict[str, DeclaredModel]:
    slow = f"{workspace / SLOW}"
    return {
        "tiny": DeclaredModel("tiny", {"factory": FACTORY, "kwargs": {}}),
        "slow": DeclaredModel("slow", {"factory": slow, "kwargs": {}}),
    }


pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="verifying a run's process needs Linux /proc"
)


def _client(workspace: Path) -> tuple[TestClient, str]:
    client = TestClient(create_app(workspace, models=_models(workspace)))
    client.get("/runs/new")
    return client, client.cookies[CSRF_COOKIE]


def _wait(client: TestClient, run: str, until: Any, seconds: float = 60) -> dict[str, Any]:
    end = time.monotonic() + seconds
    status: dict[str, Any] = {}
    while time.monotonic() < end:
        response = client.get(f"/runs/{run}/status")  # 404 until config.json is written
        status = response.json() if response.status_code == 200 else {}
        if status and until(status):
            return status
        time.sleep(0.05)
    raise AssertionError(f"run {run} never reached the state; last {status}")


def _terminal_run(workspace: Path, inputs: int) -> subprocess.Popen[bytes]:
    """``esegeta run cli.yaml`` started in the workspace as a user would (relative
    paths, a factory rather than a declared name)."""
    method = require_method("cnnvis.vanilla_backprop", "captum.saliency")
    (workspace / "data").mkdir()
    for i in range(inputs):
        np.save(workspace / "data" / f"x{i}.npy", tiny_input("classification", 2, batch=1).numpy())
    config = {
        "name": "term",
        "model": {"factory": f"{workspace / SLOW}"},
        "inputs": {"paths": ["data/*.npy"], "batch_dim": True},
        "targets": [0, 1],
        "methods": [{"method": method}],
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"report": False, "figures": False},
    }
    (workspace / SLOW.split(":")[0]).write_text(SLOW_SOURCE)
    (workspace / "cli.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "esegeta_core.cli", "run", "cli.yaml"]
    env = {**os.environ, "ESEGETA_TEST_DELAY": "0.5"}
    with open(workspace / "terminal.log", "wb") as log:
        return subprocess.Popen(
            command, cwd=workspace, stdout=log, stderr=subprocess.STDOUT, env=env
        )


def test_a_terminal_run_is_stopped_and_resumed_from_the_app(tmp_path: Path) -> None:
    process = _terminal_run(tmp_path, inputs=4)
    run = "esegeta-out/term"
    client, token = _client(tmp_path)
    try:
        running = _wait(client, run, lambda s: s["state"] == "running" and s["ok"] >= 1)
        assert running["planned"] == 8
        page = client.get(f"/runs/{run}").text
        assert 'action="/runs/esegeta-out/term/resume"' in page
        stop = client.post(
            f"/runs/{run}/stop", headers={"X-CSRF-Token": token}, follow_redirects=False
        )
        assert stop.status_code == 303, stop.text
        assert process.wait(timeout=30) != 0  # interrupted: "run again to resume"
    finally:
        if process.poll() is None:
            process.kill()
    run_dir = tmp_path / run
    assert json.loads((run_dir / "progress.json").read_text())["state"] == "interrupted"
    stopped = _wait(client, run, lambda s: s["state"] != "running")
    assert stopped["state"] == "stopped" and 1 <= stopped["ok"] < 8, stopped
    kept = {p: p.stat().st_mtime_ns for p in run_dir.glob("jobs/*/record.json")}
    try:
        resume = client.post(
            f"/runs/{run}/resume", headers={"X-CSRF-Token": token}, follow_redirects=False
        )
        assert resume.status_code == 303, resume.text
        done = _wait(client, run, lambda s: s["state"] == "finished")
    finally:
        client.app.state.jobs.shutdown()  # type: ignore[attr-defined]
    assert (done["ok"], done["failed"], done["pending"]) == (8, 0, 0)
    # the jobs done before the stop were kept, not recomputed
    assert kept and all(p.stat().st_mtime_ns == t for p, t in kept.items())
    resumed = yaml.safe_load(next((tmp_path / ".esegeta-web" / "configs").iterdir()).read_text())
    assert resumed["inputs"]["paths"] == [str(tmp_path / "data" / f"x{i}.npy") for i in range(4)]


def _held_folder(workspace: Path, pid: int) -> tuple[Path, Any]:
    """A run folder whose lock this test holds, its lock file naming ``pid``."""
    run_dir = workspace / "esegeta-out" / "held"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 - closed by the caller
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(f"esegeta run, pid {pid}\n")
    handle.flush()
    return run_dir, handle


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["sleep", "30"], "is not an `esegeta run` process"),
        (
            [sys.executable, "-c", "import time; time.sleep(30)", "esegeta", "run"],
            "does not hold this folder's lock file",
        ),
    ],
)
def test_stop_refuses_a_lock_holder_it_cannot_verify(
    tmp_path: Path, argv: list[str], said: str
) -> None:
    other = subprocess.Popen(argv)
    run_dir, handle = _held_folder(tmp_path, other.pid)
    try:
        client, token = _client(tmp_path)
        for _ in range(50):  # the python one: until its command line is set
            if b"sleep" in Path(f"/proc/{other.pid}/cmdline").read_bytes():
                break
            time.sleep(0.02)
        stop = client.post(
            "/runs/esegeta-out/held/stop", headers={"X-CSRF-Token": token}, follow_redirects=False
        )
        assert stop.status_code == 409 and said in stop.text, stop.text
        assert other.poll() is None  # no signal was sent
    finally:
        handle.close()
        other.kill()
        other.wait()
    # lock free now: nothing runs, nothing to stop
    stop = client.post(
        "/runs/esegeta-out/held/stop", headers={"X-CSRF-Token": token}, follow_redirects=False
    )
    assert stop.status_code == 409 and "its lock is free" in stop.text
    (run_dir / ".lock").unlink()
    stop = client.post(
        "/runs/esegeta-out/held/stop", headers={"X-CSRF-Token": token}, follow_redirects=False
    )
    assert stop.status_code == 409 and "no lock file naming a process" in stop.text


def _stored_run(workspace: Path, **changes: Any) -> None:
    """A stopped terminal run's folder: config.json as `esegeta run` writes it."""
    from esegeta_core.config import RunConfig

    config = {
        "name": "old",
        "model": {"factory": FACTORY},
        "inputs": {"paths": ["data/x.npy"], "batch_dim": True},
        "methods": [{"method": require_method("cnnvis.vanilla_backprop", "captum.saliency")}],
        **changes,
    }
    run_dir = workspace / "esegeta-out" / "old"
    run_dir.mkdir(parents=True)
    dumped = RunConfig.model_validate(config).model_dump(mode="json")
    (run_dir / "config.json").write_text(json.dumps(dumped))


def test_resume_of_a_terminal_run_refuses_missing_paths_and_undeclared_models(
    tmp_path: Path,
) -> None:
    _stored_run(tmp_path)
    client, token = _client(tmp_path)
    resume = client.post(
        "/runs/esegeta-out/old/resume", headers={"X-CSRF-Token": token}, follow_redirects=False
    )
    assert resume.status_code == 400
    assert "inputs.paths[0] 'data/x.npy'" in resume.text
    assert "the workspace, then the run folder's parent" in resume.text
    # found under the run folder's parent (esegeta-out/), but the model is not declared
    (tmp_path / "esegeta-out" / "data").mkdir()
    np.save(
        tmp_path / "esegeta-out" / "data" / "x.npy",
        tiny_input("classification", 2, batch=1).numpy(),
    )
    (tmp_path / "esegeta-out" / "old" / "config.json").unlink()
    (tmp_path / "esegeta-out" / "old").rmdir()
    _stored_run(tmp_path, model={"factory": "os:system"})
    resume = client.post(
        "/runs/esegeta-out/old/resume", headers={"X-CSRF-Token": token}, follow_redirects=False
    )
    assert resume.status_code == 403 and "'os:system'" in resume.text, resume.text
    assert not (tmp_path / "esegeta-out" / "old" / "serve.log").exists()

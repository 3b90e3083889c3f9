"""The server of esegeta-web: pages, the runs list, launching / stopping / resuming a
real run with live progress, and its security (token, Host, CSRF, paths, uploads,
the model allowlist, escaping)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from esegeta_web.app import create_app
from esegeta_web.cli import settings
from esegeta_web.models import DeclaredModel, ModelNotAllowedError, load_models, sanitise_config
from esegeta_web.security import CSRF_COOKIE, PathOutsideWorkspaceError, confine
from fastapi.testclient import TestClient

from esegeta_core.testing import tiny_input
from esegeta_core.testing.environment import require_method

FACTORY = "esegeta_core.testing.models:tiny_model"
MODELS = {"tiny": DeclaredModel("tiny", {"factory": FACTORY, "kwargs": {}})}


JOBS = 60
"""Jobs of the live run the stop/resume tests launch."""


def _method() -> str:
    """A cheap gradient method that CI installs (skip without one)."""
    return require_method("cnnvis.vanilla_backprop", "captum.saliency")


def _client(workspace: Path, **kwargs: Any) -> TestClient:
    kwargs.setdefault("models", MODELS)
    return TestClient(create_app(workspace, **kwargs))


def _csrf(client: TestClient) -> str:
    """The session's CSRF token (the first GET sets the cookie)."""
    client.get("/runs/new")
    return client.cookies[CSRF_COOKIE]


def _fake_run(workspace: Path, rel: str, statuses: list[str], *, summary: bool = True) -> Path:
    """A run folder with config.json and records (summary.json or per-job records)."""
    run_dir = workspace / rel
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    records = [
        {
            "job_id": f"in_0__m{i % 7}__t{i // 7}",
            "status": s,
            "input": "in.png",
            "item": i // 70,
            "method": f"m{i % 7}",
            "title": f"m{i % 7}",
            "target_requested": f"t{(i // 7) % 10}",
            "params": {},
            "seconds": 0.1,
            "device": "cpu",
            "error": "" if s == "ok" else "boom",
            "files": {},
        }
        for i, s in enumerate(statuses)
    ]
    if summary:
        (run_dir / "summary.json").write_text(json.dumps(records))
    else:
        for r in records:
            (run_dir / "jobs" / r["job_id"]).mkdir(parents=True)
            (run_dir / "jobs" / r["job_id"] / "record.json").write_text(json.dumps(r))
    return run_dir


# -- pages and the runs list ---------------------------------------------------------


def test_pages_render_and_set_the_csrf_cookie(tmp_path: Path) -> None:
    client = _client(tmp_path)
    response = client.get("/")
    assert response.status_code == 200 and "No run folders" in response.text
    assert CSRF_COOKIE in client.cookies
    page = client.get("/runs/new")
    assert page.status_code == 200 and "tiny" in page.text and FACTORY in page.text
    assert f'value="{client.cookies[CSRF_COOKIE]}"' in page.text


def test_runs_list_paginates_many_runs_with_counts(tmp_path: Path) -> None:
    for i in range(120):
        _fake_run(tmp_path, f"out/run{i:03d}", ["ok", "ok", "error"])
    partial = _fake_run(tmp_path, "partial", ["ok", "timeout"], summary=False)
    client = _client(tmp_path)
    first = client.get("/runs")
    assert first.status_code == 200 and "(121)" in first.text
    assert first.text.count("<tr>") == 1 + 50  # the header row and one page
    last = client.get("/runs/table?page=3")
    assert last.text.count("<tr>") == 21
    status = client.get("/runs/out/run007/status").json()
    assert (status["ok"], status["failed"], status["state"]) == (2, 1, "finished")
    status = client.get("/runs/partial/status").json()
    assert (status["ok"], status["failed"], status["state"]) == (1, 1, "stopped")
    # a new record is seen at the next read (records cached by modification time)
    extra = partial / "jobs" / "late" / "record.json"
    extra.parent.mkdir()
    extra.write_text(json.dumps({"job_id": "late", "status": "ok"}))
    assert client.get("/runs/partial/status").json()["ok"] == 2


def test_a_running_run_is_followed_from_its_progress_file(tmp_path: Path, monkeypatch) -> None:
    from esegeta_web import jobs as jobs_module

    run = _fake_run(tmp_path, "live", ["ok"] * 3, summary=False)
    progress = {
        "total": 10_000,
        "ok": 7_000,
        "failed": 12,
        "running": {"v1-0__saliency__c1": "cuda:0", "v2-0__saliency__c1": "cpu"},
        "state": "running",
    }
    (run / "progress.json").write_text(json.dumps(progress))
    monkeypatch.setattr(jobs_module.JobManager, "is_running", lambda self, run_dir: True)
    client = _client(tmp_path)
    status = client.get("/runs/live/status").json()
    assert (status["ok"], status["failed"], status["planned"]) == (7_000, 12, 10_000)
    assert status["running"] == 2 and status["pending"] == 10_000 - 7_012 - 2
    assert status["workers"] == progress["running"]
    page = client.get("/runs/live").text
    assert "cuda:0: <code>v1-0__saliency__c1</code>" in page
    # a progress file of an earlier, finished run is not read: the records are
    (run / "progress.json").write_text(json.dumps({**progress, "state": "finished"}))
    assert client.get("/runs/live/status").json()["ok"] == 3


def test_a_10000_job_run_page_shows_one_page_of_jobs(tmp_path: Path) -> None:
    _fake_run(tmp_path, "big", ["error"] * 10_000)
    (tmp_path / "big" / "evaluation").mkdir()
    (tmp_path / "big" / "evaluation" / "leaderboard.csv").write_text(
        "method,aopc\nm1,0.5\nm2,0.7\n"
    )
    client = _client(tmp_path)
    start = time.perf_counter()
    page = client.get("/runs/big")
    seconds = time.perf_counter() - start
    assert page.status_code == 200
    assert page.text.count('class="error">error</td>') == 200  # one page of the jobs table
    assert "Jobs page 1 of 50" in page.text and 'id="leaderboard"' in page.text
    assert seconds < 5
    assert "Jobs page 50 of 50" in client.get("/runs/big?jobs=99").text


# -- a real run: launch, live progress, stop, resume ---------------------------------


def _wait(client: TestClient, run: str, until: Any, seconds: float = 90) -> dict[str, Any]:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status = client.get(f"/runs/{run}/status").json()
        if until(status):
            return status
        time.sleep(0.1)
    log = (client.app.state.workspace / run / "serve.log").read_text()  # type: ignore[attr-defined]
    raise AssertionError(f"run {run} never reached the state; last {status}; log:\n{log}")


def test_launch_follow_stop_and_resume_a_real_run(tmp_path: Path) -> None:
    method = _method()
    (tmp_path / "data").mkdir()
    # 20 inputs x 3 targets: enough jobs that the stop lands while the run still runs
    # (of 24 tiny jobs, 10 finished here before the stop landed: thin on a slow machine)
    for i in range(JOBS // 3):
        np.save(tmp_path / "data" / f"x{i}.npy", tiny_input("classification", 2, batch=1).numpy())
    config = {
        "name": "live",
        "model": "tiny",
        "inputs": {"paths": ["data/*.npy"], "batch_dim": True},
        "targets": [0, 1, 2],
        "methods": [{"method": method, "title": "<i>saliency</i>"}],
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"report": False},
    }
    client = _client(tmp_path)
    try:
        _launch_follow_stop_resume(client, config)
    finally:
        client.app.state.jobs.shutdown()  # type: ignore[attr-defined]


def _launch_follow_stop_resume(client: TestClient, config: dict[str, Any]) -> None:
    tmp_path = client.app.state.workspace  # type: ignore[attr-defined]
    token = _csrf(client)
    response = client.post(
        "/runs", data={"config": yaml.safe_dump(config), "csrf_token": token, "format": "yaml"}
    )
    assert response.status_code == 201, response.text
    run = response.json()["run"]
    assert run == "esegeta-out/live"
    # live progress: the event stream reports the run while it runs
    with client.stream("GET", f"/runs/{run}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("ok", 0) >= 1:
                first = json.loads(line[5:])
                break
    assert first["state"] == "running" and first["planned"] == JOBS
    stop = client.post(f"/runs/{run}/stop", headers={"X-CSRF-Token": token})
    assert stop.status_code in (200, 303)
    stopped = _wait(client, run, lambda s: s["state"] != "running")
    assert stopped["state"] == "stopped" and 1 <= stopped["ok"] < JOBS, stopped
    client.post(f"/runs/{run}/resume", headers={"X-CSRF-Token": token})
    done = _wait(client, run, lambda s: s["state"] == "finished")
    assert (done["ok"], done["failed"], done["pending"]) == (JOBS, 0, 0)
    # the finished run's events end at once; its page shows viewers and downloads
    with client.stream("GET", f"/runs/{run}/events") as events:
        text = "".join(events.iter_text())
    assert '"state": "finished"' in text and "event: end" in text
    page = client.get(f"/runs/{run}")
    assert page.status_code == 200 and 'class="esegeta-viewer"' in page.text
    assert "serve.log" in page.text and "&lt;i&gt;saliency&lt;/i&gt;" in page.text
    job = json.loads((tmp_path / run / "summary.json").read_text())[0]["job_id"]
    assert f'data-map="/runs/{run}/jobs/{job}/map"' in page.text
    download = client.get(f"/runs/{run}/jobs/{job}/download")
    assert download.status_code == 200 and download.content[:2] == b"PK"  # .npz
    assert client.get(f"/runs/{run}/jobs/{job}/map").status_code == 200
    assert client.get(f"/runs/{run}/jobs/{job}/input").status_code == 200


# -- security ------------------------------------------------------------------------


def test_a_non_loopback_server_needs_its_token(tmp_path: Path) -> None:
    client = _client(tmp_path, token="s3cret", host="0.0.0.0")
    assert client.get("/runs").status_code == 401
    assert client.get("/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    login = client.get("/runs?token=s3cret", follow_redirects=False)
    assert login.status_code == 307 and "token" not in login.headers["location"]
    assert client.get("/runs").status_code == 200  # the cookie now carries it
    # the command line generates one when none is given for a non-loopback host
    generated = settings(["--workspace", str(tmp_path), "--host", "0.0.0.0"])
    assert generated.token and len(generated.token) >= 24
    assert settings(["--workspace", str(tmp_path)]).token is None


def test_a_tokenless_loopback_server_refuses_foreign_host_names(tmp_path: Path) -> None:
    client = _client(tmp_path)
    assert client.get("/runs", headers={"Host": "evil.example:8765"}).status_code == 400
    assert client.get("/runs", headers={"Host": "127.0.0.1:8765"}).status_code == 200


def test_posts_need_the_csrf_token(tmp_path: Path) -> None:
    client = _client(tmp_path)
    token = _csrf(client)
    body = {"config": "name: x\nmodel: tiny\ninputs: {paths: []}\nmethods: [{method: m}]"}
    assert client.post("/runs", data=body).status_code == 403
    assert client.post("/runs", data={**body, "csrf_token": "forged"}).status_code == 403
    files = {"file": ("a.txt", b"hello")}
    assert client.post("/files", files=files).status_code == 403
    ok = client.post("/files", files=files, data={"csrf_token": token})
    assert ok.status_code == 201 and (tmp_path / "uploads" / "a.txt").read_bytes() == b"hello"


def test_oversized_uploads_are_refused(tmp_path: Path) -> None:
    client = _client(tmp_path, max_upload=10_000)
    token = _csrf(client)
    big = {"file": ("big.bin", b"x" * 20_000)}
    response = client.post("/files", files=big, headers={"X-CSRF-Token": token})
    assert response.status_code == 413 and "--max-upload" in response.text

    def chunks() -> Any:  # no Content-Length: counted while it streams
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
        for _ in range(20):
            yield b"y" * 1000

    streamed = client.post(
        "/files",
        content=chunks(),
        headers={"X-CSRF-Token": token, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert streamed.status_code == 413
    assert not (tmp_path / "uploads" / "big.bin").exists()


def test_paths_outside_the_workspace_are_refused(tmp_path: Path) -> None:
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (outside / "secret.npy").write_bytes(b"TOPSECRET")
    (workspace / "link").symlink_to(outside)
    ws = workspace.resolve()
    for bad in ("../outside", "/etc/passwd", "link/secret.npy", "a/../../outside", "C:\\x", ""):
        with pytest.raises(PathOutsideWorkspaceError):
            confine(ws, bad)
    assert confine(ws, "data/x.npy") == ws / "data" / "x.npy"
    assert confine(ws, "ab:c.npy") == ws / "ab:c.npy"
    client = _client(workspace)
    assert client.get("/runs/link/status").status_code == 403
    assert client.get("/runs/%2e%2e/outside/status").status_code == 403
    assert client.get("/runs//etc/status").status_code == 403
    token = _csrf(client)
    for paths in (["../outside/secret.npy"], ["/etc/passwd"], ["link/*.npy"]):
        config = {"name": "r", "model": "tiny", "inputs": {"paths": paths}, "methods": [{}]}
        response = client.post(
            "/runs", data={"config": json.dumps(config), "format": "json", "csrf_token": token}
        )
        assert response.status_code == 403, (paths, response.text)
        assert "workspace" in response.text
    # a record whose map file points out of its run folder is not served
    run_dir = _fake_run(workspace, "runs/r", ["ok"], summary=False)
    record_path = next((run_dir / "jobs").glob("*/record.json"))
    record = json.loads(record_path.read_text())
    record["files"] = {"attribution": "../../../outside/secret.npy"}
    record_path.write_text(json.dumps(record))
    download = client.get(f"/runs/runs/r/jobs/{record['job_id']}/download")
    assert download.status_code == 403 and b"TOPSECRET" not in download.content
    assert client.get("/runs/runs/r/jobs/..%2f..%2fx/download").status_code in (403, 404)


def test_only_declared_models_can_run(tmp_path: Path) -> None:
    client = _client(tmp_path)
    token = _csrf(client)
    config = {
        "name": "r",
        "model": {"factory": "os:system", "kwargs": {"command": "touch pwned"}},
        "inputs": {"paths": []},
        "methods": [{"method": "m"}],
    }
    response = client.post(
        "/runs", data={"config": json.dumps(config), "format": "json", "csrf_token": token}
    )
    assert response.status_code == 403 and "os:system" in response.text
    ws = tmp_path.resolve()
    with pytest.raises(ModelNotAllowedError, match="declared models: tiny"):
        sanitise_config({**config, "model": "other"}, MODELS, ws)
    with pytest.raises(ModelNotAllowedError, match="kwargs"):
        sanitise_config({**config, "model": {"name": "tiny", "kwargs": {"x": 1}}}, MODELS, ws)
    with pytest.raises(ModelNotAllowedError):
        sanitise_config(
            {**config, "model": "tiny", "evaluation": {"models": {"b": {"factory": "os:system"}}}},
            MODELS,
            ws,
        )
    same = sanitise_config({**config, "model": {"factory": FACTORY, "kwargs": {}}}, MODELS, ws)
    assert same["model"]["factory"] == FACTORY
    assert same["output_dir"] == str(ws / "esegeta-out")
    models_file = tmp_path / "models.yaml"
    models_file.write_text(f"tiny:\n  factory: {FACTORY}\n  task: classification\n")
    loaded = load_models(models_file)
    assert loaded["tiny"].spec["factory"] == FACTORY
    assert loaded["tiny"].run_defaults == {"task": "classification"}
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_user_text_is_escaped(tmp_path: Path) -> None:
    _fake_run(tmp_path, "<b>bold</b>", ["error"])
    client = _client(tmp_path)
    assert "<b>bold</b>" not in client.get("/runs").text
    assert "&lt;b&gt;bold&lt;/b&gt;" in client.get("/runs").text
    page = client.get("/runs/%3Cb%3Ebold%3C%2Fb%3E")
    assert page.status_code == 200 and "<b>bold" not in page.text


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_runs_listing_skips_hidden_folders_and_run_insides(tmp_path: Path) -> None:
    _fake_run(tmp_path, "a", ["ok"], summary=False)
    _fake_run(tmp_path, ".esegeta-web/hidden", ["ok"])
    (tmp_path / "a" / "jobs" / "nested").mkdir()
    (tmp_path / "a" / "jobs" / "nested" / "config.json").write_text("{}")
    from esegeta_web.jobs import find_runs

    assert find_runs(tmp_path) == [tmp_path / "a"]


def test_serve_is_an_esegeta_command_with_checked_options(tmp_path: Path) -> None:
    from esegeta_core.errors import InvalidParamsError
    from esegeta_core.plugin.commands import collect_commands

    assert collect_commands().commands["serve"].plugin == "web"
    with pytest.raises(InvalidParamsError, match="--workspace"):
        settings(["--workspace", str(tmp_path / "missing")])
    with pytest.raises(InvalidParamsError, match="--max-upload"):
        settings(["--workspace", str(tmp_path), "--max-upload", "0"])
    client = _client(tmp_path)
    token = _csrf(client)
    response = client.post("/runs", data={"config": "{}", "format": "xml", "csrf_token": token})
    assert response.status_code == 400 and "'yaml' or 'json'" in response.text


def test_missing_viewers_are_an_error_not_a_blank_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _fake_run(tmp_path, "r", ["ok"], summary=False)
    job = next((run_dir / "jobs").iterdir()).name
    monkeypatch.setitem(sys.modules, "esegeta_web.viewers", None)  # import fails
    client = _client(tmp_path)
    page = client.get("/runs/r")
    assert page.status_code == 200 and "the map viewers are missing" in page.text
    assert 'class="esegeta-viewer"' not in page.text
    response = client.get(f"/runs/r/jobs/{job}/map")
    assert response.status_code == 409 and "reinstall esegeta-web" in response.text


def test_one_input_with_many_cells_shows_its_grid_a_page_at_a_time(tmp_path: Path) -> None:
    run_dir = tmp_path / "wide"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    records = [
        {
            "job_id": f"in__m{m}__t{t}",
            "status": "error",
            "input": "in.png",
            "item": 0,
            "method": f"m{m}",
            "title": f"method {m}",
            "target_requested": f"t{t}",
            "params": {},
            "seconds": 0.1,
            "device": "cpu",
            "error": "boom",
            "files": {},
        }
        for m in range(30)
        for t in range(50)
    ]
    (run_dir / "summary.json").write_text(json.dumps(records))
    client = _client(tmp_path)

    def grid(page: str) -> tuple[str, list[str], list[str]]:
        text = client.get(f"/runs/wide?grid={page}").text
        table = re.search(r'<table class="grid">.*?</table>', text, re.S)
        assert table, "no grid"
        rows = re.findall(r"<tr><th>([^<]*)</th>", table.group(0).split("<tbody>")[1])
        heads = re.findall(r"<th>(t\d+)</th>", table.group(0))
        return text, rows, heads

    text, rows, heads = grid("1")
    assert rows == [f"method {m}" for m in range(5)] and heads == [f"t{t}" for t in range(20)]
    assert "Grid page 1 of 18" in text and "methods 1-5 of 30, targets 1-20 of 50" in text
    assert 'href="?input=1&amp;grid=2"' in text
    _, rows, heads = grid("2")  # the next targets of the same methods
    assert rows[0] == "method 0" and heads[0] == "t20"
    text, rows, heads = grid("999")  # clamped to the last page
    assert "Grid page 18 of 18" in text
    assert rows[-1] == "method 29" and heads[-1] == "t49" and len(rows) * len(heads) == 50

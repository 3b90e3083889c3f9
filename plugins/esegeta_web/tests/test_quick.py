"""Quick explain (/quick) and the Evaluate button (/evaluate/RUN) of esegeta-web."""

from __future__ import annotations

import io
import json
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
MODELS = {"tiny": DeclaredModel("tiny", {"factory": FACTORY, "kwargs": {}})}


def _method() -> str:
    """A cheap gradient method that CI installs (skip without one)."""
    return require_method("cnnvis.vanilla_backprop", "captum.saliency")


@pytest.fixture
def client(tmp_path: Path) -> Any:
    app = create_app(tmp_path, models=MODELS)
    with TestClient(app) as test_client:
        test_client.get("/quick")  # sets the CSRF cookie
        yield test_client
        app.state.jobs.shutdown()
        evaluations = getattr(app.state, "evaluations", None)
        if evaluations is not None:
            evaluations.shutdown()


def _npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, tiny_input("classification", 2, batch=1).numpy())
    return buffer.getvalue()


def _quick(client: TestClient, **fields: Any) -> Any:
    name = fields.pop("filename", "x.npy")
    content = fields.pop("content", None) or _npy()
    data = {"model": "tiny", "batch_dim": "true", "csrf_token": client.cookies[CSRF_COOKIE]}
    data.update(fields)
    return client.post(
        "/quick",
        data=data,
        files={"file": (name, content, "application/octet-stream")},
        follow_redirects=False,
    )


def _wait(client: TestClient, url: str, until: Any, seconds: float = 90) -> dict[str, Any]:
    end = time.monotonic() + seconds
    while True:
        status = client.get(url).json()
        if until(status) or time.monotonic() > end:
            return status  # type: ignore[no-any-return]
        time.sleep(0.3)


def _quick_run(client: TestClient, response: Any) -> tuple[str, str]:
    assert response.status_code == 303, response.text
    quick_id = response.headers["location"].rsplit("/", 1)[1]
    return quick_id, f".esegeta-web/quick/{quick_id}/run"


def test_quick_explain_shows_each_methods_map(client: TestClient) -> None:
    method = _method()
    form = client.get("/quick")
    assert form.status_code == 200 and f'value="{method}"' in form.text
    assert 'value="captum.layer_grad_cam"' not in form.text  # needs a layer: not offered
    quick_id, run = _quick_run(client, _quick(client, methods=[method]))
    status = _wait(client, f"/runs/{run}/status", lambda s: s["state"] != "running")
    assert (status["state"], status["ok"]) == ("finished", 1), client.get(f"/quick/{quick_id}").text
    page = client.get(f"/quick/{quick_id}")
    assert page.status_code == 200 and 'class="esegeta-viewer"' in page.text
    assert f'data-map="/runs/{run}/jobs/' in page.text and method in page.text
    assert client.get(f"/runs/{run}").status_code == 200  # the full run page works too
    assert "No run folders" in client.get("/runs").text  # quick runs stay out of the list


def test_quick_explain_refuses_what_it_cannot_run(client: TestClient) -> None:
    assert _quick(client, model="evil", methods=["captum.saliency"]).status_code == 403
    refused = _quick(client, methods=["no.such_method"])
    assert refused.status_code == 400 and "no.such_method" in refused.text
    bad_file = _quick(client, methods=[_method()], filename="run.sh", content=b"echo")
    assert bad_file.status_code == 400 and "run.sh" in bad_file.text
    forged = client.post(
        "/quick",
        data={"model": "tiny", "methods": [_method()]},
        files={"file": ("x.npy", _npy())},
        headers={"Cookie": ""},
    )
    assert forged.status_code == 403
    assert client.get("/quick/../../etc").status_code == 404
    assert client.get("/quick/20240101-000000-deadbeef").status_code == 404


def test_quick_uploads_stay_in_the_workspace(client: TestClient, tmp_path: Path) -> None:
    method = _method()
    launched: list[dict[str, Any]] = []

    def launch(data: dict[str, Any]) -> Path:
        launched.append(data)
        return Path(data["output_dir"]) / data["name"]

    client.app.state.jobs.launch = launch  # type: ignore[attr-defined]
    quick_id, _ = _quick_run(client, _quick(client, methods=[method], filename="../../x.npy"))
    saved = tmp_path / ".esegeta-web" / "quick" / quick_id / "input" / "x.npy"
    assert launched[0]["inputs"]["paths"] == [str(saved)] and saved.is_file()
    assert not (tmp_path.parent / "x.npy").exists()
    # a quick folder that is a symlink out of the workspace is refused, nothing written
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / ".esegeta-web" / "quick").rename(tmp_path / "moved")
    (tmp_path / ".esegeta-web" / "quick").symlink_to(outside)
    assert _quick(client, methods=[method]).status_code == 403
    assert list(outside.iterdir()) == []


def test_a_quick_run_past_its_time_limit_is_stopped(client: TestClient) -> None:
    client.app.state.quick_time_limit = 0.5  # type: ignore[attr-defined]
    quick_id, run = _quick_run(client, _quick(client, methods=[_method()]))
    _wait(client, f"/runs/{run}/status", lambda s: s["state"] != "running")
    page = client.get(f"/quick/{quick_id}")
    assert "Stopped: the quick run took longer than" in page.text
    assert json.loads(
        (client.app.state.workspace / ".esegeta-web/quick" / quick_id / "quick.json").read_text()  # type: ignore[attr-defined]
    )["timed_out"]


def test_evaluate_a_finished_run_shows_its_leaderboard(client: TestClient) -> None:
    method = _method()
    workspace: Path = client.app.state.workspace  # type: ignore[attr-defined]
    (workspace / "data").mkdir()
    np.save(workspace / "data" / "x.npy", tiny_input("classification", 2, batch=1).numpy())
    config = {
        "name": "small",
        "model": "tiny",
        "inputs": {"paths": ["data/x.npy"], "batch_dim": True},
        "targets": [0],
        "methods": [{"method": method}],
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"report": False},
    }
    token = client.cookies[CSRF_COOKIE]
    launched = client.post(
        "/runs", data={"config": yaml.safe_dump(config), "csrf_token": token, "format": "yaml"}
    )
    run = launched.json()["run"]
    # not while it runs
    early = client.post(f"/evaluate/{run}", data={"csrf_token": token})
    done = _wait(client, f"/runs/{run}/status", lambda s: s["state"] != "running")
    assert done["state"] == "finished", done
    if early.status_code == 202:  # the run finished before the first request: wait for it
        _wait(client, f"/evaluate/{run}?format=json", lambda s: s["state"] != "running")
    else:
        assert early.status_code == 409 and "still running" in early.text
    page = client.get(f"/runs/{run}")
    assert f'action="/evaluate/{run}"' in page.text
    assert client.post(f"/evaluate/{run}", data={"metrics": "aopc"}).status_code == 403  # CSRF
    bad = client.post(f"/evaluate/{run}", data={"metrics": "nope", "csrf_token": token})
    assert bad.status_code == 400 and "nope" in bad.text
    started = client.post(f"/evaluate/{run}", data={"metrics": "deletion", "csrf_token": token})
    assert started.status_code == 202, started.text
    state = _wait(client, f"/evaluate/{run}?format=json", lambda s: s["state"] != "running")
    assert state["state"] == "done", state
    written = yaml.safe_load(
        (workspace / ".esegeta-web/configs/esegeta-out__small.evaluate.yaml").read_text()
    )
    assert written["evaluation"]["metrics"] == ["deletion"]
    page = client.get(f"/runs/{run}")
    assert 'id="leaderboard"' in page.text and "deletion" in page.text
    assert "done" in client.get(f"/evaluate/{run}").text


def test_evaluate_refuses_a_run_config_outside_the_allowlist(
    client: TestClient, tmp_path: Path
) -> None:
    run_dir = tmp_path / "elsewhere" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "name": "run",
                "output_dir": "elsewhere",
                "model": {"factory": "os:system", "kwargs": {"command": "true"}},
                "inputs": {"paths": ["x.npy"]},
                "methods": [{"method": "captum.saliency"}],
            }
        )
    )
    token = client.cookies[CSRF_COOKIE]
    refused = client.post("/evaluate/elsewhere/run", data={"csrf_token": token})
    assert refused.status_code == 403 and "os:system" in refused.text
    assert client.post("/evaluate/../x", data={"csrf_token": token}).status_code in (403, 404)
    assert client.get("/evaluate/nothing/here").status_code == 404

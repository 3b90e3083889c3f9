"""The new-run form: generated from the JSON Schemas, validated by the same pydantic
models with errors at their fields, the job plan, Import, Download YAML and Run."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from esegeta_web.app import create_app
from esegeta_web.forms import cli_config, state_from_form
from esegeta_web.jobs import JobManager
from esegeta_web.models import DeclaredModel
from esegeta_web.security import CSRF_COOKIE
from fastapi.testclient import TestClient
from markupsafe import escape

from esegeta_core.config import RunConfig, load_config
from esegeta_core.plugin.manager import get_registry
from esegeta_core.testing import tiny_input

FACTORY = "esegeta_core.testing.models:tiny_model"
MODELS = {"tiny": DeclaredModel("tiny", {"factory": FACTORY, "kwargs": {}}, description="Tiny.")}
REPO = Path(__file__).resolve().parents[3]


def _method(*names: str) -> str:
    for name in names:
        try:
            return get_registry().get(name).name
        except LookupError:
            continue
    pytest.skip(f"needs one of the methods {names} (esegeta-captum or esegeta-cnnvis)")


class _Form(HTMLParser):
    """What a browser submits for the form ``id``: every input's, select's and
    textarea's value (checked boxes only), as (name, value) pairs."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id, self.inside = form_id, False
        self.pairs: list[tuple[str, str]] = []
        self.select: str | None = None
        self.textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or ("name" not in a and tag != "option"):
            return
        if tag == "input" and a.get("type") not in ("file",):
            if a.get("type") != "checkbox" or "checked" in a:
                self.pairs.append((a["name"], a.get("value", "")))
        elif tag == "select":
            self.select = a["name"]
        elif tag == "option" and self.select and "selected" in a:
            self.pairs.append((self.select, a.get("value", "")))
        elif tag == "textarea":
            self.textarea = a["name"]
            self.pairs.append((a["name"], ""))

    def handle_data(self, data: str) -> None:
        if self.textarea:
            name, value = self.pairs.pop()
            self.pairs.append((name, value + data))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self.select = None
        elif tag == "textarea":
            self.textarea = None
        elif tag == "form":
            self.inside = False


def _browser_form(page: str, **changes: str | list[str]) -> dict[str, Any]:
    """The form a browser would post from ``page``, with ``changes`` applied."""
    parser = _Form("run-form")
    parser.feed(page)
    data: dict[str, Any] = {}
    for name, value in parser.pairs:
        data.setdefault(name, []).append(value)
    out: dict[str, Any] = {k: v if len(v) > 1 else v[0] for k, v in data.items()}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    for i in range(2):
        np.save(tmp_path / "data" / f"x{i}.npy", tiny_input("classification", 2, batch=1).numpy())
    return tmp_path


def _client(workspace: Path) -> TestClient:
    client = TestClient(create_app(workspace, models=MODELS))
    client.get("/runs/new")
    return client


def _filled(client: TestClient, method: str, **changes: str | list[str]) -> dict[str, Any]:
    """The default form with two inputs, two targets and ``method`` in slot 0 (its
    parameters rendered the way the server renders them for a chosen method)."""
    page = client.post(
        "/runs/new",
        data=_browser_form(
            client.get("/runs/new").text,
            **{"methods.0.method": method, "action": "add", "inputs.batch_dim": "true"},
        ),
    ).text
    form = _browser_form(
        page,
        **{
            "inputs.paths": ["data/x0.npy", "data/x1.npy"],
            "targets": "0, 1",
            "name": "form-run",
            "method_count": "1",
            "cpu_workers": "0",
        },
    )
    form.update(changes)
    return form


def test_form_renders_every_parameter_with_default_and_description(workspace: Path) -> None:
    method = _method("captum.integrated_gradients")
    client = _client(workspace)
    fragment = client.get("/runs/new/params", params={"index": 2, "methods.2.method": method}).text
    schema = get_registry().get(method).Params.model_json_schema()
    assert schema["properties"]
    for key, prop in schema["properties"].items():
        row = re.search(
            rf'<tr class="field" data-field="methods\.2\.params\.{key}">.*?</tr>', fragment, re.S
        )
        assert row, f"no field for parameter {key}"
        assert str(escape(prop["description"])) in row.group(0)
        assert str(escape(json.dumps(prop["default"]))) in row.group(0)
    # the run config's own fields: devices, cpu_workers, time_limit, outputs...
    page = client.get("/runs/new").text
    for name in ("devices", "cpu_workers", "time_limit", "outputs.report", "inputs.rank"):
        assert f'data-field="{name}"' in page
    assert "Seconds per job; a job past it is killed" in page  # time_limit's description
    assert f'value="{method}" data-family=' in page  # the method list with its filters


def test_a_bad_value_shows_the_error_at_its_field(workspace: Path) -> None:
    method = _method("captum.integrated_gradients")
    client = _client(workspace)
    form = _filled(client, method, **{"methods.0.params.n_steps": "0", "cpu_workers": "-1"})
    response = client.post("/runs/new", data={**form, "action": "validate"})
    assert response.status_code == 422
    n_steps = re.search(r'id="error-methods\.0\.params\.n_steps">([^<]*)<', response.text)
    assert n_steps and "greater than or equal to 1" in n_steps.group(1)
    assert re.search(r'id="error-cpu_workers">[^<]*greater than or equal to 0', response.text)
    # the entered values stay in the form
    assert 'name="methods.0.params.n_steps" value="0"' in response.text


def test_validate_shows_the_job_plan_and_cost(workspace: Path) -> None:
    method = _method("captum.integrated_gradients")
    client = _client(workspace)
    form = _filled(client, method, **{"methods.0.params.n_steps": "7"})
    page = client.post("/runs/new", data={**form, "action": "validate"})
    assert page.status_code == 200, re.findall(r'class="field-error"[^>]*>([^<]*)', page.text)
    assert "Job plan: 4 jobs" in page.text  # 2 inputs x 1 method x 2 targets
    costs = re.search(r'<table id="costs">.*?</table>', page.text, re.S)
    assert costs and "<td>7</td>" in costs.group(0) and "<td>28</td>" in costs.group(0)


def test_import_of_the_original_example_fills_the_form(workspace: Path) -> None:
    source = REPO / "examples" / "torchesegeta_config.json"
    if not source.is_file():
        pytest.skip(f"the TorchEsegeta example config is missing ({source})")
    legacy = json.loads(source.read_text())
    client = _client(workspace)
    page = client.post(
        "/runs/new/import",
        files={"file": ("old.json", json.dumps(legacy), "application/json")},
        data={"csrf_token": client.cookies[CSRF_COOKIE]},
    )
    assert page.status_code == 200
    assert 'id="import-warnings"' in page.text and "model.factory is a placeholder" in page.text
    form = _browser_form(page.text)
    assert form["name"] == "UNetMSS_vessels_3" and form["inputs.rank"] == "3"
    assert form["task"] == "segmentation" and form["log_level"] == "DEBUG"
    methods = [form[f"methods.{i}.method"] for i in range(int(form["method_count"]))]
    assert "captum.saliency" in methods and len(methods) >= 5
    saliency = methods.index("captum.saliency")
    assert form[f"methods.{saliency}.sign"] == "positive"


def test_downloaded_yaml_gives_the_same_run_config(workspace: Path) -> None:
    method = _method("captum.integrated_gradients")
    client = _client(workspace)
    form = _filled(
        client, method, **{"methods.0.params.n_steps": "9", "time_limit": "30", "seed": "4"}
    )
    response = client.post("/runs/new", data={**form, "action": "yaml"})
    assert response.status_code == 200
    assert 'filename="form-run.yaml"' in response.headers["content-disposition"]
    path = workspace / "form-run.yaml"
    path.write_text(response.text)
    from_cli = load_config(path)
    paths = form.pop("inputs.paths")
    from_form = RunConfig.model_validate(cli_config(state_from_form(form, paths), MODELS, {}))
    assert from_cli == from_form
    assert from_cli.model.factory == FACTORY and from_cli.methods[0].params == {"n_steps": 9}
    assert (from_cli.time_limit, from_cli.seed, from_cli.targets) == (30, 4, [0, 1])


def test_run_launches_through_the_launch_path(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    method = _method("captum.saliency", "cnnvis.vanilla_backprop")
    started: list[tuple[Path, Path, int | None]] = []
    monkeypatch.setattr(
        JobManager, "_start", lambda self, run, cfg, planned: started.append((run, cfg, planned))
    )
    client = _client(workspace)
    form = _filled(client, method)
    response = client.post("/runs/new", data={**form, "action": "run"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/runs/esegeta-out/form-run"
    ((run_dir, config_path, planned),) = started
    assert run_dir == workspace / "esegeta-out" / "form-run" and planned == 4
    written = yaml.safe_load(config_path.read_text())
    assert written["model"]["factory"] == FACTORY
    assert written["inputs"]["paths"] == [str(workspace / "data" / f"x{i}.npy") for i in (0, 1)]
    assert [m["method"] for m in written["methods"]] == [method]


# -- structured sections (patches, evaluation, inputs.normalise, inputs.resize) ----------------

SECTIONS = {
    "patches": "on",
    "patches.size": "4, 4",
    "patches.mode": "hann",
    "inputs.normalise.mean": "0.5",
    "inputs.normalise.std": "0.25",
    "inputs.resize": "8 8",
    "evaluation": "true",
    "evaluation.metrics": "deletion, insertion",
    "devices": "cpu",
}


def test_sections_are_sub_fields_with_types_defaults_and_descriptions(workspace: Path) -> None:
    page = _client(workspace).get("/runs/new").text
    for name in ("patches", "evaluation", "inputs.normalise", "inputs.resize", "devices"):
        assert f'<textarea id="f-{name}"' not in page, f"{name} is still raw JSON"
    size = re.search(r'<tr class="field" data-field="patches\.size".*?</tr>', page, re.S)
    assert size, "no sub-field patches.size"
    assert "int | list[int]" in size.group(0) and "Patch size: one int or one per dim" in (
        size.group(0)
    )
    assert "Required when patches is used" in size.group(0) and " required>" not in size.group(0)
    overlap = re.search(r'data-field="patches\.overlap".*?</tr>', page, re.S)
    assert overlap and "<td><code>0</code></td>" in overlap.group(0)
    for name in ("patches", "evaluation", "inputs.normalise"):  # the section's box
        assert re.search(rf'type="checkbox" id="f-{re.escape(name)}" name="{name}"', page)
    for name in ("inputs.normalise.mean", "evaluation.metrics", "evaluation.masks"):
        assert f'data-field="{name}"' in page
    # free-form mappings stay JSON
    assert '<textarea id="f-evaluation.models"' in page
    assert '<textarea id="f-evaluation.metric_params"' in page


def test_a_bad_sub_field_shows_its_error_at_that_sub_field(workspace: Path) -> None:
    method = _method("captum.integrated_gradients")
    client = _client(workspace)
    changes = {"patches.size": "four", "inputs.normalise.mean": "0.5", "inputs.resize": "8, x"}
    response = client.post(
        "/runs/new", data={**_filled(client, method, **changes), "action": "validate"}
    )
    assert response.status_code == 422
    for name, words in (
        ("patches.size", "valid integer"),
        ("inputs.normalise.std", "Field required"),
        ("inputs.resize", "valid integer"),
    ):
        error = re.search(rf'id="error-{re.escape(name)}">([^<]*)<', response.text)
        assert error and words in error.group(1), (name, error)
    assert 'id="general-errors"' not in response.text  # every error is at its sub-field
    assert 'name="patches.size" value="four"' in response.text  # the entry stays


def test_structured_sections_round_trip_through_yaml_and_the_page(workspace: Path) -> None:
    method = _method("captum.integrated_gradients")
    client = _client(workspace)
    form = _filled(client, method, **SECTIONS)
    first = client.post("/runs/new", data={**form, "action": "yaml"})
    assert first.status_code == 200, first.text
    data = yaml.safe_load(first.text)
    assert data["patches"] == {"size": [4, 4], "mode": "hann"}
    assert data["inputs"]["normalise"] == {"mean": [0.5], "std": [0.25]}
    assert data["inputs"]["resize"] == [8, 8] and data["devices"] == ["cpu"]
    assert data["evaluation"] == {"metrics": ["deletion", "insertion"]}
    # validated by the CLI's loader: the same config
    path = workspace / "sections.yaml"
    path.write_text(first.text)
    assert load_config(path) == RunConfig.model_validate(data)
    # the page Validate renders from it posts back the same YAML
    page = client.post("/runs/new", data={**form, "action": "validate"})
    assert page.status_code == 200, re.findall(r'class="field-error"[^>]*>([^<]*)', page.text)
    again = client.post("/runs/new", data={**_browser_form(page.text), "action": "yaml"})
    assert yaml.safe_load(again.text) == data
    # an unticked, empty section is null; a ticked one at its defaults is {}, both ways
    changed = {"patches": None, "patches.size": "", "patches.mode": "average"}
    changed["evaluation.metrics"] = ""
    plain = {k: v for k, v in {**form, **changed}.items() if v is not None}
    page = client.post("/runs/new", data={**plain, "action": "validate"})
    assert page.status_code == 200, re.findall(r'class="field-error"[^>]*>([^<]*)', page.text)
    back = yaml.safe_load(
        client.post("/runs/new", data={**_browser_form(page.text), "action": "yaml"}).text
    )
    assert "patches" not in back and back["evaluation"] == {}

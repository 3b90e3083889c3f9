"""End to end in a real headless Chromium (Playwright) against a live ``esegeta serve``:
build runs on the synthetic benchmark's shapes classifier and vessel segmenter from the
new-run form (model, files, targets, methods, Validate's job plan, Run), watch them finish
over Server-Sent Events, check the 2D overlay and NiiVue viewers draw, sort the
leaderboard, stop and resume a run, and import a TorchEsegeta config into the form.

Skipped, with the reason, where Playwright, Chromium or esegeta-captum is missing. With
``ESEGETA_SCREENSHOTS=DIR`` the main pages are also saved as PNG files into DIR (the
README's screenshots: ``ESEGETA_SCREENSHOTS=docs pytest plugins/esegeta_web/tests/test_e2e.py``).
"""

from __future__ import annotations

import copy
import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")

from esegeta_web.app import create_app  # noqa: E402
from esegeta_web.models import load_models  # noqa: E402

from esegeta_core.testing.environment import find_chromium  # noqa: E402

METHODS = ("captum.saliency", "captum.input_x_gradient")
"""Two cheap methods for every run (gradients: milliseconds on these models)."""
DEADLINE_MS = 90_000
"""How long a page waits for a run to reach a state (generous: CI machines are slow)."""

MODELS_PY = '''\
"""Factories of the end-to-end test's models (the synthetic benchmark's, cached)."""
import time

import torch

from esegeta_core.synthetic import pretrained


def shapes():
    return pretrained("shapes_classifier", progress=False).model


def vessels():
    return pretrained("vessel_segmenter", progress=False).model


class Slow(torch.nn.Module):
    """The shapes classifier, slowed down so a run lasts long enough to stop it."""

    def __init__(self, delay):
        super().__init__()
        self.inner, self.delay = shapes(), delay

    def forward(self, x):
        time.sleep(self.delay)
        return self.inner(x)


def slow_shapes(delay=0.1):
    return Slow(delay)
'''


# -- selectors of the pages (one place, so a page change means one edit here) ----------

FORM = "#run-form"
PLAN = "#plan h2"
FORM_ERRORS = "#run-form .field-error, #general-errors li"
IMPORT = "form[action='/runs/new/import']"
IMPORT_WARNINGS = "#import-warnings"
METHOD_SELECT = "#run-form .method-select"


def form_field(page: Any, name: str) -> Any:
    """The new-run form's input, select or textarea named ``name`` (a dotted pydantic
    location: ``inputs.rank``, ``methods.1.params.n_steps``)."""
    return page.locator(f'{FORM} [name="{name}"]')


def _press(page: Any, action: str) -> None:
    """Press the form button with ``action`` (validate, run, add) and wait for the page."""
    with page.expect_navigation():
        page.locator(f'{FORM} button[name=action][value="{action}"]').click()


def _set(page: Any, name: str, value: Any) -> None:
    """Set ``value`` at field ``name`` as a user would (tick, choose or type), or, for a
    section without a field of its own (``inputs``, ``outputs``), at each of its fields."""
    box = form_field(page, name)
    if not box.count():
        assert isinstance(value, dict), f"the new-run form has no field {name!r}"
        for key, item in value.items():
            _set(page, f"{name}.{key}", item)
        return
    kind = box.evaluate("e => e.type || e.tagName.toLowerCase()")
    if kind == "checkbox":
        box.set_checked(bool(value))
    elif kind.startswith("select"):
        box.select_option(str(value))
    else:
        box.fill(value if isinstance(value, str) else json.dumps(value))


def _choose_inputs(page: Any, paths: list[str]) -> None:
    """Pick the listed workspace files; type the rest (glob patterns) one a line."""
    listed = set(
        form_field(page, "inputs.paths")
        .locator("option")
        .evaluate_all("options => options.map(o => o.value)")
    )
    form_field(page, "inputs.paths").select_option([p for p in paths if p in listed])
    form_field(page, "inputs.paths.typed").fill("\n".join(p for p in paths if p not in listed))


def submit_config(
    page: Any,
    base: str,
    config: dict[str, Any],
    *,
    jobs: int,
    shot: Callable[[Any], None] | None = None,
) -> str:
    """Build ``config`` on the new-run form as a user would: choose the declared model,
    the input files and the targets, set the run settings, choose each method (adding a
    slot per method) and its fields, press Validate and check the plan counts ``jobs``
    jobs, then press Run; returns the run page's URL path the app redirected to.
    ``shot(page)``, when given, is called on the validated page."""
    page.goto(f"{base}/runs/new")
    config = copy.deepcopy(config)
    form_field(page, "model").select_option(config.pop("model"))
    _choose_inputs(page, config["inputs"].pop("paths"))
    targets = config.pop("targets", None)
    if targets is not None:
        form_field(page, "targets").fill(", ".join(map(str, targets)))
    methods = config.pop("methods")
    for name, value in config.items():
        _set(page, name, value)
    for i, method in enumerate(methods):
        if i:
            _press(page, "add")  # the server renders one more slot, the rest kept
        form_field(page, f"methods.{i}.method").select_option(method.pop("method"))
        # htmx swaps in the method's parameters (a table, or "No parameters.")
        page.wait_for_selector(f"#params-{i} table, #params-{i} p")
        for name, value in method.items():
            _set(page, f"methods.{i}.{name}", value)
    _press(page, "validate")
    errors = page.locator(FORM_ERRORS).all_inner_texts()
    assert page.locator(PLAN).count(), errors
    assert page.locator(PLAN).inner_text() == f"Job plan: {jobs} jobs", errors
    if shot is not None:
        shot(page)
    _press(page, "run")
    path = page.url.removeprefix(base)
    assert path.startswith("/runs/") and path != "/runs/new", page.content()[:2000]
    return path


STATE = "#p-state"
OK = "#p-ok"
STOP = "form[action$='/stop'] button"
RESUME = "form[action$='/resume'] button"
EVALUATE = "form[action^='/evaluate/'] button[type=submit]"
LEADERBOARD = "#leaderboard"
VIEWER_2D = ".esegeta-viewer[data-kind='2d']"
VIEWER_3D = ".esegeta-viewer[data-kind='3d']"


def wait_state(page: Any, state: str) -> None:
    """Wait until the run page shows ``state`` (live, or after its reload at the end)."""
    page.wait_for_function(
        f"document.querySelector('{STATE}') && "
        f"document.querySelector('{STATE}').textContent.trim() === '{state}'",
        timeout=DEADLINE_MS,
    )


# -- the live server -------------------------------------------------------------------


@dataclass
class Live:
    """A running server over a prepared workspace, and a browser."""

    base: str
    workspace: Path
    browser: Any
    shots: Path | None
    evaluating: Any = None
    """The page where Evaluate was clicked (it opens the leaderboard when done)."""

    def page(self) -> Any:
        page = self.browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(30_000)
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on(
            "request",
            lambda r: None if r.url.startswith(self.base) else problems.append(f"request {r.url}"),
        )
        page.problems = problems  # offline: every request goes to the app itself
        return page

    def shot(self, page: Any, name: str, *, whole: bool = False) -> None:
        """Save the viewport (or, ``whole``, the page's content) as ``shots/name``."""
        if self.shots is not None:
            self.shots.mkdir(parents=True, exist_ok=True)
            target = page.locator("body") if whole else page
            target.screenshot(path=str(self.shots / name))


def _workspace(root: Path) -> Path:
    """Inputs and the models file of the test: 2 shapes images, 1 vessel volume, 24
    images for the slow run."""
    import nibabel as nib

    from esegeta_core.synthetic import pretrained

    (root / "e2e_models.py").write_text(MODELS_PY)
    factory = f"{root / 'e2e_models.py'}"
    (root / "models.yaml").write_text(
        yaml.safe_dump(
            {
                "shapes": {
                    "factory": f"{factory}:shapes",
                    "task": "classification",
                    "description": "Synthetic shapes classifier (64 px)",
                },
                "vessels": {
                    "factory": f"{factory}:vessels",
                    "task": "segmentation",
                    "description": "Synthetic vessel segmenter (32^3)",
                },
                "slow": {
                    "factory": f"{factory}:slow_shapes",
                    "kwargs": {"delay": 0.1},
                    "task": "classification",
                    "description": "The shapes classifier, slowed down",
                },
            }
        )
    )
    # train (or load from $ESEGETA_CACHE) here, once, not in each run's process
    shapes = pretrained("shapes_classifier", progress=False).test_data(24, seed=3)
    vessels = pretrained("vessel_segmenter", progress=False).test_data(1, seed=3)
    (root / "data" / "slow").mkdir(parents=True)
    for i in range(24):
        image = shapes.images[i : i + 1].numpy()
        np.save(root / "data" / ("slow" if i >= 2 else ".") / f"shape{i:02d}.npy", image)
    volume = vessels.volumes[0, 0].numpy().astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), root / "data" / "vessel.nii.gz")
    return root


def _methods() -> list[dict[str, Any]]:
    from esegeta_core.plugin.manager import get_registry

    registry = get_registry()
    for name in METHODS:
        try:
            registry.get(name)
        except LookupError:
            pytest.skip(f"needs esegeta-captum ({name} is not installed)")
    return [{"method": m, "title": m.split(".")[1].replace("_", " ")} for m in METHODS]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium found (chromium, chromium-browser, google-chrome on PATH); install "
            "Debian's chromium package or set ESEGETA_CHROMIUM to a Chromium executable"
        )
    _methods()
    workspace = _workspace(tmp_path_factory.mktemp("e2e"))
    app = create_app(workspace, models=load_models(workspace / "models.yaml"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started and time.monotonic() < end:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    shots = os.environ.get("ESEGETA_SCREENSHOTS")
    try:
        with sync_api.sync_playwright() as p:
            try:  # WebGL2 without a GPU: SwiftShader (NiiVue needs WebGL2)
                browser = p.chromium.launch(
                    executable_path=executable,
                    args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
                )
            except sync_api.Error as exc:
                pytest.skip(f"Chromium at {executable} did not start: {exc}")
            state = Live(
                f"http://127.0.0.1:{port}", workspace, browser, Path(shots) if shots else None
            )
            try:
                yield state
            finally:
                browser.close()
    finally:
        server.should_exit = True  # its lifespan stops the runs it started
        thread.join(timeout=30)
        sock.close()
        evaluations = getattr(app.state, "evaluations", None)
        if evaluations is not None:  # the leaderboard's test did not wait for it
            evaluations.shutdown()


@pytest.fixture(scope="module")
def finished(live: Live) -> dict[str, str]:
    """The shapes and vessels runs, built on the new-run page and followed on their run
    pages until they finished; their run page paths by model."""
    methods = _methods()
    common = {"cpu_workers": 0, "progress": False, "outputs": {"report": False}}
    configs = {
        "shapes": {
            "name": "shapes",
            "model": "shapes",
            "inputs": {"paths": ["data/shape00.npy", "data/shape01.npy"], "batch_dim": True},
            "methods": methods,
            "evaluation": {
                "metrics": ["deletion", "insertion"],
                "metric_params": {"deletion": {"steps": 20}, "insertion": {"steps": 20}},
                "model_name": "shapes",
            },
            **common,
        },
        "vessels": {
            "name": "vessels",
            "model": "vessels",
            "inputs": {"paths": ["data/vessel.nii.gz"], "rank": 3, "scale": "none"},
            "targets": [1],
            "methods": methods,
            **common,
        },
    }
    jobs = {"shapes": 2 * 2, "vessels": 2}
    pages, paths = {}, {}
    for name, config in configs.items():  # both launched first: they run side by side
        pages[name] = live.page()
        events: list[str] = []
        pages[name].on("request", lambda r, ev=events: ev.append(r.url))
        pages[name].events = events
        shot = (lambda p: live.shot(p, "web-new-run.png")) if name == "shapes" else None
        paths[name] = submit_config(pages[name], live.base, config, jobs=jobs[name], shot=shot)
    for name, page in pages.items():
        wait_state(page, "finished")
        planned = jobs[name]
        assert page.locator(OK).inner_text() == str(planned), page.content()[:3000]
        assert page.locator("#p-failed").inner_text() == "0"
        assert any(url.endswith(f"{paths[name]}/events") for url in page.events), page.events
        assert page.problems == [], page.problems
        page.close()
    # Evaluate on the shapes run's page (tiny: 2 metrics of 20 steps); it runs while the
    # viewers are tested, and the leaderboard's test waits for its result
    page = live.page()
    page.goto(f"{live.base}{paths['shapes']}")
    with page.expect_navigation():
        page.locator(EVALUATE).click()
    assert page.url.endswith(f"/evaluate{paths['shapes'].removeprefix('/runs')}"), page.url
    live.evaluating = page
    return paths


# -- the tests -------------------------------------------------------------------------


def test_runs_built_on_the_page_reach_completion_live(live: Live, finished: dict[str, str]) -> None:
    page = live.page()
    page.goto(f"{live.base}/runs")
    rows = page.locator("#runs-rows tr")
    assert rows.count() == 2
    text = page.locator("#runs-rows").inner_text()
    assert "shapes" in text and "vessels" in text and "finished" in text
    live.shot(page, "web-runs.png", whole=True)
    # the run page followed the run over its event stream while it ran
    run = finished["shapes"]
    status = page.request.get(f"{live.base}{run}/status").json()
    assert (status["state"], status["ok"], status["pending"]) == ("finished", 4, 0)
    assert page.problems == [], page.problems


def test_the_2d_overlay_slider_changes_the_picture(live: Live, finished: dict[str, str]) -> None:
    page = live.page()
    page.goto(f"{live.base}{finished['shapes']}")
    viewer = page.locator(VIEWER_2D).first
    page.wait_for_selector(f"{VIEWER_2D}[data-state=ready] canvas")
    canvas = viewer.locator("canvas").first
    pixels = "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
    before = np.array(canvas.evaluate(pixels))
    viewer.locator("input[name=opacity]").fill("0")
    plain = np.array(canvas.evaluate(pixels))
    assert plain.shape == before.shape and (plain != before).any()
    viewer.locator("input[name=opacity]").fill("100")
    full = np.array(canvas.evaluate(pixels))
    assert (full != plain).any()
    viewer.locator("input[name=opacity]").fill("0")
    assert (np.array(canvas.evaluate(pixels)) == plain).all()  # the same picture back
    viewer.locator("input[name=opacity]").fill("60")
    live.shot(page, "web-results-2d.png")
    assert page.problems == [], page.problems


def test_niivue_renders_the_volume(live: Live, finished: dict[str, str]) -> None:
    from PIL import Image

    page = live.page()
    page.goto(f"{live.base}{finished['vessels']}")
    if not page.evaluate("!!document.createElement('canvas').getContext('webgl2')"):
        pytest.skip("this Chromium has no WebGL2 (NiiVue needs it)")
    viewer = page.locator(VIEWER_3D).first
    start = viewer.locator("button.esegeta-start")
    if start.count():  # a viewer that waits for a click (each one costs a WebGL context)
        start.click()
    page.wait_for_function(
        f'[...document.querySelectorAll("{VIEWER_3D}")].every(d => '
        "['ready', 'error', 'idle'].includes(d.getAttribute('data-state')))"
    )
    error = viewer.locator(".esegeta-viewer-error")
    assert viewer.get_attribute("data-state") == "ready", (
        error.all_inner_texts(),
        page.problems,
    )
    page.wait_for_timeout(300)
    shot = viewer.locator(".esegeta-niivue canvas").first.screenshot()
    with Image.open(io.BytesIO(shot)) as img:
        grey = np.asarray(img.convert("L"), dtype=np.float32)
    assert grey.std() > 5 and (grey > 40).mean() > 0.02  # a picture, not a blank canvas
    live.shot(page, "web-results-3d.png")
    assert page.problems == [], page.problems


def test_the_leaderboard_sorts_by_a_clicked_column(live: Live, finished: dict[str, str]) -> None:
    # the page where Evaluate was clicked follows the evaluation, then opens the
    # leaderboard on the run's page
    page = live.evaluating
    assert page is not None
    page.wait_for_selector(LEADERBOARD, timeout=120_000)
    assert page.url.endswith(f"{finished['shapes']}#leaderboard"), page.url
    board = live.workspace / finished["shapes"].removeprefix("/runs/") / "evaluation"
    assert (board / "leaderboard.csv").is_file()
    table = page.locator(LEADERBOARD)
    headers = table.locator("thead th").all_inner_texts()
    rows = table.locator("tbody tr").count()
    assert rows >= 2, headers

    def column(i: int) -> list[str]:
        return table.locator("tbody tr").evaluate_all(
            f"rows => rows.map(r => r.cells[{i}].textContent.trim())"
        )

    numeric = [
        i
        for i in range(len(headers))
        if all(_is_number(v) for v in column(i)) and len(set(column(i))) > 1
    ]
    assert numeric, (headers, [column(i) for i in range(len(headers))])
    col = numeric[0]
    table.locator("thead th").nth(col).click()
    up = [float(v) for v in column(col)]
    assert up == sorted(up)
    table.locator("thead th").nth(col).click()
    down = [float(v) for v in column(col)]
    assert down == sorted(up, reverse=True)
    names = column(0)
    table.locator("thead th").nth(0).click()
    assert column(0) == sorted(names)
    assert page.problems == [], page.problems


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_stop_and_resume_a_run_from_its_page(live: Live) -> None:
    methods = _methods()[:1]
    config = {
        "name": "slow",
        "model": "slow",
        "inputs": {"paths": ["data/slow/*.npy"], "batch_dim": True},
        "methods": methods,
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"report": False},
    }
    page = live.page()
    planned = 22
    run = submit_config(page, live.base, config, jobs=planned)
    # live progress: the first finished job shows up without a reload, then Stop
    page.wait_for_function(f"+document.querySelector('{OK}').textContent >= 1", timeout=DEADLINE_MS)
    assert page.locator(STATE).inner_text() == "running"
    with page.expect_navigation():
        page.locator(STOP).click()
    wait_state(page, "stopped")
    stopped = page.request.get(f"{live.base}{run}/status").json()
    assert stopped["state"] == "stopped" and 1 <= stopped["ok"] < planned, stopped
    assert stopped["pending"] == planned - stopped["ok"]
    with page.expect_navigation():
        page.locator(RESUME).click()
    wait_state(page, "finished")
    assert page.locator(OK).inner_text() == str(planned)
    done = page.request.get(f"{live.base}{run}/status").json()
    assert (done["ok"], done["failed"], done["pending"]) == (planned, 0, 0)
    assert page.problems == [], page.problems


def test_import_of_the_original_example_fills_the_form(live: Live) -> None:
    source = Path(__file__).resolve().parents[3] / "examples" / "torchesegeta_config.json"
    if not source.is_file():
        pytest.skip(f"the TorchEsegeta example config is missing ({source})")
    legacy = json.loads(source.read_text())
    example = json.dumps(legacy).encode()
    page = live.page()
    page.goto(f"{live.base}/runs/new")
    form = page.locator(IMPORT)
    form.locator("input[type=file]").set_input_files(
        {"name": "torchesegeta.json", "mimeType": "application/json", "buffer": example}
    )
    with page.expect_navigation():
        form.locator("[type=submit]").click()
    warnings = page.locator(IMPORT_WARNINGS).inner_text()
    assert "model.factory is a placeholder" in warnings
    assert "Choose the model among those this server allows" in warnings
    assert form_field(page, "name").input_value() == "UNetMSS_vessels_3"
    assert form_field(page, "inputs.rank").input_value() == "3"
    assert form_field(page, "task").input_value() == "segmentation"
    methods = page.locator(METHOD_SELECT).evaluate_all("s => s.map(e => e.value)")
    assert "captum.saliency" in methods and len(methods) >= 5, methods
    sign = form_field(page, f"methods.{methods.index('captum.saliency')}.sign")
    assert sign.input_value() == "positive"
    assert page.problems == [], page.problems

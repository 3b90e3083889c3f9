"""The self-contained HTML report: markup, escaping, images, anchors, run folders, CLI,
and a real headless Chromium (skipped with its reason where there is none)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import esegeta_core.report.html as html_module
from esegeta_core import Explainer, hookimpl, register_plugin, unregister_plugin
from esegeta_core.cli import main
from esegeta_core.config import RunConfig
from esegeta_core.errors import EsegetaError
from esegeta_core.report.html import (
    Column,
    InputSection,
    InvalidReportError,
    LeaderboardTable,
    MapEntry,
    ReportData,
    RunFolderError,
    Timing,
    Viewer,
    anchor_id,
    render_html,
    report_from_run,
    write_html_report,
)
from esegeta_core.runs import run
from esegeta_core.testing import tiny_input
from esegeta_core.testing.environment import find_chromium

EVIL = "<script>alert('x')</script>"
EVIL_ERROR = 'ValueError: bad <img src=x onerror="alert(1)"> & more\nTraceback line 2'


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _sample() -> ReportData:
    """Two inputs, two targets, three methods (one with a hostile name), one failure,
    a two-model leaderboard with a missing value, a NaN and values that sort differently
    as text and as numbers."""
    red, green, grey = (
        _png((200, 40, 40)),
        _png((40, 160, 60)),
        _png((128, 128, 128)),
    )
    sections = []
    for name in ("brain.nii.gz #0", "brain.nii.gz #1"):
        maps = []
        for target in ("class 1", "class 2"):
            maps += [
                MapEntry("m.alpha", target, red, 0.5, params={"steps": 8}),
                MapEntry("m.beta", target, green, 12.25),
                MapEntry(EVIL, target, None, 3.0, status="error", error=EVIL_ERROR),
            ]
        sections.append(InputSection(name, input_png=grey, maps=maps))
    board = LeaderboardTable(
        columns=[
            Column("auc", True, "area under the deletion curve"),
            Column("faithfulness", True),
            Column("seconds", False, "time per map"),
        ],
        rows=[
            {
                "model": "unet",
                "method": "m.alpha",
                "auc": 0.91,
                "faithfulness": 12.0,
                "seconds": 9.5,
            },
            {
                "model": "unet",
                "method": "m.beta",
                "auc": 0.75,
                "faithfulness": 100,
                "seconds": 10.25,
            },
            {
                "model": "resnet",
                "method": "m.alpha",
                "auc": None,
                "faithfulness": 2.5,
                "seconds": 100,
            },
            {
                "model": "resnet",
                "method": EVIL,
                "auc": 0.88,
                "faithfulness": math.nan,
                "seconds": 0.5,
            },
        ],
    )
    return ReportData(
        title=f"Report {EVIL}",
        inputs=sections,
        leaderboard=board,
        params={"name": "r", "note": "</pre><b>not bold</b>", "methods": [{"method": EVIL}]},
        notes=[f"A note with {EVIL}"],
    )


def _ids(text: str) -> list[str]:
    return re.findall(r'\sid="([^"]+)"', text)


def _hrefs(text: str) -> list[str]:
    return re.findall(r'href="#([^"]*)"', text)


# -- unit tests ----------------------------------------------------------------------


def test_all_user_text_is_escaped():
    text = render_html(_sample())
    assert EVIL not in text and "<img src=x" not in text and "<b>not bold</b>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "onerror=&quot;alert(1)&quot;" in text
    assert text.count("<script>") == 1  # the report's own script, nothing else


def test_images_are_embedded_and_decode():
    data = _sample()
    text = render_html(data)
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    expected = {m.png for m in data.maps if m.png} | {s.input_png for s in data.inputs}
    decoded = {base64.b64decode(u) for u in uris}
    assert decoded == expected
    for blob in decoded:
        with Image.open(io.BytesIO(blob)) as img:
            assert img.format == "PNG" and img.size == (40, 30)
    # every map card with a figure, plus the input first in each target's row
    assert len(uris) == sum(1 for m in data.maps if m.png) + 2 * 2


def test_no_external_resources():
    text = render_html(_sample())
    assert 'src="http' not in text and "<link" not in text
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "@import" not in text and "url(" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_anchors_are_unique_linked_and_stable():
    data = _sample()
    text = render_html(data)
    ids = _ids(text)
    assert len(ids) == len(set(ids))
    assert set(_hrefs(text)) <= set(ids)
    # each leaderboard row links to a map of its method, and each map back to a row
    rows = re.findall(r'<tr id="(lb-[^"]+)" data-i="\d+">(.*?)</tr>', text)
    assert len(rows) == 4
    unet_alpha = dict(rows)["lb-unet-m-alpha"]
    target = re.search(r'href="#([^"]+)"', unet_alpha).group(1)
    card = re.search(rf'<article class="card" id="{target}">(.*?)</article>', text, re.S)[1]
    assert "m.alpha" in card and 'href="#lb-unet-m-alpha"' in card
    # the failed method's row (hostile name) finds its failed card
    evil_row = dict(rows)[f"lb-resnet-{anchor_id(EVIL)}"]
    failed_id = re.search(r'href="#([^"]+)"', evil_row).group(1)
    assert re.search(rf'<article class="card failed" id="{failed_id}">', text)
    # no row for model resnet x m.beta: the m.beta cards link to unet's m.beta row
    assert text.count('href="#lb-unet-m-beta"') == 4
    assert render_html(data) == text  # same data, same page (no timestamp by default)


def test_explicit_anchors_and_duplicates():
    png = _png((1, 2, 3))
    data = ReportData(
        "t",
        inputs=[
            InputSection(
                "a",
                maps=[
                    MapEntry("m", "c1", png, anchor="Job One"),
                    MapEntry("m", "c1", png, anchor="job-one"),
                    MapEntry("m", "c1", png),
                    MapEntry("m", "c1", png),
                ],
            )
        ],
        leaderboard=LeaderboardTable(
            [Column("x")],
            [
                {"method": "m", "x": 1, "anchor": "Job One"},
                {"method": "m", "x": 2, "anchor": "nowhere"},  # falls back to the first map
            ],
        ),
    )
    text = render_html(data)
    ids = _ids(text)
    assert len(ids) == len(set(ids))
    assert {"job-one", "job-one-2", "map-a-m-c1", "map-a-m-c1-2"} <= set(ids)
    assert re.search(r'<tr id="lb-m" data-i="0"><td data-v="m"><a href="#job-one"', text)
    assert re.search(r'<tr id="lb-m-2" data-i="1"><td data-v="m"><a href="#job-one"', text)


def test_leaderboard_markup():
    text = render_html(_sample())
    table = re.search(r'<table class="sortable" id="leaderboard-table">.*?</table>', text).group(0)
    heads = re.findall(r"<th ([^>]*)><button type=\"button\" class=\"sort\"[^>]*>([^<]+)", table)
    names = [name.strip() for _, name in heads]
    assert names == ["model", "method", "auc", "faithfulness", "seconds"]
    for (attrs, _), name in zip(heads, names):
        assert 'aria-sort="none"' in attrs
        kind = "text" if name in ("model", "method") else "number"
        assert f'data-type="{kind}"' in attrs
    assert 'data-first="descending"' in heads[2][0] and 'data-first="ascending"' in heads[4][0]
    best = re.findall(r'<td class="num best" data-v="([^"]+)"', table)
    # per model: unet's auc max, seconds min, faithfulness max; resnet's seconds min
    # (its single auc and faithfulness values have nothing to beat)
    assert best == ["0.91", "9.5", "100.0", "0.5"]
    assert table.count('class="num missing" data-v=""') == 2  # None and NaN
    assert 'data-v="10.25"' in table and ">10.25<" in table
    assert 'title="higher is better"' in table or "(higher is better)" in table
    # the timing table: one row per method, failures counted, sortable
    timing = re.search(r'<table class="sortable" id="timing-table">.*?</table>', text).group(0)
    assert timing.count("<tr id=") == 3
    evil = next(r for r in timing.split("<tr ") if "&lt;script&gt;" in r)
    assert re.search(r'<td class="num" data-v="4.0"[^>]*>4</td>', evil)  # 4 jobs, all failed


def test_leaderboard_best_values_are_per_model():
    rows = [
        {"model": "small", "method": "a", "v": 0.5},
        {"model": "small", "method": "b", "v": 0.2},
        {"model": "big", "method": "a", "v": 900.0},  # other units: its own best
        {"model": "big", "method": "b", "v": 1000.0},
    ]
    text = render_html(ReportData("t", leaderboard=LeaderboardTable([Column("v", True)], rows)))
    table = re.search(r'<table class="sortable" id="leaderboard-table">.*?</table>', text).group(0)
    assert re.findall(r'<td class="num best" data-v="([^"]+)"', table) == ["0.5", "1000.0"]


def test_leaderboard_values_of_any_numeric_type():
    import torch

    rows = [
        {"method": "a", "v": np.float32(0.5)},
        {"method": "b", "v": torch.tensor(0.25)},
        {"method": "c", "v": np.int64(3)},
        {"method": "d", "v": "n/a"},
        {"method": "e", "v": float("nan")},
        {"method": "f", "v": math.inf},
    ]
    text = render_html(ReportData("t", leaderboard=LeaderboardTable([Column("v", False)], rows)))
    cells = re.findall(r'<td class="(num[^"]*)" data-v="([^"]*)"[^>]*>([^<]*)<', text)
    assert cells[:6] == [
        ("num", "0.5", "0.5"),
        ("num best", "0.25", "0.25"),
        ("num", "3.0", "3"),
        ("num missing", "", "n/a"),
        ("num missing", "", "—"),
        ("num", "Infinity", "∞"),
    ]


def test_timings_given_explicitly_and_params_block():
    data = ReportData(
        "t",
        timings=[Timing("m", [1.0, 3.0], failed=1, model="unet"), Timing("slow", [1234.5])],
        params={"name": "r", "nested": {"a": [1, 2]}},
    )
    text = render_html(data)
    cells = re.findall(r'<td class="num[^"]*" data-v="([^"]*)"[^>]*>([^<]*)<', text)
    # jobs, failed, total, mean, median, max
    assert [v for v, _ in cells[:6]] == ["3.0", "1.0", "4.0", "2.0", "2.0", "3.0"]
    assert [t for _, t in cells[:6]] == ["3", "1", "4", "2", "2", "3"]
    assert [t for _, t in cells[6:]] == ["1", "0", "1,234", "1,234", "1,234", "1,234"]
    assert "<details><summary>Run configuration (JSON)</summary><pre>{\n  &quot;name&quot;" in text
    assert "No inputs." in text


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MapEntry("m", png=b"GIF89a..."), "not a PNG"),
        (lambda: MapEntry("m", png="iVBOR"), "bytes of a PNG"),
        (lambda: MapEntry(""), "method must not be empty"),
        (lambda: MapEntry("m", seconds="1"), "number or None"),
        (lambda: InputSection("a", maps=[{"method": "m"}]), "MapEntry objects"),
        (lambda: LeaderboardTable(["auc"], []), "Column objects"),
        (lambda: LeaderboardTable([Column("a"), Column("a")], []), "appears twice"),
        (lambda: LeaderboardTable([Column("method")], []), "also a label key"),
        (lambda: Column("a", fmt="q"), "format spec"),
        (lambda: ReportData("t", inputs="abc"), "list or tuple"),
    ],
)
def test_bad_report_data_raises_a_named_error(build, message):
    with pytest.raises(InvalidReportError, match=message) as info:
        build()
    assert isinstance(info.value, EsegetaError) and isinstance(info.value, ValueError)
    with pytest.raises(InvalidReportError, match="takes a ReportData"):
        render_html({"title": "t"})  # type: ignore[arg-type]


def test_write_is_atomic_and_readable(tmp_path):
    path = write_html_report(_sample(), tmp_path / "sub" / "r.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]  # no temporary file left


# -- from a run folder ---------------------------------------------------------------


class _Broken(Explainer):
    """Fails when it runs (a method with bad params now fails the run before any job)."""

    name = "htmltest.broken"

    def attribute(self, model, inputs, target, params):
        raise RuntimeError("backend exploded")


class _BrokenPlugin:
    @hookimpl
    def esegeta_register_methods(self):
        return [_Broken]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real 3D run with figures: two ok methods and one that fails, two targets."""
    import nibabel as nib

    base = tmp_path_factory.mktemp("run")
    x = tiny_input("segmentation", 3, batch=1, size=12)
    nib.save(nib.Nifti1Image(x[0, 0].numpy(), np.diag([2.0, 2.0, 3.0, 1.0])), base / "v.nii.gz")
    config = RunConfig.model_validate(
        {
            "name": "html",
            "output_dir": str(base / "out"),
            "model": {
                "factory": "esegeta_core.testing.models:tiny_model",
                "kwargs": {"task": "segmentation", "rank": 3},
            },
            "inputs": {"paths": ["v.nii.gz"], "rank": 3, "scale": "none"},
            "task": "segmentation",
            "targets": [1, 2],
            "methods": [
                {"method": "acme.times_input", "title": "times one"},
                {"method": "acme.times_input", "title": "times two", "params": {"scale": 2.0}},
                {"method": "htmltest.broken", "title": "broken"},
            ],
            "cpu_workers": 0,
            "progress": False,
        }
    )
    register_plugin(_BrokenPlugin(), "htmltest")
    try:
        summary = run(config, base)
    finally:
        unregister_plugin("htmltest")
    assert [r["status"] for r in summary.records].count("error") == 2
    return summary.run_dir


def _run_leaderboard() -> LeaderboardTable:
    return LeaderboardTable(
        columns=[
            Column("deletion AUC", False, "lower: the score falls fast when top pixels go"),
            Column("pointing game", True, "hits of the map's maximum in the region"),
            Column("sparseness", True),
        ],
        rows=[
            {"model": "tiny", "method": "times one", "deletion AUC": 0.31, "pointing game": 0.9},
            {"model": "tiny", "method": "times two", "deletion AUC": 0.3, "pointing game": 10},
            {"model": "tiny", "method": "broken", "sparseness": 2.5},
            {"model": "other", "method": "times one", "deletion AUC": 0.45, "pointing game": 9},
        ],
    )


def test_run_writes_report_html(run_dir):
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "esegeta run: html" in text
    assert text.count('<article class="card failed"') == 2
    assert "backend exploded" in text  # the failed jobs' error message


def test_report_from_run(run_dir):
    data = report_from_run(run_dir, leaderboard=_run_leaderboard(), title="Tiny <run>")
    assert [s.name for s in data.inputs] == ["v.nii.gz #0"]
    section = data.inputs[0]
    assert section.overview_png is not None  # figures/v.nii.gz-0.png
    labels = [m.label for m in section.maps]
    assert labels == ["times one", "times one", "times two", "times two", "broken", "broken"]
    assert {m.target for m in section.maps} == {"class 1", "class 2"}
    failed = [m for m in section.maps if not m.ok]
    assert len(failed) == 2 and all(m.png is None and "exploded" in m.error for m in failed)
    assert all(m.png is not None and m.seconds is not None for m in section.maps if m.ok)
    assert all(m.anchor.startswith("job-v.nii.gz-0__acme.times_input") for m in section.maps[:4])
    assert data.params["name"] == "html"
    text = render_html(data)
    assert "<title>Tiny &lt;run&gt;</title>" in text
    ids = _ids(text)
    assert len(ids) == len(set(ids)) and set(_hrefs(text)) <= set(ids)
    assert 'href="#job-v-nii-gz-0-acme-times-input' in text


def test_report_from_an_unfinished_run_reads_the_job_records(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "summary.json").unlink()
    data = report_from_run(copy)
    assert len(data.maps) == 6 and sum(1 for m in data.maps if not m.ok) == 2


def test_not_a_run_folder(tmp_path):
    with pytest.raises(RunFolderError, match="not a folder"):
        report_from_run(tmp_path / "missing")
    with pytest.raises(RunFolderError, match="not a run folder"):
        report_from_run(tmp_path)


def test_cli_report(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    out_text = io.StringIO()
    assert main(["report", str(run_dir), "-o", str(out), "--title", "T"], out=out_text) == 0
    assert "6 jobs, 2 failed" in out_text.getvalue()
    assert "<title>T</title>" in out.read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_report_can_be_turned_off(tmp_path):
    config = RunConfig.model_validate(
        {
            "model": {"factory": "m:f"},
            "inputs": {"paths": ["x.npy"]},
            "methods": [{"method": "acme.times_input"}],
        }
    )
    assert config.outputs.report is True
    off = config.model_copy(update={"outputs": config.outputs.model_copy(update={"report": False})})
    assert json.loads(off.model_dump_json())["outputs"]["report"] is False


# -- a real browser ------------------------------------------------------------------


def _column(page, table: str, col: int) -> list[str]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr",
        f"rows => rows.map(r => r.cells[{col}].childNodes[0].textContent.trim())",
    )


def test_in_a_real_browser(run_dir, tmp_path):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium found (chromium, chromium-browser, google-chrome on PATH); install "
            "Debian's chromium package or set ESEGETA_CHROMIUM to a Chromium executable"
        )
    path = write_html_report(
        report_from_run(run_dir, leaderboard=_run_leaderboard()), tmp_path / "report.html"
    )
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except sync_api.Error as exc:
            pytest.skip(f"Chromium at {executable} did not start: {exc}")
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(
                "request",
                lambda r: (
                    None
                    if r.url.startswith(("file:", "data:"))
                    else problems.append(f"request to {r.url}")
                ),
            )
            page.goto(path.as_uri())
            assert page.title() == "esegeta run: html"
            page.wait_for_function(
                "Array.from(document.images).filter(i => i.getAttribute('src'))"
                ".every(i => i.complete)"
            )
            sizes = page.eval_on_selector_all(
                "img[src]", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])"
            )
            assert len(sizes) == 5 and all(w > 0 and h > 0 for w, h in sizes)  # grid + 4 jobs

            # numeric sort, best first, then reversed; missing values last both ways
            header = page.locator("#leaderboard-table th").nth(3)  # pointing game
            header.locator("button").click()
            assert header.get_attribute("aria-sort") == "descending"
            assert _column(page, "leaderboard-table", 3) == ["10", "9", "0.9", "—"]
            header.locator("button").click()
            assert header.get_attribute("aria-sort") == "ascending"
            assert _column(page, "leaderboard-table", 3) == ["0.9", "9", "10", "—"]
            # lower is better: the first activation (from the keyboard) sorts ascending
            lower = page.locator("#leaderboard-table th").nth(2)
            lower.locator("button").focus()
            page.keyboard.press("Enter")
            assert lower.get_attribute("aria-sort") == "ascending"
            assert header.get_attribute("aria-sort") == "none"
            assert _column(page, "leaderboard-table", 2) == ["0.3", "0.31", "0.45", "—"]
            page.keyboard.press("Space")
            assert _column(page, "leaderboard-table", 2) == ["0.45", "0.31", "0.3", "—"]
            # text columns sort too
            page.locator("#leaderboard-table th").nth(1).locator("button").click()
            methods = _column(page, "leaderboard-table", 1)
            assert methods == sorted(methods, key=str.lower)

            # a row links to its maps, and the map back to the row
            page.locator("#lb-tiny-times-two td a").click()
            card_id = page.evaluate("location.hash.slice(1)")
            assert (
                card_id.startswith("job-") and "times" in page.locator(f"#{card_id}").inner_text()
            )
            page.locator(f"#{card_id} a", has_text="leaderboard row").click()
            assert page.evaluate("location.hash") == "#lb-tiny-times-two"

            # the collapsible parameters open
            assert not page.locator("#parameters pre").is_visible()
            page.locator("#parameters summary").click()
            assert '"name": "html"' in page.locator("#parameters pre").inner_text()
            page.locator("#parameters summary").click()

            page.evaluate("window.scrollTo(0, 0)")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not problems, problems
        finally:
            browser.close()


# -- interactive viewers ---------------------------------------------------------------


def _viewer_2d() -> Viewer:
    """A 20x30 grey ramp with a signed map: positive on the left, negative on the right."""
    from esegeta_core.report.payloads import encode_map_2d

    ramp = np.tile(np.linspace(0, 255, 30, dtype=np.uint8), (20, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    values = np.zeros((20, 30))
    values[5:15, 3:10] = 2e-4
    values[5:15, 20:27] = -1e-4
    return Viewer("2d", buffer.getvalue(), encode_map_2d(values))


def test_viewers_are_inlined_once_with_hashed_scripts():
    viewer = _viewer_2d()
    maps = [MapEntry("m.a", "c1", viewer=viewer), MapEntry("m.b", "c1", viewer=viewer)]
    text = render_html(ReportData("v", [InputSection("x", maps=maps)]))
    assert text.count('class="esegeta-viewer" data-kind="2d"') == 2
    assert text.count('<script type="application/octet-stream"') == 2  # input and map, once
    assert "sA.niivue" not in text and len(text) < 100_000  # NiiVue only with a 3D viewer
    csp = re.search(r'Content-Security-Policy" content="([^"]+)"', text).group(1)
    scripts = re.findall(r"<script>(.*?)</script>", text, flags=re.S)
    assert len(scripts) == 2 and "'unsafe-inline'" not in csp.split("script-src")[1]
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    with pytest.raises(InvalidReportError, match="Viewer.kind"):
        Viewer("4d", b"", b"")


def test_run_report_has_3d_viewers_with_the_sampling_stated(run_dir):
    data = report_from_run(run_dir)
    ok = [m for m in data.maps if m.ok]
    assert ok and all(m.viewer is not None and m.viewer.kind == "3d" for m in ok)
    assert all(m.viewer is None for m in data.maps if not m.ok)
    text = render_html(data)
    assert text.count('data-autostart="false"></div>') == len(ok)
    assert "full resolution (12x12x12 voxels)" in text
    assert "sA.niivue" in text  # the inlined NiiVue (UMD global)
    # one input payload for the four maps of the one input item: 1 + 4 payloads
    assert text.count('<script type="application/octet-stream"') <= 1 + len(ok)
    plain = render_html(report_from_run(run_dir, viewers=False))
    assert "sA.niivue" not in plain and 'esegeta-viewer"' not in plain
    # the cost of the viewers: NiiVue, the viewer script and small uint8 payloads
    niivue = len((Path(html_module.__file__).parent / "assets" / "niivue.umd.js").read_bytes())
    assert len(text) - len(plain) < niivue + 60_000


def _launch(sync_api, p):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (chromium on PATH or ESEGETA_CHROMIUM)")
    try:
        # WebGL2 without a GPU: SwiftShader
        return p.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
        )
    except sync_api.Error as exc:
        pytest.skip(f"Chromium at {executable} did not start: {exc}")


def _watch(page) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "request",
        lambda r: (
            None if r.url.startswith(("file:", "data:")) else problems.append(f"request to {r.url}")
        ),
    )
    return problems


def test_2d_overlay_controls_change_the_picture_in_a_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    maps = [MapEntry("m.a", "c1", png=_png((1, 2, 3)), viewer=_viewer_2d())]
    path = write_html_report(ReportData("v2", [InputSection("x", maps=maps)]), tmp_path / "r.html")
    with sync_api.sync_playwright() as p:
        browser = _launch(sync_api, p)
        try:
            page = browser.new_page()
            problems = _watch(page)
            page.goto(path.as_uri())
            page.wait_for_selector(".esegeta-viewer[data-state=ready] canvas")
            pixels = "c => Array.from(c.getContext('2d').getImageData(0, 0, 30, 20).data)"
            canvas = page.locator(".esegeta-viewer canvas")
            before = np.array(canvas.evaluate(pixels)).reshape(20, 30, 4)
            assert before[10, 5, 0] > before[10, 5, 2] + 40  # positive: red over grey
            assert before[10, 24, 2] > before[10, 24, 0] + 20  # negative: blue
            page.locator(".esegeta-viewer input[name=opacity]").fill("0")
            plain = np.array(canvas.evaluate(pixels)).reshape(20, 30, 4)
            assert abs(int(plain[10, 5, 0]) - int(plain[10, 5, 2])) <= 2  # the grey input
            assert (plain != before).any()
            page.locator(".esegeta-viewer input[name=opacity]").fill("100")
            page.locator(".esegeta-viewer select[name=sign]").select_option("positive")
            positive = np.array(canvas.evaluate(pixels)).reshape(20, 30, 4)
            assert positive[10, 5, 0] > positive[10, 5, 2] + 40
            assert abs(int(positive[10, 24, 0]) - int(positive[10, 24, 2])) <= 2  # hidden
            page.locator(".esegeta-viewer select[name=colormap]").select_option("viridis")
            assert (np.array(canvas.evaluate(pixels)).reshape(20, 30, 4) != positive).any()
            assert not problems, problems
        finally:
            browser.close()


def test_niivue_renders_the_3d_volume_in_a_browser(run_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    path = write_html_report(report_from_run(run_dir), tmp_path / "r3.html")
    with sync_api.sync_playwright() as p:
        browser = _launch(sync_api, p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems = _watch(page)
            page.goto(path.as_uri())
            if not page.evaluate("!!document.createElement('canvas').getContext('webgl2')"):
                pytest.skip("this Chromium has no WebGL2 (NiiVue needs it)")
            viewers = page.locator(".esegeta-viewer[data-kind='3d']")
            for i in range(2):
                viewers.nth(i).locator("button.esegeta-start").click()
                page.wait_for_function(
                    f"document.querySelectorAll('.esegeta-viewer[data-kind=\"3d\"]')[{i}]"
                    ".getAttribute('data-state') !== 'loading'"
                )
                assert viewers.nth(i).get_attribute("data-state") == "ready", problems
            page.wait_for_timeout(300)
            shot = viewers.nth(0).locator(".esegeta-niivue canvas").screenshot()
            with Image.open(io.BytesIO(shot)) as img:
                grey = np.asarray(img.convert("L"), dtype=np.float32)
            assert grey.std() > 5 and (grey > 40).mean() > 0.02  # a picture, not a blank
            # the crosshair is linked: a click in one viewer moves the other's
            other = "document.querySelectorAll('.esegeta-viewer[data-kind=\"3d\"]')[1].niivue"
            start = page.evaluate(f"Array.from({other}.scene.crosshairPos)")
            box = viewers.nth(0).locator(".esegeta-niivue canvas").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3)
            page.wait_for_timeout(200)
            assert page.evaluate(f"Array.from({other}.scene.crosshairPos)") != start
            # render and MIP modes
            mode = viewers.nth(0).locator("select[name=mode]")
            mode.select_option("render")
            mode.select_option("mip")
            assert viewers.nth(0).locator("canvas.esegeta-mip").is_visible()
            assert not problems, problems
        finally:
            browser.close()

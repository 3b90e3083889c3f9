"""The report's parts on their own: ids, escaping, sortable tables, payloads and the page's
assets (package resources inlined byte for byte)."""

from __future__ import annotations

import base64
import hashlib
import math
import re

import numpy as np

from esegeta_core.report.anchors import UniqueIds, anchor_id
from esegeta_core.report.assets import ASSETS_DIR, asset_text
from esegeta_core.report.cards import Payloads, zoomable_image
from esegeta_core.report.html import ReportData, render_html
from esegeta_core.report.markup import escape, json_block, seconds_text
from esegeta_core.report.tables import TableColumn, as_number, format_value, sortable_table


def test_ids_are_valid_readable_and_unique():
    assert anchor_id("Job One / c1") == "job-one-c1" and anchor_id("<>") == "x"
    ids = UniqueIds()
    assert [ids.take("A"), ids.take("a"), ids.take("a-2"), ids.take("a")] == [
        "a",
        "a-2",
        "a-2-2",
        "a-3",
    ]


def test_markup_escapes_and_formats():
    assert escape('<b a="1">') == "&lt;b a=&quot;1&quot;&gt;"
    assert json_block({"x": "<y>"}) == "{\n  &quot;x&quot;: &quot;&lt;y&gt;&quot;\n}"
    assert [seconds_text(v) for v in (None, math.nan, 0.5, 12.25, 1234.0)] == [
        "",
        "",
        "0.5 s",
        "12.2 s",
        "1234 s",
    ]


def test_numbers_and_their_text():
    assert as_number(np.float32(0.5)) == 0.5 and as_number(np.int64(3)) == 3.0
    assert [as_number(v) for v in (None, math.nan, True, "1", np.zeros(2))] == [None] * 5
    assert as_number(-math.inf) == -math.inf
    assert format_value(7, ".2f") == "7" and format_value(0.123456, ".2%") == "12.35%"
    assert format_value(math.inf, ".4g") == "∞" and format_value(None, ".4g") == ""
    assert format_value(12345.6, "seconds") == "12,346" and format_value("n/a", ".4g") == "n/a"


def test_sortable_table_marks_the_best_per_model_and_links_rows():
    columns = [TableColumn("model", False), TableColumn("method", False)]
    columns += [TableColumn("auc", True, True, "area"), TableColumn("n", True)]
    rows = [
        {"model": "a", "method": "m1", "auc": 0.9, "n": 1},
        {"model": "a", "method": "m2", "auc": 0.5},
        {"model": "b", "method": "m1", "auc": 0.1},
        {"model": "b", "method": "m2", "auc": 0.2},
    ]
    text = sortable_table(
        "t", "cap <x>", columns, rows, ["r1", "r2", "r3", "r4"], ["m", None, None, None], "method"
    )
    assert text.startswith('<div class="table-wrap"><table class="sortable" id="t">')
    assert "<caption>cap &lt;x&gt;</caption>" in text
    best = re.findall(r'<td class="num best" data-v="([^"]+)"', text)
    assert best == ["0.9", "0.2"]  # per model, higher is better
    assert text.count('class="num missing"') == 3  # "n" of three rows
    assert text.count('title="show the maps"') == 1 and 'href="#m"' in text
    assert 'data-first="descending"' in text and "higher is better" in text


def test_payloads_are_stored_once():
    payloads = Payloads(UniqueIds())
    first = payloads.ref(b"abc")
    assert payloads.ref(b"abc") == first and payloads.ref(b"xyz") != first
    assert len(payloads.blocks) == 2 and base64.b64encode(b"abc").decode() in payloads.blocks[0]
    image = zoomable_image(b"\x89PNG\r\n\x1a\n", 'a "map"')
    assert 'alt="a &quot;map&quot;"' in image and "data:image/png;base64," in image


def test_page_assets_are_package_files_inlined_byte_for_byte():
    css, js = asset_text("report.css"), asset_text("report.js")
    assert (ASSETS_DIR / "report.css").is_file() and (ASSETS_DIR / "report.js").is_file()
    text = render_html(ReportData("t"))
    assert f"<style>{css}</style>" in text and f"<script>{js}</script>" in text
    digest = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in text  # the policy allows exactly this script

"""esegeta demo --quick end to end with the backends this plugin's tests install."""

from __future__ import annotations

import csv
import os

import pytest

from esegeta_core.cli import main


@pytest.fixture
def cache(monkeypatch, tmp_path_factory):
    """The models' cache: ESEGETA_CACHE when CI shares one, else a fresh folder."""
    if not os.environ.get("ESEGETA_CACHE"):
        monkeypatch.setenv("ESEGETA_CACHE", str(tmp_path_factory.mktemp("esegeta-cache")))


def test_quick_demo_writes_a_report_and_leaderboard(cache, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--quick", "--no-progress"]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "Grad-CAM (cnnvis)" in html and "vessel volume #0" in html
    assert html.count("data:image/png;base64,") >= 8  # input and maps, embedded
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    models = {r["model"] for r in rows}
    # the shapes ViT's section runs with cnnvis alone (its token Grad-CAM)
    assert models == {"shapes classifier", "vessel segmenter", "shapes ViT"}
    assert any(r["method"] == "Token Grad-CAM (cnnvis)" for r in rows)
    assert all(r["status"] == "ok" for r in rows), rows
    gc = next(r for r in rows if r["method"] == "Grad-CAM (cnnvis)")
    # the trained classifier's Grad-CAM points at the shapes (localisation ground truth)
    assert float(gc["pointing_game"]) >= 0.75
    for metric in ("aopc", "deletion", "insertion", "relevance_mass", "pompom", "mean_rank"):
        assert gc[metric] != "", metric
    # the report names each model's best method by mean rank
    best = min((r for r in rows if r["model"] == "shapes classifier"),
               key=lambda r: float(r["mean_rank"]))  # fmt: skip
    assert f"shapes classifier: {best['method']}, {float(best['mean_rank']):.2f}" in html

"""evaluate(): the leaderboard of methods x metrics, its files, the CLI and the config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from esegeta_core import InvalidInputError, InvalidParamsError
from esegeta_core.cli import main
from esegeta_core.evaluation import aopc, infidelity, pointing_game, pompom
from esegeta_core.evaluation.api import MethodRun, evaluate
from esegeta_core.evaluation.leaderboard import METRICS, Leaderboard, MethodScores
from esegeta_core.model_state import ModelState
from esegeta_core.testing import tiny_input, tiny_model

pytestmark = pytest.mark.usefixtures("demo")

CHEAP = {
    "deletion": {"steps": 8},
    "insertion": {"steps": 8},
    "max_sensitivity": {"n_samples": 2},
    "randomisation": {"layers": "children"},
    "infidelity": {"n_samples": 4},
}


@pytest.fixture
def clf():
    return tiny_model("classification", 2), tiny_input("classification", 2, batch=3, size=16)


def _box_masks(batch: int, size: int) -> torch.Tensor:
    masks = torch.zeros(batch, 1, size, size)
    masks[:, :, 4:10, 5:11] = 1
    return masks


def test_every_metric_for_two_methods_with_values_equal_to_the_metric_functions(clf):
    model, x = clf
    masks = _box_masks(3, 16)
    before = ModelState.capture(model)
    board = evaluate(
        model,
        x,
        ["demo.grad_x_input", ("demo.layer_mean", {"layer": "features.conv2"})],
        masks=masks,
        metric_params=CHEAP,
        progress=False,
        keep_maps=True,
    )
    assert before.restore() == 0 and not model.training
    assert list(board.metrics) == list(METRICS)
    rows = board.rows()
    assert [r["method"] for r in rows] == ["demo.grad_x_input", "demo.layer_mean"]
    for r in rows:
        assert r["status"] == "ok" and r["items"] == 3 and r["seconds"] > 0
        assert r["sanity"] in ("pass", "fail")
        assert all(not math.isnan(r[m]) for m in METRICS), r
    # the values are the metric functions' own on the same maps
    maps = board.maps["model", "demo.grad_x_input"]
    target = model(x).argmax(1)
    expected_aopc = aopc(model, x, target, maps).aopc.mean()
    assert rows[0]["aopc"] == pytest.approx(float(expected_aopc), rel=1e-5)
    expected_inf = infidelity(model, x, target, maps, n_samples=4).infidelity.mean()
    assert rows[0]["infidelity"] == pytest.approx(float(expected_inf), rel=1e-5)
    hits = pointing_game(maps, masks).hit
    per_class = [hits[target == c].mean() for c in target.unique()]
    assert rows[0]["pointing_game"] == pytest.approx(float(torch.stack(per_class).mean()))
    # POMPOM by default with a relative threshold (5% of each map's maximum)
    expected_pompom = pompom(maps, masks, eps=0.05, relative=True).mean()
    assert rows[0]["pompom"] == pytest.approx(float(expected_pompom))
    # layer-resolution maps are scored at input resolution
    assert board.maps["model", "demo.layer_mean"].shape == (3, 1, 16, 16)


def test_localisation_metrics_need_masks_and_are_left_out_without(clf):
    model, x = clf
    board = evaluate(model, x, ["demo.grad_x_input"], metrics=["aopc"], progress=False)
    assert list(board.metrics) == ["aopc"]
    default = evaluate(model, x, ["demo.grad_x_input"], metric_params=CHEAP, progress=False).metrics
    assert "pointing_game" not in default and "aopc" in default
    with pytest.raises(InvalidParamsError, match="masks"):
        evaluate(model, x, ["demo.grad_x_input"], metrics=["pompom"], progress=False)
    with pytest.raises(InvalidParamsError, match="unknown metric"):
        evaluate(model, x, ["demo.grad_x_input"], metrics=["pointing"], progress=False)
    with pytest.raises(InvalidParamsError, match="preset"):
        evaluate(model, x, ["demo.grad_x_input"], metrics=["aopc"], preset="x", progress=False)
    with pytest.raises(InvalidInputError, match="masks"):
        evaluate(
            model,
            x,
            ["demo.grad_x_input"],
            metrics=["pompom"],
            masks=torch.ones(3, 1, 8, 8),
            progress=False,
        )


def test_several_models_failures_and_visualizations_become_rows(clf):
    model, x = clf
    other = tiny_model("classification", 2, seed=1)
    board = evaluate(
        {"a": model, "b": other},
        x,
        [MethodRun("demo.grad_x_input", title="gxi"), "demo.broken", "demo.flat2d"],
        metrics=["aopc"],
        progress=False,
    )
    rows = {(r["model"], r["method"]): r for r in board.rows()}
    assert set(rows) == {(m, t) for m in "ab" for t in ("gxi", "demo.broken", "demo.flat2d")}
    assert rows["a", "demo.broken"]["status"] == "error"
    assert "demo.broken" in rows["a", "demo.broken"]["error"]
    assert rows["a", "gxi"]["aopc"] != rows["b", "gxi"]["aopc"]
    assert board.best("aopc")["method"] in ("gxi", "demo.flat2d")


def test_segmentation_with_label_maps_in_3d():
    model = tiny_model("segmentation", 3)
    x = tiny_input("segmentation", 3, batch=2, size=8)
    labels = model(x).argmax(1)
    winner = int(labels.flatten().mode().values)  # a class with a non-empty mask
    board = evaluate(
        model,
        x,
        ["demo.grad_x_input"],
        target=winner,
        task="segmentation",
        masks=labels,
        metrics=["aopc", "deletion", "pointing_game", "relevance_mass", "pompom"],
        metric_params={"deletion": {"steps": 4}},
        progress=False,
    )
    (row,) = board.rows()
    assert row["status"] == "ok" and row["items"] == 2
    assert 0 <= row["relevance_mass"] <= 1


def test_merge_csv_and_json(tmp_path, clf):
    model, x = clf
    # zero perturbation: per-item values do not depend on the batch (noise would)
    kw = {"metrics": ["aopc"], "metric_params": {"aopc": {"perturbation": "zero"}}}
    a = evaluate(model, x[:2], ["demo.grad_x_input"], progress=False, **kw)
    b = evaluate(model, x[2:], ["demo.grad_x_input"], progress=False, **kw)
    whole = evaluate(model, x, ["demo.grad_x_input"], progress=False, **kw)
    merged = Leaderboard.combine([a, b])
    assert merged.rows()[0]["items"] == 3
    assert merged.rows()[0]["aopc"] == pytest.approx(whole.rows()[0]["aopc"], rel=1e-5)
    text = merged.to_csv(tmp_path / "lb.csv")
    assert (tmp_path / "lb.csv").read_text() == text
    assert text.splitlines()[0].startswith("model,method,mean_rank,aopc,seconds,peak_mb")
    merged.to_json(tmp_path / "lb.json")
    data = json.loads((tmp_path / "lb.json").read_text())
    assert data["columns"][1] == {
        "name": "aopc",
        "higher_is_better": True,
        "description": METRICS["aopc"].description,
    }
    assert data["rows"][0]["method"] == "demo.grad_x_input"


def test_mean_rank_is_per_model_unit_free_and_averages_ties():
    def scores(model, method, **values):
        t = torch.zeros(1, dtype=torch.long)
        vals = {k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()}
        return MethodScores(model, method, method, {}, t, vals)

    nan = float("nan")
    board = Leaderboard(
        [
            # model a: aopc higher is better, deletion lower is better
            scores("a", "m1", aopc=3.0, deletion=0.1),  # best, best
            scores("a", "m2", aopc=1.0, deletion=0.5),  # worst, tied second
            scores("a", "m3", aopc=2.0, deletion=0.5),  # second, tied second
            scores("a", "m4", aopc=nan, deletion=0.9),  # only deletion: last of 4
            # model b: values in other units (x1000), ranked on their own
            scores("b", "m1", aopc=1000.0, deletion=900.0),
            scores("b", "m2", aopc=3000.0, deletion=100.0),
            scores("b", "m3", aopc=nan, deletion=nan),
        ],
        ["aopc", "deletion"],
    )
    got = {(r["model"], r["method"]): r["mean_rank"] for r in board.rows()}
    assert got[("a", "m1")] == 1.0
    assert got[("a", "m2")] == pytest.approx((3 + 2.5) / 2)
    assert got[("a", "m3")] == pytest.approx((2 + 2.5) / 2)
    assert got[("a", "m4")] == 4.0
    assert got[("b", "m1")] == 2.0 and got[("b", "m2")] == 1.0
    assert math.isnan(got[("b", "m3")])
    assert board.best("mean_rank")["method"] == "m1"
    assert board.best("mean_rank", "b")["method"] == "m2"  # among model b's rows
    assert board.best("mean_rank", "nope") is None
    assert "mean_rank" not in Leaderboard([scores("a", "m1")], []).rows()[0]


def test_esegeta_evaluate_cli_writes_leaderboard_and_report(tmp_path, capsys):
    import nibabel as nib

    x = tiny_input("segmentation", 3, batch=1, size=10)
    nib.save(nib.Nifti1Image(x[0, 0].numpy(), np.eye(4)), tmp_path / "vol.nii.gz")
    labels = tiny_model("segmentation", 3)(x).argmax(1)[0].numpy().astype(np.int16)
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), np.eye(4)), tmp_path / "lab.nii.gz")
    config = {
        "name": "ev",
        "output_dir": str(tmp_path / "out"),
        "model": {
            "factory": "esegeta_core.testing.models:tiny_model",
            "kwargs": {"task": "segmentation", "rank": 3},
        },
        "inputs": {"paths": ["vol.nii.gz"], "rank": 3, "scale": "none"},
        "task": "segmentation",
        "targets": [1, 2],
        "methods": [{"method": "demo.grad_x_input"}, {"method": "demo.noisy", "title": "noisy"}],
        "evaluation": {
            "metrics": ["aopc", "pointing_game"],
            "metric_params": {"aopc": {"grid": 4}},
            "masks": ["lab.nii.gz"],
        },
        "progress": False,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["evaluate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "demo.grad_x_input" in out and "noisy" in out and "pointing_game" in out
    folder = tmp_path / "out" / "ev"
    rows = json.loads((folder / "evaluation" / "leaderboard.json").read_text())["rows"]
    assert [r["items"] for r in rows] == [2, 2]  # two targets of one item
    html = (folder / "report.html").read_text()
    assert "pointing_game" in html and "noisy" in html


def test_evaluation_section_is_validated(tmp_path):
    from esegeta_core.config import RunConfig

    base = {
        "model": {"factory": "m:f"},
        "inputs": {"paths": ["x.npy"]},
        "methods": [{"method": "demo.grad_x_input"}],
    }
    with pytest.raises(Exception, match="unknown metric"):
        RunConfig.model_validate({**base, "evaluation": {"metrics": ["nope"]}})
    with pytest.raises(Exception, match="unknown metric"):
        RunConfig.model_validate({**base, "evaluation": {"metric_params": {"nope": {}}}})
    ok = RunConfig.model_validate({**base, "evaluation": {"preset": "torchesegeta"}})
    assert ok.evaluation.preset == "torchesegeta"


def test_segmentation_region_targets_score_the_region_per_item():
    """A Region target's curves score the class's logits inside that item's own mask."""
    from esegeta_core.targets import Region, RegionScores, ScoreModel

    model = tiny_model("segmentation", 2)
    x = tiny_input("segmentation", 2, batch=2, size=16)
    regions = torch.zeros(2, 16, 16, dtype=torch.bool)
    regions[0, 2:8, 2:8] = True
    regions[1, 8:14, 6:12] = True
    board = evaluate(
        model,
        x,
        ["demo.grad_x_input"],
        Region(1, regions),
        task="segmentation",
        metrics=["aopc"],
        progress=False,
        keep_maps=True,
    )
    maps = board.maps["model", "demo.grad_x_input"]
    expected = [
        aopc(
            ScoreModel(model, RegionScores(regions[i : i + 1])),
            x[i : i + 1],
            1,
            maps[i : i + 1],
            score="raw",
        ).aopc.reshape(())
        for i in range(2)
    ]
    assert board.rows()[0]["aopc"] == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)
    # a shared mask scores the whole batch at once, the same as item by item
    shared = evaluate(
        model, x, ["demo.grad_x_input"], Region(1, regions[0]), task="segmentation",
        metrics=["aopc"], progress=False, keep_maps=True,
    )  # fmt: skip
    one = ScoreModel(model, RegionScores(regions[0]))
    shared_maps = shared.maps["model", "demo.grad_x_input"]
    want = aopc(one, x, torch.ones(2, dtype=torch.long), shared_maps, score="raw")
    assert shared.rows()[0]["aopc"] == pytest.approx(float(want.aopc.mean()), rel=1e-5)


def test_evaluate_is_a_plain_function_at_the_top(clf):
    import inspect

    import esegeta_core
    import esegeta_core.evaluation

    model, x = clf
    assert inspect.isfunction(esegeta_core.evaluate)  # even after the package is imported
    assert esegeta_core.evaluate is evaluate is esegeta_core.evaluation.evaluate
    a = esegeta_core.evaluate(model, x, ["demo.grad_x_input"], metrics=["aopc"], progress=False)
    assert isinstance(a, Leaderboard) and a.rows()[0]["method"] == "demo.grad_x_input"
    assert esegeta_core.evaluation.aopc is aopc  # the metrics' package

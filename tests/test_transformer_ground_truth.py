"""Expected results of the transformer methods on the synthetic ground-truth benchmark.

A tiny vision transformer (:class:`esegeta_core.synthetic.ShapesViT`: 8 x 8 patches,
four blocks, a class token) trained on the shapes images; the attention methods and the
token Grad-CAM are compared with Integrated Gradients and a map that always points at
the image centre, by the pointing game (TorchRay's, at 4 px) and AOPC (8 px cells,
noise, most relevant first), on 64 held-out images. The values measured when this test
was written (torch 2.14, CPU, seed 0) are in the comments; the thresholds leave a
margin. The model trains once (about 75 s on one thread) into ``$ESEGETA_CACHE`` when CI
shares one between test processes, else into a temporary folder.
"""

from __future__ import annotations

import os

import pytest
import torch

from esegeta_core import explain
from esegeta_core.evaluation import pointing_game
from esegeta_core.evaluation.curves import aopc
from esegeta_core.synthetic import default_cache_dir, evaluate_model, pretrained

for _plugin in ("esegeta_attention", "esegeta_cnnvis", "esegeta_captum"):
    pytest.importorskip(_plugin)

METHODS = {
    "attention.rollout": {},
    "attention.gae": {},
    "cnnvis.grad_cam": {},  # the token Grad-CAM, layer="auto": the last block's input
    "captum.integrated_gradients": {"n_steps": 32},
}


@pytest.fixture(scope="module")
def vit(tmp_path_factory):  # type: ignore[no-untyped-def]
    if os.environ.get("ESEGETA_CACHE"):
        cache = default_cache_dir()
    else:
        cache = tmp_path_factory.mktemp("esegeta-cache") / "models"
    return pretrained("shapes_vit", cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def data(vit):  # type: ignore[no-untyped-def]
    return vit.test_data(64, seed=1)


@pytest.fixture(scope="module")
def scores(vit, data):  # type: ignore[no-untyped-def]
    """Pointing game and AOPC of every method and of the centre baseline."""
    maps = {
        name: explain(vit.model, data.images, name, data.labels, **params).saliency()
        for name, params in METHODS.items()
    }
    size = data.images.shape[-1]
    axis = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    peak = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * 8.0**2))
    maps["centre"] = peak.expand(len(data.images), 1, size, size).clone()
    out = {}
    for name, m in maps.items():
        hits = pointing_game(m, data.masks, tolerance=vit.pointing_tolerance).hit
        drop = aopc(vit.model, data.images, data.labels, m, grid=8, seed=0).aopc
        out[name] = (float(hits.float().mean()), float(drop.mean()))
    return out


def test_the_vit_reaches_its_target(vit, data) -> None:  # type: ignore[no-untyped-def]
    assert vit.metrics["accuracy"] >= vit.recipe.target  # 0.92 on 500, target 0.9
    assert evaluate_model(vit.model, data)["accuracy"] >= 0.88  # 0.94 on these 64
    assert vit.cam_layer == "blocks.2"


def test_attention_maps_point_at_the_shape(scores) -> None:  # type: ignore[no-untyped-def]
    # measured: rollout 1.00, gae 0.94, integrated gradients 0.78, token Grad-CAM 0.72,
    # centre 0.38 (larger shapes than the CNN benchmark's: the centre hits more often)
    assert scores["attention.rollout"][0] >= 0.9
    assert scores["attention.gae"][0] >= 0.85
    assert scores["captum.integrated_gradients"][0] >= 0.65
    assert scores["cnnvis.grad_cam"][0] >= 0.6
    assert scores["centre"][0] <= 0.5
    for name in METHODS:
        assert scores[name][0] >= scores["centre"][0] + 0.2, name


def test_attention_maps_are_faithful_by_aopc(scores) -> None:  # type: ignore[no-untyped-def]
    # measured AOPC: gae 0.537, rollout 0.534, integrated gradients 0.527, centre 0.425,
    # token Grad-CAM 0.390 (below the centre: its map at the last block's input ranks
    # the 8 x 8 cells worse than a fixed centre map does, though it points at the shape)
    for name in ("attention.rollout", "attention.gae", "captum.integrated_gradients"):
        assert scores[name][1] >= scores["centre"][1] + 0.05, name
    assert scores["cnnvis.grad_cam"][1] <= scores["attention.gae"][1]


def test_the_demo_scores_the_vit_section(vit, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from esegeta_core import demo

    plan = demo.plan_vit(quick=True)
    assert [m.method for m in plan.cheap] == [
        "attention.rollout",
        "attention.gae",
        "cnnvis.grad_cam",
    ]
    board = demo._evaluate_plan(
        vit.model, data.images[:3], plan, target=None, masks=data.masks[:3],
        task="classification", name="shapes ViT", progress=False,
        tolerance=vit.pointing_tolerance,
    )  # fmt: skip
    rows = {r["method"]: r for r in board.rows()}
    assert set(rows) == {m.label for m in plan.cheap}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["sanity"] == "pass", row  # the randomisation check runs on the ViT
    sections = demo._sections("vit", data.images[:3], board, [], tmp_path, ["a", "b", "c"])
    assert [len(s.maps) for s in sections] == [3, 3, 3]

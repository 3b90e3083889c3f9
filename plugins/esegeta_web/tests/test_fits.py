"""The method lists mark what does not fit the chosen model (rank, and each method's
own pre-run check on the model built once), with the reason."""

from __future__ import annotations

import re
from pathlib import Path

from esegeta_web.app import create_app
from esegeta_web.models import DeclaredModel
from fastapi.testclient import TestClient

from esegeta_core.testing.environment import require_method

FACTORY = "esegeta_core.testing.models:tiny_model"
MODELS = {"tiny": DeclaredModel("tiny", {"factory": FACTORY, "kwargs": {}})}


def test_methods_that_do_not_fit_the_model_are_greyed_with_the_reason(tmp_path: Path) -> None:
    attention = require_method("attention.rollout")
    gradient = require_method("cnnvis.vanilla_backprop", "captum.saliency")
    client = TestClient(create_app(tmp_path, models=MODELS))
    fits = client.get("/runs/new/fits", params={"model": "tiny"}).json()
    assert fits["model"] == "tiny"
    assert "no attention module" in fits["unfit"][attention]  # its own check_model
    assert gradient not in fits["unfit"]
    # the new-run page marks them for the first (chosen) model, the reason as title
    page = client.get("/runs/new").text
    option = re.search(rf'<option value="{re.escape(attention)}"[^>]*>', page)
    assert (
        option and 'data-unfit="1"' in option.group(0) and "no attention module" in option.group(0)
    )
    fitting = re.search(rf'<option value="{re.escape(gradient)}"[^>]*>', page)
    assert fitting and "data-unfit" not in fitting.group(0)
    assert client.get("/runs/new/fits", params={"model": "nope"}).status_code == 403
    # the model is built once per name: the next answer is the cached one
    assert client.app.state.fits.unfit(MODELS["tiny"]) == fits["unfit"]  # type: ignore[attr-defined]


def test_a_declared_rank_rules_out_methods_of_other_ranks(tmp_path: Path) -> None:
    from esegeta_core.plugin.manager import get_registry

    two_d = [n for n, c in get_registry().methods.items() if tuple(c.ranks) == (2,)]
    if not two_d:
        import pytest

        pytest.skip("no installed method is 2D only")
    models = {"vol": DeclaredModel("vol", {"factory": FACTORY, "kwargs": {"rank": 3}})}
    client = TestClient(create_app(tmp_path, models=models))
    unfit = client.get("/runs/new/fits", params={"model": "vol"}).json()["unfit"]
    assert "explains 2D inputs; the model takes 3D inputs" in unfit[two_d[0]]


def test_a_declared_task_rules_out_methods_of_other_tasks(tmp_path: Path) -> None:
    from esegeta_core.plugin.manager import get_registry

    methods = get_registry().methods
    one_task = [n for n, c in methods.items() if tuple(c.tasks) == ("classification",)]
    if not one_task:
        import pytest

        pytest.skip("no installed method explains classifiers only")
    models = {
        "seg": DeclaredModel(
            "seg",
            {"factory": FACTORY, "kwargs": {"task": "segmentation"}},
            {"task": "segmentation"},
        ),
        "cls": DeclaredModel("cls", {"factory": FACTORY, "kwargs": {}}, {"task": "classification"}),
    }
    client = TestClient(create_app(tmp_path, models=models))
    unfit = client.get("/runs/new/fits", params={"model": "seg"}).json()["unfit"]
    assert "explains classification models; the model is a segmentation model" in unfit[one_task[0]]
    assert one_task[0] not in client.get("/runs/new/fits", params={"model": "cls"}).json()["unfit"]

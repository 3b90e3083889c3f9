"""Bad inputs get clear errors, and a failing TorchRay call leaves nothing behind."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from esegeta_core import (
    InvalidParamsError,
    LayerNotFoundError,
    MethodFailedError,
    UnsupportedRankError,
    explain,
)
from esegeta_core.model_state import count_hooks
from esegeta_core.testing import tiny_input, tiny_model


@pytest.fixture
def clf() -> tuple[torch.nn.Module, torch.Tensor]:
    return tiny_model(), tiny_input()


@pytest.mark.parametrize(
    ("method", "params", "needle"),
    [
        ("torchray.rise", {"num_masks": 0}, "num_masks"),
        ("torchray.rise", {"num_cells": 1}, "num_cells"),
        ("torchray.rise", {"p": 1.5}, "p"),
        ("torchray.rise", {"batch_size": 0}, "batch_size"),
        ("torchray.rise", {"filter_masks": torch.ones(2, 1, 16, 16), "num_cells": 4}, "num_cells"),
        ("torchray.extremal_perturbation", {"areas": [0.0]}, "areas"),
        ("torchray.extremal_perturbation", {"areas": [1.5]}, "areas"),
        ("torchray.extremal_perturbation", {"areas": []}, "areas"),
        ("torchray.extremal_perturbation", {"max_iter": 0}, "max_iter"),
        ("torchray.extremal_perturbation", {"num_levels": 1}, "num_levels"),
        ("torchray.extremal_perturbation", {"reward": "fancy"}, "reward"),
        ("torchray.gradient", {"resize_mode": "bicubic"}, "only applies with resize"),
        ("torchray.gradient", {"resize": 2}, "resize"),
        ("torchray.gradient", {"resize": (16, 0)}, "resize"),
        ("torchray.gradient", {"resize_mode": "nearest", "resize": True}, "resize_mode"),
        ("torchray.gradient", {"smooth": -1.0}, "smooth"),
        ("torchray.grad_cam", {"layer": "features.conv2", "saliency_layer": "fc"}, "another name"),
    ],
    ids=str,
)
def test_bad_parameters(clf, method, params, needle) -> None:
    model, x = clf
    with pytest.raises(InvalidParamsError, match=needle):
        explain(model, x, method, **params)


def test_layers_default_to_auto_and_saliency_layer_is_an_alias(clf) -> None:
    model, x = clf
    e = explain(model, x, "torchray.grad_cam", 1)
    assert e.params.layer == "features" and e.extras["layer_auto"] == {"layer": "features"}
    same = explain(model, x, "torchray.grad_cam", 1, saliency_layer="features")
    assert torch.equal(same.attributions, e.attributions)
    # the contrast layer defaults to the module that runs just before the classifier
    ceb = explain(model, x, "torchray.contrastive_excitation_backprop", 1, layer="features.conv1")
    explicit = explain(
        model, x, "torchray.contrastive_excitation_backprop", 1, layer="features.conv1",
        contrast_layer="pool",
    )  # fmt: skip
    assert torch.allclose(ceb.attributions, explicit.attributions)


@pytest.mark.parametrize(
    ("method", "params", "rank", "needle"),
    [
        ("torchray.gradient", {"resize": (16,), "saliency_layer": "features.conv2"}, 2, "1 sizes"),
        ("torchray.gradient", {"resize": True, "resize_mode": "bilinear"}, 3, "trilinear"),
        ("torchray.gradient", {"smooth": 0.1}, 3, "2D"),
        ("torchray.rise", {"num_cells": 17, "num_masks": 2}, 2, "smallest side 16"),
        ("torchray.rise", {"filter_masks": torch.ones(2, 1, 8, 8)}, 2, r"\(num_masks, 1, 16, 16\)"),
        (
            "torchray.rise",
            {"filter_masks": torch.ones(2, 1, 16, 16), "num_masks": 3},
            2,
            "holds 2 masks",
        ),
        (
            "torchray.extremal_perturbation",
            {"step": 4, "sigma": 6.0, "max_iter": 1},
            2,
            "sigma = 3 \\* step",
        ),
        ("torchray.gradient", {"saliency_layer": "fc"}, 2, "convolutional layer"),
        (
            "torchray.contrastive_excitation_backprop",
            {
                "saliency_layer": "features.conv1",
                "contrast_layer": "features.conv2",
                "classifier_layer": "features.relu2",
            },
            2,
            "no weight to negate",
        ),
    ],
    ids=str,
)
def test_bad_parameters_for_the_input(method, params, rank, needle) -> None:
    model, x = tiny_model(rank=rank), tiny_input(rank=rank)
    with pytest.raises(InvalidParamsError, match=needle):
        explain(model, x, method, **params)


def test_wrong_layer_name(clf) -> None:
    model, x = clf
    with pytest.raises(LayerNotFoundError, match="features.conv2"):
        explain(model, x, "torchray.grad_cam", saliency_layer="features.conv3")
    with pytest.raises(LayerNotFoundError, match="classifier_layer|fc"):
        explain(
            model,
            x,
            "torchray.contrastive_excitation_backprop",
            saliency_layer="features.conv1",
            contrast_layer="features.conv2",
            classifier_layer="fc2",
        )


@pytest.mark.parametrize(
    "method", ["torchray.grad_cam", "torchray.rise", "torchray.extremal_perturbation"]
)
def test_3d_input_to_2d_only_method(method) -> None:
    model, x = tiny_model(rank=3), tiny_input(rank=3)
    with pytest.raises(UnsupportedRankError, match=r"supports 2D inputs only.*handle 3D") as err:
        explain(model, x, method, saliency_layer="features.conv2")
    assert method in str(err.value)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("torchray.guided_backprop", {"saliency_layer": "features.relu2"}),
        ("torchray.grad_cam", {"saliency_layer": "fc"}),
        ("torchray.excitation_backprop", {"saliency_layer": "features.relu1"}),
    ],
)
def test_failure_leaves_model_and_torch_as_found(method, params, monkeypatch, caplog) -> None:
    """A TorchRay call that fails half-way (the probe attached, the ReLU/conv functions
    patched) leaves no hook, no patched torch function and no changed ``inplace``."""
    model, x = tiny_model(), tiny_input()
    model.features.relu1.inplace = True
    relu, conv2d = torch.relu, torch.nn.functional.conv2d

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    # saliency() fails after attaching its probe (Grad-CAM at 'fc' fails by itself)
    if method != "torchray.grad_cam":
        monkeypatch.setattr("torchray.attribution.common.resize_saliency", broken)
    hooks = count_hooks(model)
    with caplog.at_level(logging.WARNING), pytest.raises((MethodFailedError, InvalidParamsError)):
        explain(model, x, method, **params)
    assert count_hooks(model) == hooks
    assert not [r for r in caplog.records if "hook" in r.getMessage()]
    assert torch.relu is relu and torch.nn.functional.conv2d is conv2d
    assert model.features.relu1.inplace is True


def test_importing_the_plugin_does_not_import_torchray() -> None:
    code = "import sys, esegeta_torchray; print('torchray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""esegeta's TorchRay methods return exactly what direct TorchRay calls return.

Same tiny model, input, per-item targets (different per item) and parameters; the
direct calls name layers as strings (TorchRay's own lookup), esegeta resolves them to
modules, and for segmentation both go through the same ``ScoreModel`` wrapper.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from esegeta_core import ScoreModel, explain
from esegeta_core.targets import MultiClassScores
from esegeta_core.testing import tiny_input, tiny_model

TARGETS = {"classification": [1, 3], "segmentation": [2, 0]}


def torchray(path: str) -> Callable[..., Any]:
    module, name = path.split(":")
    return getattr(__import__(f"torchray.attribution.{module}", fromlist=[name]), name)


@dataclass(frozen=True)
class Same:
    """One equivalence: esegeta ``params`` vs TorchRay ``function(**kwargs)``.

    Layer values are written ``"@conv1"`` / ``"@conv2"``: the tiny model's layer, with
    the ``model.`` prefix of the segmentation wrapper in the direct call.
    """

    method: str
    function: str
    params: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    ranks: tuple[int, ...] = (2, 3)
    tasks: tuple[str, ...] = ("classification", "segmentation")  # the method's claim

    def __str__(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.method}[{extra}]"


CASES = [
    Same("torchray.gradient", "gradient:gradient"),
    Same(
        "torchray.gradient",
        "gradient:gradient",
        {"saliency_layer": "@conv2", "resize": True},
        {"saliency_layer": "@conv2", "resize": True},
    ),
    Same("torchray.gradient", "gradient:gradient", {"smooth": 0.1}, {"smooth": 0.1}, ranks=(2,)),
    Same("torchray.deconvnet", "deconvnet:deconvnet"),
    Same(
        "torchray.deconvnet",
        "deconvnet:deconvnet",
        {"saliency_layer": "@conv1"},
        {"saliency_layer": "@conv1"},
    ),
    Same("torchray.guided_backprop", "guided_backprop:guided_backprop"),
    Same(
        "torchray.guided_backprop",
        "guided_backprop:guided_backprop",
        {"saliency_layer": "@conv2", "resize": (12, 10), "resize_mode": "bicubic"},
        {"saliency_layer": "@conv2", "resize": (12, 10), "resize_mode": "bicubic"},
        ranks=(2,),
    ),
    Same(
        "torchray.grad_cam",
        "grad_cam:grad_cam",
        {"saliency_layer": "@conv2"},
        {"saliency_layer": "@conv2"},
        ranks=(2,),
    ),
    Same(
        "torchray.grad_cam",
        "grad_cam:grad_cam",
        {"saliency_layer": "@conv2", "resize": True, "smooth": 0.05},
        {"saliency_layer": "@conv2", "resize": True, "smooth": 0.05},
        ranks=(2,),
    ),
    Same("torchray.linear_approx", "linear_approx:linear_approx"),
    Same(
        "torchray.linear_approx",
        "linear_approx:linear_approx",
        {"saliency_layer": "@conv2"},
        {"saliency_layer": "@conv2"},
    ),
    Same("torchray.excitation_backprop", "excitation_backprop:excitation_backprop"),
    Same(
        "torchray.excitation_backprop",
        "excitation_backprop:excitation_backprop",
        {"saliency_layer": "@conv2", "resize": True},
        {"saliency_layer": "@conv2", "resize": True, "resize_mode": "@linear"},
    ),
    Same(
        "torchray.contrastive_excitation_backprop",
        "excitation_backprop:contrastive_excitation_backprop",
        {"saliency_layer": "@conv1", "contrast_layer": "@conv2"},
        {"saliency_layer": "@conv1", "contrast_layer": "@conv2"},
    ),
    Same(
        "torchray.contrastive_excitation_backprop",
        "excitation_backprop:contrastive_excitation_backprop",
        {
            "saliency_layer": "@conv1",
            "contrast_layer": "@conv2",
            "classifier_layer": "@head",
            "resize": True,
        },
        {
            "saliency_layer": "@conv1",
            "contrast_layer": "@conv2",
            "classifier_layer": "@head",
            "resize": True,
            "resize_mode": "@linear",
        },
    ),
    Same(
        "torchray.rise",
        "rise:rise_class",
        {"num_masks": 20, "num_cells": 4, "p": 0.4, "batch_size": 8, "mask_seed": 3},
        {"num_masks": 20, "num_cells": 4, "p": 0.4, "batch_size": 8, "seed": 3},
        ranks=(2,),
        tasks=("classification",),
    ),
]

LAYERS = {
    "classification": {"conv1": "features.conv1", "conv2": "features.conv2", "head": "fc"},
    "segmentation": {"conv1": "encoder.conv1", "conv2": "encoder.conv2", "head": "head"},
}


def _direct_kwargs(kwargs: dict[str, Any], task: str, rank: int) -> dict[str, Any]:
    prefix = "model." if task == "segmentation" else ""
    out = {}
    for key, value in kwargs.items():
        if value == "@linear":
            value = "bilinear" if rank == 2 else "trilinear"
        elif isinstance(value, str) and value.startswith("@"):
            value = prefix + LAYERS[task][value[1:]]
        out[key] = value
    return out


def _esegeta_params(params: dict[str, Any], task: str) -> dict[str, Any]:
    return {
        k: LAYERS[task][v[1:]] if isinstance(v, str) and v.startswith("@") else v
        for k, v in params.items()
    }


def _setup(task: str, rank: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    model = tiny_model(task, rank)
    scored = model if task == "classification" else ScoreModel(model, MultiClassScores())
    return model, scored, tiny_input(task, rank)


@pytest.mark.parametrize(
    ("same", "rank", "task"),
    [(c, r, t) for c in CASES for r in c.ranks for t in c.tasks],
    ids=lambda v: str(v),
)
def test_same_as_torchray(same: Same, rank: int, task: str) -> None:
    model, scored, x = _setup(task, rank)
    target = torch.tensor(TARGETS[task])
    kwargs = _direct_kwargs(same.kwargs, task, rank)
    if "resize" in kwargs and "resize_mode" not in kwargs and same.method != "torchray.rise":
        kwargs["resize_mode"] = "bilinear" if rank == 2 else "trilinear"
    expected = torchray(same.function)(scored, x.clone(), target=target, **kwargs)
    model.eval()
    got = explain(
        model, x, same.method, target=target, task=task, **_esegeta_params(same.params, task)
    )
    assert got.attributions.shape == expected.shape
    assert torch.allclose(got.attributions, expected.detach(), atol=1e-6, rtol=1e-5)
    assert got.attributions.shape[0] == x.shape[0] and got.attributions.shape[1] == 1


EP = {"areas": [0.2, 0.5], "max_iter": 2, "step": 4, "sigma": 8.0, "perturbation": "fade"}


@pytest.mark.parametrize(
    ("task", "extra", "reward"),
    [
        ("classification", {}, "simple_reward"),
        (
            "segmentation",
            {"variant": "dual", "reward": "contrastive", "jitter": False},
            "contrastive_reward",
        ),
    ],
)
def test_extremal_perturbation_same_as_torchray(task: str, extra: dict, reward: str) -> None:
    model, scored, x = _setup(task, 2)
    target = torch.tensor(TARGETS[task])
    ep = torchray("extremal_perturbation:extremal_perturbation")
    kwargs = {**EP, **{k: v for k, v in extra.items() if k != "reward"}}
    masks, energies = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(x.shape[0]):
            mask, energy = ep(
                scored,
                x[i : i + 1].clone(),
                int(target[i]),
                reward_func=torchray(f"extremal_perturbation:{reward}"),
                **kwargs,
            )
            masks.append(mask[:, 0])
            energies.append(energy)
    got = explain(
        model, x, "torchray.extremal_perturbation", target=target, task=task, **EP, **extra
    )
    assert got.attributions.shape == (2, 2, 16, 16)  # one channel per area
    assert torch.allclose(got.attributions, torch.stack(masks), atol=1e-6)
    assert torch.allclose(got.extras["energy"], torch.stack(energies))
    assert got.saliency().shape == (2, 1, 16, 16)


def test_rise_with_filter_masks_same_as_torchray() -> None:
    model, _, x = _setup("classification", 2)
    masks = (torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    target = torch.tensor([0, 2])
    rise = torchray("rise:rise_class")
    expected = rise(model, x.clone(), target=target, num_masks=6, filter_masks=masks, batch_size=4)
    got = explain(model, x, "torchray.rise", target=target, filter_masks=masks, batch_size=4)
    assert torch.allclose(got.attributions, expected)


def test_per_item_targets_are_honoured() -> None:
    """Each item's map equals the map of that item alone with its own class."""
    model, _, x = _setup("classification", 2)
    both = explain(model, x, "torchray.excitation_backprop", target=[1, 3]).attributions
    first = explain(model, x[:1], "torchray.excitation_backprop", target=1).attributions
    second = explain(model, x[1:], "torchray.excitation_backprop", target=3).attributions
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-6)
    assert not torch.allclose(
        first, explain(model, x[:1], "torchray.excitation_backprop", target=3).attributions
    )

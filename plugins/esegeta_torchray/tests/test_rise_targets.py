"""``torchray.rise`` scores only the requested targets (issue 19) and still returns
exactly TorchRay's ``rise_class`` map.

The reference is TorchRay's ``rise_class`` called directly on the same model, input,
targets and mask settings (it scores every class); the spy test records what TorchRay's
own accumulation receives inside ``explain``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchray.attribution.rise as torchray_rise

from esegeta_core import explain
from esegeta_core.testing import tiny_input, tiny_model

MASKS = {"num_masks": 64, "batch_size": 16}


def _tiny() -> tuple[torch.nn.Module, int]:
    return tiny_model(classes=10), 16


def _resnet18() -> tuple[torch.nn.Module, int]:
    torchvision = pytest.importorskip("torchvision")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None)
    return model.eval(), 32


MODELS: dict[str, Callable[[], tuple[torch.nn.Module, int]]] = {
    "tiny": _tiny,
    "resnet18": _resnet18,
}


@pytest.mark.parametrize(
    ("name", "targets", "extra"),
    [
        ("tiny", [7], {}),
        ("tiny", [7, 2, 5], {}),
        ("tiny", [3, 8, 3], {"num_cells": 5, "p": 0.3, "mask_seed": 4}),
        ("tiny", [1, 9, 4], {"resize": (20, 24), "resize_mode": "bicubic"}),
        ("resnet18", [7], {}),
        ("resnet18", [7, 412, 999], {}),
    ],
)
def test_rise_same_as_torchray_rise_class(name: str, targets: list[int], extra: dict) -> None:
    model, size = MODELS[name]()
    x = tiny_input(batch=len(targets), size=size, seed=1)
    target = torch.tensor(targets)
    direct = {("seed" if k == "mask_seed" else k): v for k, v in extra.items()}
    expected = torchray_rise.rise_class(model, x.clone(), target=target, **MASKS, **direct)
    got = explain(model, x, "torchray.rise", target=target, **MASKS, **extra).attributions
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    if len(set(targets)) > 1:  # the items' own classes, not one shared class
        other = torchray_rise.rise_class(model, x.clone(), target=target.roll(1), **MASKS, **direct)
        assert not torch.allclose(got, other, atol=1e-6, rtol=0)


def test_rise_accumulates_only_the_distinct_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model still computes all 10 classes, but TorchRay's matmul and its final map
    see only the 2 distinct targets' columns."""
    model = tiny_model(classes=10)
    x = tiny_input(batch=3, seed=1)
    model_columns: list[int] = []
    model.fc.register_forward_hook(lambda m, a, out: model_columns.append(out.shape[1]))
    scores_rows: list[int] = []
    matmul = torch.matmul

    def spy_matmul(a: torch.Tensor, b: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        scores_rows.append(a.shape[0])  # TorchRay passes the scores transposed
        return matmul(a, b, *args, **kwargs)

    maps: list[tuple[int, ...]] = []
    resize = torchray_rise.resize_saliency

    def spy_resize(input: torch.Tensor, saliency: torch.Tensor, *args: Any, **kw: Any) -> Any:
        maps.append(tuple(saliency.shape))
        return resize(input, saliency, *args, **kw)

    monkeypatch.setattr(torch, "matmul", spy_matmul)
    monkeypatch.setattr(torchray_rise, "resize_saliency", spy_resize)
    got = explain(model, x, "torchray.rise", target=[7, 2, 7], **MASKS)
    monkeypatch.undo()

    assert got.attributions.shape == (3, 1, 16, 16)
    assert model_columns and set(model_columns) == {10}
    assert len(scores_rows) == 3 * 64 // 16  # one matmul per item and mask batch
    assert set(scores_rows) == {2}
    assert maps == [(3, 2, 16, 16)]


def test_auto_batch_keeps_the_masks_torchray_draws() -> None:
    """TorchRay draws its masks ``batch_size`` at a time: ``auto_batch`` leaves the
    batch size (default or given) as it is, so the map is TorchRay's own default
    call's; with ``filter_masks`` the batch size changes nothing and is still sized."""
    model, size = _tiny()
    x = tiny_input(batch=2, size=size, seed=1)
    target = torch.tensor([7, 2])
    expected = torchray_rise.rise_class(model, x.clone(), target=target, num_masks=80)
    plain = explain(model, x, "torchray.rise", target=target, num_masks=80)
    auto = explain(model, x, "torchray.rise", target=target, num_masks=80, auto_batch=True)
    assert auto.params.batch_size == plain.params.batch_size == 32
    torch.testing.assert_close(plain.attributions, expected)
    torch.testing.assert_close(auto.attributions, expected)
    given = explain(model, x, "torchray.rise", target=target, num_masks=80, batch_size=16)
    again = explain(
        model, x, "torchray.rise", target=target, num_masks=80, batch_size=16, auto_batch=True
    )
    assert again.params.batch_size == 16
    torch.testing.assert_close(again.attributions, given.attributions)
    masks = torch.rand(40, 1, size, size, generator=torch.Generator().manual_seed(3))
    sized = explain(model, x, "torchray.rise", target=target, filter_masks=masks, auto_batch=True)
    assert sized.params.batch_size > 32
    fixed = explain(model, x, "torchray.rise", target=target, filter_masks=masks)
    torch.testing.assert_close(sized.attributions, fixed.attributions, rtol=1e-5, atol=1e-6)

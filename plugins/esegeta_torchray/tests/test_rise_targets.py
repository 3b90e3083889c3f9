"""``torchray.rise`` returns TorchRay's ``rise_class`` map (issue 19) with its own
passes: only the requested targets kept, ``pass_size`` masked inputs per pass (the
pass planner's under ``auto_batch``), the masks drawn as TorchRay draws them.

The reference is TorchRay's ``rise_class`` called directly on the same model, input,
targets and mask settings (it scores every class, ``batch_size`` masks per pass and
item); spies record the passes and the masks made inside ``explain``.
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


def test_passes_hold_pass_size_inputs_with_every_items_masks() -> None:
    """The model sees ``pass_size`` masked inputs per pass (32 when unset), whatever
    the items and ``batch_size``; each mask is made once per pass for every item, and the map is
    TorchRay's ``rise_class`` for the same ``batch_size`` whatever the passes."""
    model = tiny_model(classes=10)
    x = tiny_input(batch=3, seed=1)
    target = torch.tensor([7, 2, 7])
    expected = torchray_rise.rise_class(model, x.clone(), target=target, **MASKS)
    seen: list[int] = []
    model.fc.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    made: list[int] = []
    upsample = torchray_rise._upsample_reflect

    def spy_upsample(grids: torch.Tensor, size: Any, *args: Any) -> torch.Tensor:
        made.append(grids.shape[0])
        return upsample(grids, size, *args)

    for pass_size, passes in ((None, [32] * 6), (7, [7] * 27 + [3]), (48, [48] * 4)):
        seen.clear()
        made.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torchray_rise, "_upsample_reflect", spy_upsample)
            sized = {} if pass_size is None else {"pass_size": pass_size}
            got = explain(model, x, "torchray.rise", target=target, **sized, **MASKS).attributions
        assert seen[-len(passes) :] == passes  # after the core's prediction pass
        # each pass's masks once for its 3 items (a mask split across two passes made
        # in both), then the sum's, batch_size at a time
        starts = [sum(passes[:i]) for i in range(len(passes))]
        per_pass = [(a + n - 1) // 3 + 1 - a // 3 for a, n in zip(starts, passes)]
        assert made == per_pass + [16] * 4
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_the_draw_leaves_torchs_generator_alone() -> None:
    """TorchRay reseeds torch's generator for its draw; esegeta draws the same masks
    from a generator of its own, so what the caller draws next is unchanged."""
    model = tiny_model(classes=10)
    x = tiny_input(batch=1, seed=1)
    torch.manual_seed(5)
    want = torch.rand(4)
    torch.manual_seed(5)
    explain(model, x, "torchray.rise", target=3, num_masks=20, batch_size=8)
    torch.testing.assert_close(torch.rand(4), want, rtol=0, atol=0)


def test_auto_batch_plans_the_passes_and_keeps_the_masks_torchray_draws() -> None:
    """TorchRay draws its masks ``batch_size`` at a time: ``auto_batch`` leaves the
    batch size (default or given) as it is and sizes ``pass_size``, which the pass
    planner splits (the params record the plan); the map stays TorchRay's own call's.
    With ``filter_masks`` the passes are sized too, and the map is unchanged."""
    model, size = _tiny()
    x = tiny_input(batch=2, size=size, seed=1)
    target = torch.tensor([7, 2])
    expected = torchray_rise.rise_class(model, x.clone(), target=target, num_masks=80)
    plain = explain(model, x, "torchray.rise", target=target, num_masks=80)
    auto = explain(model, x, "torchray.rise", target=target, num_masks=80, auto_batch=True)
    assert auto.params.batch_size == plain.params.batch_size == 32
    assert plain.params.pass_size == 32
    # the planner's passes, recorded in the params
    assert auto.params.pass_size == auto.extras["pass_plan"]["inputs_per_pass"] >= 1
    torch.testing.assert_close(plain.attributions, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(auto.attributions, expected, rtol=1e-5, atol=1e-6)
    given = explain(model, x, "torchray.rise", target=target, num_masks=80, batch_size=16)
    again = explain(
        model, x, "torchray.rise", target=target, num_masks=80, batch_size=16, auto_batch=True
    )
    assert again.params.batch_size == 16
    torch.testing.assert_close(again.attributions, given.attributions, rtol=1e-5, atol=1e-6)
    other = explain(model, x, "torchray.rise", target=target, num_masks=80, batch_size=8)
    assert not torch.allclose(other.attributions, given.attributions, rtol=1e-3, atol=1e-4)
    masks = torch.rand(40, 1, size, size, generator=torch.Generator().manual_seed(3))
    sized = explain(model, x, "torchray.rise", target=target, filter_masks=masks, auto_batch=True)
    assert sized.params.pass_size == sized.extras["pass_plan"]["inputs_per_pass"]
    fixed = explain(model, x, "torchray.rise", target=target, filter_masks=masks)
    torch.testing.assert_close(sized.attributions, fixed.attributions, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
def test_on_cuda_the_masks_are_torchrays() -> None:
    """On a GPU TorchRay draws the grids from the device's generator and the shifts
    from the CPU's: the map on the GPU is TorchRay's there, at another pass size."""
    model = tiny_model(classes=10).cuda()
    x = tiny_input(batch=2, seed=1).cuda()
    target = torch.tensor([7, 2])
    expected = torchray_rise.rise_class(model, x.clone(), target=target.cuda(), **MASKS)
    got = explain(model, x, "torchray.rise", target=target, pass_size=24, **MASKS)
    assert got.attributions.device.type == "cuda"
    torch.testing.assert_close(got.attributions, expected, rtol=1e-5, atol=1e-6)


def test_no_wait_for_the_device_per_pass() -> None:
    """What a pass decides (its masks, items, targets) is made on the device: counted
    without a GPU by ``esegeta_core.testing.syncs`` at 1 and 4 inputs per pass."""
    from esegeta_core.testing.syncs import waits_per_pass

    model = tiny_model(classes=10)
    x = tiny_input(batch=2, seed=1)

    def call(size: int) -> None:
        explain(model, x, "torchray.rise", target=[7, 2], pass_size=size, **MASKS)

    assert waits_per_pass(call) == {}

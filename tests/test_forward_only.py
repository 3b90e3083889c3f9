"""Forward-only methods leave in-place activations on, and their maps do not change.

Turning every ``inplace=True`` activation off copies each activation in every forward
pass (~5% of a ResNet-50's). Methods that only run the model forward and read layers
through the core's taps (which hand on copies) keep them on; their maps must equal the
maps with in-place activations off, and the flags must come back as they were.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import esegeta_core as ec
from esegeta_core.preparation import no_inplace
from esegeta_core.testing.environment import require_method

CASES = {
    "captum.occlusion": {"window": 4, "strides": 4},
    "captum.feature_ablation": {"feature_mask": "grid", "grid_cell": 4},
    "captum.shapley_value_sampling": {"feature_mask": "grid", "grid_cell": 8, "n_samples": 2},
    "captum.kernel_shap": {"feature_mask": "grid", "grid_cell": 4, "n_samples": 12},
    "captum.lime": {"feature_mask": "grid", "grid_cell": 8, "n_samples": 12},
    "cnnvis.rise": {"num_masks": 16, "mask_seed": 0},
    "cnnvis.score_cam": {"layer": "body.2"},
    "cnnvis.ablation_cam": {"layer": "body.2"},
}


class InPlace(nn.Module):
    """A small CNN whose activations work in place, as torchvision's and MONAI's do;
    a layer's output feeds an in-place ReLU straight away (the case that corrupts a
    recorded tensor without a tap)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        conv = nn.Conv2d if rank == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if rank == 2 else nn.AdaptiveAvgPool3d
        self.body = nn.Sequential(
            conv(1, 4, 3, padding=1), nn.ReLU(inplace=True), conv(4, 6, 3, padding=1),
            nn.ReLU(inplace=True), pool(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_forward_only_is_declared_where_it_is_safe() -> None:
    for name in CASES:
        assert ec.get_registry().get(require_method(name)).forward_only, name
    # Captum's neuron path hooks a layer without a tap: in-place stays off for it
    neuron = ec.get_registry().get(require_method("captum.neuron_feature_ablation"))
    assert not neuron.forward_only


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("method", sorted(CASES))
def test_maps_equal_those_with_inplace_off(method: str, rank: int) -> None:
    name = require_method(method)
    torch.manual_seed(0)
    model = InPlace(rank).eval()
    x = torch.rand(2, 1, *([8] * rank))
    seen: list[bool] = []
    model.body[1].register_forward_pre_hook(lambda m, a: seen.append(m.inplace))
    kept = ec.explain(model, x, name, 1, seed=0, progress=False, **CASES[method])
    assert seen and all(seen)  # the activations ran in place
    assert all(m.inplace for m in (model.body[1], model.body[3]))  # left as found
    off = copy.deepcopy(model)
    with no_inplace(off):
        plain = ec.explain(off, x, name, 1, seed=0, progress=False, **CASES[method])
    torch.testing.assert_close(kept.attributions, plain.attributions, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["cnnvis.ablation_cam", "cnnvis.score_cam", "captum.occlusion"])
def test_torchvision_resnet_maps_equal_those_with_inplace_off(method: str) -> None:
    name = require_method(method)
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = tv.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 32, 32)
    params = {"layer": "layer3"} if "cam" in method else {"window": 16, "strides": 16}
    kept = ec.explain(model, x, name, 0, progress=False, **params)
    off = copy.deepcopy(model)
    with no_inplace(off):
        plain = ec.explain(off, x, name, 0, progress=False, **params)
    torch.testing.assert_close(kept.attributions, plain.attributions, rtol=1e-4, atol=1e-6)
    assert model.relu.inplace


class ChannelsLast(nn.Module):
    """A layer whose output is channels-last ``(B, H, W, C)``, followed at once by an
    in-place activation: a module, or ``F.relu(..., inplace=True)`` in the forward."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.lin = nn.Linear(6, 6)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(self.conv(x).permute(0, 2, 3, 1))
        y = torch.relu_(y) if self.functional else self.act(y)
        return self.head(y.mean((1, 2)))


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("method", ["cnnvis.score_cam", "cnnvis.ablation_cam", "cnnvis.grad_cam"])
def test_a_channels_last_layer_before_in_place_code_is_read_intact(method, functional):
    """The tap's channels-first view of a channels-last layer must not share storage
    with what the rest of the model gets: in-place code after the layer (a module kept
    in place for a forward-only method, or in-place code in the forward) would change
    the activations a method recorded."""
    name = require_method(method)
    torch.manual_seed(0)
    model = ChannelsLast(functional).eval()
    x = torch.rand(2, 1, 8, 8)
    got = ec.explain(model, x, name, 1, layer="lin", reshape="channels_last", progress=False)
    safe = copy.deepcopy(model)
    safe.functional = False
    with no_inplace(safe):
        want = ec.explain(safe, x, name, 1, layer="lin", reshape="channels_last", progress=False)
    torch.testing.assert_close(got.attributions, want.attributions, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "extra", "shape"),
    [("tokens", 0, (2, 16, 6)), ("tokens", 1, (2, 17, 6)), ("channels_last", 0, (2, 4, 4, 6))],
)
def test_a_restored_layout_never_shares_the_recorded_views_storage(kind, extra, shape):
    from esegeta_core.layouts import Layout

    layout = Layout(kind, (4, 4), extra)
    y = torch.rand(shape)
    view = layout.to_channels_first(y)
    out = layout.restore(view, y)
    assert torch.equal(out, y)
    assert out.untyped_storage().data_ptr() != view.untyped_storage().data_ptr()


def test_no_inplace_turns_off_every_kind_of_flag_and_restores_it() -> None:
    """The flag in the module's ``__dict__`` (torch's activations), on its class, or
    behind a property: each is off inside the block and back after it."""

    class Flagged(nn.Module):
        inplace = True  # on the class

    class Property(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._flag = True

        @property
        def inplace(self) -> bool:
            return self._flag

        @inplace.setter
        def inplace(self, value: bool) -> None:
            self._flag = value

    model = nn.Sequential(nn.ReLU(inplace=True), nn.ReLU(), Flagged(), Property())
    with no_inplace(model) as changed:
        assert changed == 3
        assert [getattr(m, "inplace", None) for m in model] == [False, False, False, False]
    assert [getattr(m, "inplace", None) for m in model] == [True, False, True, True]

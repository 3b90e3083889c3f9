"""Checked centrally for every method: no empty, non-finite or wrongly shaped map comes
back; an all-zero map comes back with a warning; huge requested counts are refused
with an estimate unless forced; a method's own refusal comes before anything runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch
from pydantic import Field

import esegeta_core as ec
from esegeta_core import (
    Explainer,
    InvalidParamsError,
    MethodFailedError,
    MethodParams,
    NotApplicableError,
    explain,
    hookimpl,
)
from esegeta_core.testing import tiny_input, tiny_model


class BadParams(MethodParams):
    kind: str = Field("empty", description="What goes wrong.")


class Bad(Explainer):
    """Returns a broken map on purpose."""

    name = "bad.map"
    Params = BadParams
    output = "input"

    def attribute(self, model, inputs, target, params):  # type: ignore[no-untyped-def]
        if params.kind == "empty":
            return torch.empty(0)
        if params.kind == "nan":
            return torch.full_like(inputs, float("nan"))
        if params.kind == "shape":
            return inputs[..., :-1]
        if params.kind == "batch":
            return inputs[:1]
        if params.kind == "ones":
            return torch.ones_like(inputs)
        if params.kind == "input":
            return inputs * 1.0
        if params.kind == "said":  # a warning of the method's own
            return ec.MethodResult(inputs * 1.0, warnings=["bad.map: the method's own reason"])
        if params.kind == "zero_first":  # the first item's (or patch's) map only
            out = torch.ones_like(inputs)
            out[0] = 0
            return out
        return torch.zeros_like(inputs)


class LayerBad(Explainer):
    """A layer map with no spatial layout."""

    name = "bad.layer"
    output = "layer"

    def attribute(self, model, inputs, target, params):  # type: ignore[no-untyped-def]
        return torch.ones(inputs.shape[0], 3, 2, 2, 2, 2)


class CountParams(MethodParams):
    samples: int = Field(10, ge=1, description="Samples per item.")


class Counted(Explainer):
    """Runs ``samples`` passes (pretend): the cost guard reads ``count_params``."""

    name = "bad.counted"
    Params = CountParams
    count_params: ClassVar[tuple[str, ...]] = ("samples",)

    def attribute(self, model, inputs, target, params):  # type: ignore[no-untyped-def]
        return inputs * 1.0


class Picky(Explainer):
    """Refuses every model before running."""

    name = "bad.picky"
    requirements = ("a model it likes",)
    ran: ClassVar[int] = 0

    def check_model(self, model: Any, params: Any, trace: Any) -> None:
        raise NotApplicableError("Method 'bad.picky': needs a model it likes.")

    def attribute(self, model, inputs, target, params):  # type: ignore[no-untyped-def]
        Picky.ran += 1
        return inputs


class BadPlugin:
    @hookimpl
    def esegeta_register_methods(self):  # type: ignore[no-untyped-def]
        return [Bad, LayerBad, Counted, Picky]


@pytest.fixture
def bad() -> Iterator[None]:
    ec.register_plugin(BadPlugin(), "bad")
    try:
        yield
    finally:
        ec.unregister_plugin("bad")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "empty map"),
        ("nan", "non-finite values"),
        ("shape", "must be \\(B, C or 1"),
        ("batch", "one map per item"),
    ],
)
def test_bad_maps_never_come_back(bad: None, kind: str, message: str) -> None:
    model = tiny_model()
    with pytest.raises(MethodFailedError, match=message) as info:
        explain(model, tiny_input(), "bad.map", 0, kind=kind)
    assert "'bad.map' (plugin 'bad')" in str(info.value)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_bad_maps_are_caught_patch_by_patch(bad: None) -> None:
    with pytest.raises(MethodFailedError, match="non-finite"):
        explain(
            tiny_model("segmentation", 3),
            tiny_input("segmentation", 3, size=16),
            "bad.map",
            1,
            task="segmentation",
            kind="nan",
            patches={"size": 8},
            progress=False,
        )


def test_a_layer_map_without_a_spatial_layout_is_refused(bad: None) -> None:
    with pytest.raises(MethodFailedError, match="no 2-D\\s+spatial layout"):
        explain(tiny_model(), tiny_input(), "bad.layer", 0)


def test_an_all_zero_map_comes_back_with_a_warning(bad: None, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING, logger="esegeta_core"):
        e = explain(tiny_model(), tiny_input(), "bad.map", 0, kind="zeros")
    assert "zero everywhere" in e.extras["warnings"][0]
    assert any("zero everywhere" in r.getMessage() for r in caplog.records)


def test_one_item_with_an_all_zero_map_comes_back_with_a_warning(bad: None) -> None:
    """An item's empty map beside the others' maps: the whole batch is not zero, and
    the warning names the item."""
    x = torch.rand(3, 1, 16, 16)
    e = explain(tiny_model(), x, "bad.map", 0, kind="zero_first", progress=False)
    (warning,) = e.extras["warnings"]
    assert "1 of 3 items (item 0) are zero everywhere" in warning
    plain = explain(tiny_model(), x, "bad.map", 0, kind="input", progress=False)
    assert "warnings" not in plain.extras or not plain.extras["warnings"]


def test_an_item_s_constant_map_comes_back_with_a_warning(bad: None) -> None:
    """A map of one value everywhere says nothing about where the evidence is."""
    x = torch.rand(3, 1, 16, 16)
    e = explain(tiny_model(), x, "bad.map", 0, kind="ones", progress=False)
    (warning,) = e.extras["warnings"]
    assert "3 of 3 items (item 0, 1, 2) hold one value everywhere" in warning


def test_a_map_that_varies_only_by_rounding_holds_one_value() -> None:
    """A score that moves only in its last bits makes a map of rounding noise around
    one value (a random MobileNet's RISE: 0.1 give or take one unit in the last place):
    that is one value everywhere too; a small real variation is not."""
    from esegeta_core.checks import ROUNDING_ULPS, constant_maps

    base = torch.full((3, 1, 8, 8), 0.1)
    step = torch.finfo(torch.float32).eps * 0.1
    noisy = base.clone()
    noisy[0, 0, 0, 0] = torch.nextafter(torch.tensor(0.1), torch.tensor(1.0))
    noisy[1] += torch.rand(1, 8, 8) * (ROUNDING_ULPS // 2) * step
    noisy[2, 0, 0, 0] += 1e-4  # a thousand units: a map
    warning = constant_maps(noisy, "m")
    assert "2 of 3 items (item 0, 1) hold one value everywhere (up to rounding)" in warning
    assert constant_maps(torch.randn(2, 1, 8, 8), "m") == ""
    assert constant_maps(torch.ones(2, 1, 4, 4, dtype=torch.int64), "m") != ""
    assert "item 0)" in constant_maps(base.double()[:1], "m")


def test_patches_are_checked_for_zero_maps_once_stitched(bad: None) -> None:
    """A patch's map may well be zero (background): the stitched item's map is checked,
    not each patch batch (whose first patch is zero here)."""
    model, x = tiny_model("segmentation", 2), tiny_input("segmentation", 2, size=16)
    kw = {"task": "segmentation", "patches": {"size": 8, "batch_size": 2}, "progress": False}
    e = explain(model, x, "bad.map", 1, kind="zero_first", **kw)
    assert not e.extras.get("warnings")
    assert bool((e.attributions == 0).any())  # some patches' maps were zero
    zero = explain(model, x, "bad.map", 1, kind="zeros", **kw)
    assert "the map is zero everywhere" in zero.extras["warnings"][0]


def test_a_methods_own_warnings_join_the_calls_once(bad: None, caplog) -> None:  # type: ignore[no-untyped-def]
    """A method that knows why its map is wrong says so in ``MethodResult``'s
    ``warnings``: they reach the explanation (not as a separate extra) and the log;
    a patch's own are dropped, since the stitched map is what is checked."""
    with caplog.at_level(logging.WARNING, logger="esegeta_core"):
        e = explain(tiny_model(), torch.rand(2, 1, 16, 16), "bad.map", 0, kind="said")
    assert e.extras["warnings"] == ["bad.map: the method's own reason"]
    assert any("the method's own reason" in r.getMessage() for r in caplog.records)
    model, x = tiny_model("segmentation", 2), tiny_input("segmentation", 2, size=16)
    kw = {"task": "segmentation", "patches": {"size": 8}, "progress": False}
    patched = explain(model, x, "bad.map", 1, kind="said", **kw)
    assert not patched.extras.get("warnings")


def test_huge_counts_are_refused_with_an_estimate_unless_forced(bad: None) -> None:
    model, x = tiny_model(), tiny_input()
    with pytest.raises(InvalidParamsError) as info:
        explain(model, x, "bad.counted", 0, samples=10**6)
    text = str(info.value)
    assert "samples=1000000" in text and "2,000,000 forward passes" in text
    assert "ms" in text and "force=True" in text and "of activations" in text
    assert explain(model, x, "bad.counted", 0, samples=10**6, force=True).attributions.numel()
    explain(model, x, "bad.counted", 0, samples=100_000)  # 200,000 in all: allowed


def test_real_methods_declare_their_counts() -> None:
    pytest.importorskip("esegeta_captum")
    model, x = tiny_model(), tiny_input()
    with pytest.raises(InvalidParamsError, match="n_steps=1000000"):
        explain(model, x, "captum.integrated_gradients", 0, n_steps=10**6)
    with pytest.raises(InvalidParamsError, match="nt_samples=1000000"):
        explain(model, x, "captum.saliency", 0, noise_tunnel="smoothgrad", nt_samples=10**6)


def test_a_methods_refusal_comes_before_it_runs(bad: None) -> None:
    Picky.ran = 0
    with pytest.raises(NotApplicableError, match="likes"):
        explain(tiny_model(), tiny_input(), "bad.picky", 0)
    assert Picky.ran == 0
    assert ec.describe_method("bad.picky").requirements == ("a model it likes",)


def test_methods_command_shows_requirements_costs_and_aliases() -> None:
    from esegeta_core.cli import format_method

    captum = pytest.importorskip("esegeta_captum")
    assert captum is not None
    text = format_method(ec.describe_method("captum.layer_feature_ablation"))
    assert "cost: one forward pass of the layers after `layer`" in text
    assert "Also accepted as: layer_baselines" in text
    assert "requires: no multiplicative interaction" in format_method(
        ec.describe_method("captum.lrp")
    )
    assert "rules: gates" in format_method(ec.describe_method("captum.deep_lift"))

"""A pass parameter left at its default holds at most 2^21 input elements, and at most
the default's number of inputs, per pass on the CPU (big images and volumes and big
batches run faster in smaller passes there); one the caller set,
``auto_batch``, another device and methods that do not say what the parameter counts
keep their value. The value used is in the explanation's parameters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest
import torch
from pydantic import Field

import esegeta_core as ec
from esegeta_core import Explainer, MethodParams, explain, hookimpl
from esegeta_core.runtime import passes
from esegeta_core.runtime.pass_defaults import (
    CPU_PASS_ELEMENTS,
    cpu_pass_defaults,
    cpu_pass_size,
    default_pass_start,
)
from esegeta_core.testing import tiny_model


class SizedParams(MethodParams):
    batch_size: int = Field(64, ge=1, description="Inputs per pass.")


class PerPass(Explainer[SizedParams]):
    """Records the pass size it was called with."""

    name = "sized.per_pass"
    batch_params = ("batch_size",)
    pass_params = ("batch_size",)
    pass_unit = "pass"
    seen: ClassVar[list[int]] = []

    def attribute(self, model, inputs, target, params):  # type: ignore[no-untyped-def]
        PerPass.seen.append(params.batch_size)
        return inputs * 1.0


class PerItem(PerPass):
    name = "sized.per_item"
    pass_unit = "item"


class Undeclared(PerPass):
    name = "sized.undeclared"
    pass_unit = ""


class OwnPasses(PerPass):
    """Runs 100 copies of its input through the model via the core's method passes."""

    name = "sized.own_passes"
    own_passes = True

    def attribute(self, model, inputs, target, params):  # type: ignore[no-untyped-def]
        def chunk(start: int, stop: int, channels_last: bool) -> torch.Tensor:
            return model(inputs[:1].expand(stop - start, *inputs.shape[1:]))

        with torch.no_grad():
            passes.method_passes(100, chunk, params.batch_size, inputs[:1])
        return inputs * 1.0


class SizedPlugin:
    @hookimpl
    def esegeta_register_methods(self):  # type: ignore[no-untyped-def]
        return [PerPass, PerItem, Undeclared, OwnPasses]


@pytest.fixture
def sized() -> Iterator[None]:
    ec.register_plugin(SizedPlugin(), "sized")
    PerPass.seen.clear()
    try:
        yield
    finally:
        ec.unregister_plugin("sized")


def test_the_cpu_size_is_the_largest_power_of_two_that_fits() -> None:
    assert cpu_pass_size(32, 3 * 64 * 64) == 32  # fits: the default stands
    assert cpu_pass_size(32, 48**3) == 16  # 18.96 fit
    assert cpu_pass_size(32, 3 * 224 * 224) == 8  # 13.9 fit
    assert cpu_pass_size(64, 3 * 160 * 160) == 16  # 27.3 fit
    assert cpu_pass_size(32, CPU_PASS_ELEMENTS * 4) == 1  # not even one fits
    assert cpu_pass_size(5, 48**3) == 5  # never more than the default


def _volume(items: int = 1) -> torch.Tensor:
    return torch.rand(items, 1, 48, 48, 48)


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 2, 3),
        torch.nn.AdaptiveAvgPool3d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(2, 3),
    ).eval()


def test_a_default_left_alone_is_sized_for_a_volume_and_recorded(sized: None) -> None:
    e = explain(_model(), _volume(), "sized.per_pass", 0, progress=False)
    assert PerPass.seen == [16] and e.params.batch_size == 16


def test_a_per_item_parameter_is_divided_by_the_items(sized: None) -> None:
    """Captum's perturbations_per_eval counts copies of each item; its default is read
    as inputs per pass on the CPU: 2 volumes x 8, and 4 small images x 16 (64 inputs,
    not 4 x 64)."""
    e = explain(_model(), _volume(2), "sized.per_item", 0, progress=False)
    assert e.params.batch_size == 8
    images = explain(tiny_model(), torch.rand(4, 1, 16, 16), "sized.per_item", 0, progress=False)
    assert images.params.batch_size == 16
    one = explain(tiny_model(), torch.rand(1, 1, 16, 16), "sized.per_item", 0, progress=False)
    assert one.params.batch_size == 64


@pytest.mark.parametrize(
    ("method", "kwargs", "expected"),
    [
        ("sized.per_pass", {"batch_size": 64}, 64),  # the caller's own value
        ("sized.undeclared", {}, 64),  # the method does not say what it counts
    ],
)
def test_a_value_set_or_not_declared_stands(
    sized: None, method: str, kwargs: dict, expected: int
) -> None:
    e = explain(_model(), _volume(), method, 0, progress=False, **kwargs)
    assert e.params.batch_size == expected


def test_small_inputs_auto_batch_and_other_devices_keep_the_default(sized: None) -> None:
    e = explain(tiny_model(), torch.rand(2, 1, 16, 16), "sized.per_pass", 0, progress=False)
    assert e.params.batch_size == 64
    params = SizedParams()
    probe = _volume()
    assert cpu_pass_defaults(PerPass, params, probe, 1, auto_batch=True) is params
    meta = torch.empty(1, 1, 48, 48, 48, device="meta")  # stands for a GPU
    assert cpu_pass_defaults(PerPass, params, meta, 1, auto_batch=False) is params
    assert cpu_pass_defaults(PerPass, params, probe, 1, auto_batch=False).batch_size == 16


def test_a_parameter_that_decides_a_random_draw_keeps_its_default() -> None:
    """A pass parameter whose value changes what the method draws (Explainer.drawn_with)
    is not sized for the CPU: the map would change with the input's size."""

    class Drawn(PerPass):
        def drawn_with(self, params: SizedParams) -> tuple[str, ...]:
            return ("batch_size",)

    params = SizedParams()
    assert cpu_pass_defaults(Drawn, params, _volume(), 1, auto_batch=False) is params


def test_patches_are_sized_by_the_patch(sized: None) -> None:
    """A patch of 32^3 holds 32,768 elements: 64 of them fit."""
    model = _model()
    e = explain(model, _volume(), "sized.per_pass", 0, patches={"size": 32}, progress=False)
    assert e.params.batch_size == 64


def test_the_search_starts_from_the_default_pass_size() -> None:
    """Under ``auto_batch`` the planner's search starts where the call would run
    without it: the CPU-sized default, in inputs per pass."""
    params = SizedParams()
    assert default_pass_start(PerPass, params, _volume(), 1) == 16
    assert default_pass_start(PerItem, params, _volume(), 2) == 16  # 8 copies x 2 items
    small = torch.rand(1, 1, 16, 16)
    assert default_pass_start(PerItem, params, small, 4) == 64  # 16 copies x 4 items
    assert default_pass_start(PerPass, params, small, 1) == 64
    assert default_pass_start(PerPass, SizedParams(batch_size=8), small, 1) == 8
    meta = torch.empty(1, 1, 48, 48, 48, device="meta")  # stands for a GPU: no sizing
    assert default_pass_start(PerPass, params, meta, 1) == 64
    assert default_pass_start(Undeclared, params, small, 1) is None


class _PassSizes(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize(("x", "first"), [(torch.rand(1, 3, 16, 16), 64), (_volume(), 16)])
def test_auto_batch_starts_its_search_at_the_default(
    sized: None, x: torch.Tensor, first: int
) -> None:
    """The first planned pass holds the default's inputs (64 small images, 16 volumes
    of 48^3), not the planner's fixed start of 16, so that ``auto_batch`` leaves the
    default only for a pass size it measured faster."""
    model = _PassSizes(tiny_model() if x.ndim == 4 else _model())
    passes.clear_plans()
    e = explain(model, x, "sized.own_passes", 0, progress=False, auto_batch=True)
    assert model.sizes[0] == 1  # the prediction pass is not planned
    assert model.sizes[1] == first, model.sizes
    assert sum(model.sizes[1:]) == 100
    assert e.extras["pass_plan"]["inputs_per_pass"] in (first // 2, first, first * 2)

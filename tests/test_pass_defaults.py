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
from esegeta_core.runtime.pass_defaults import CPU_PASS_ELEMENTS, cpu_pass_defaults, cpu_pass_size
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


class SizedPlugin:
    @hookimpl
    def esegeta_register_methods(self):  # type: ignore[no-untyped-def]
        return [PerPass, PerItem, Undeclared]


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


def test_patches_are_sized_by_the_patch(sized: None) -> None:
    """A patch of 32^3 holds 32,768 elements: 64 of them fit."""
    model = _model()
    e = explain(model, _volume(), "sized.per_pass", 0, patches={"size": 32}, progress=False)
    assert e.params.batch_size == 64

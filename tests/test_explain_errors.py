"""explain() refuses bad calls with an EsegetaError that names the argument and the fix
(issue 15): dtypes, inputs too small for the model, meta tensors, the method, patches,
seed and amp, inference mode, task and wrapper typos, and empty regions under patches."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import esegeta_core as ec
from esegeta_core.model_state import count_hooks
from esegeta_core.testing import TinyClassifier, tiny_input, tiny_model

GXI = "demo.grad_x_input"


def _explain(**kwargs):
    call = dict(model=tiny_model(), inputs=tiny_input(), method=GXI)
    call.update(kwargs)
    return ec.explain(call.pop("model"), call.pop("inputs"), call.pop("method"), **call)


def _refused(error, fragments, builtin=ValueError, **kwargs):
    with pytest.raises(error) as info:
        _explain(**kwargs)
    assert isinstance(info.value, ec.EsegetaError) and isinstance(info.value, builtin)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"
    return info.value


# --- 1. dtypes -----------------------------------------------------------------------


def test_float64_inputs_to_a_float32_model_are_refused_with_the_conversion(demo):
    _refused(
        ec.InvalidInputError,
        ["torch.float64", "torch.float32", "inputs.float()", "model.double()"],
        inputs=tiny_input().double(),
    )


def test_float32_inputs_to_a_half_model_are_refused(demo):
    _refused(
        ec.InvalidInputError,
        ["inputs.half()", "model.float()"],
        model=tiny_model().half(),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lossless_dtype_conversion_is_done_with_a_warning(demo, caplog, dtype):
    x = tiny_input().to(dtype)
    with caplog.at_level(logging.WARNING, logger="esegeta_core"):
        e = _explain(inputs=x, target=1)
    expected = _explain(inputs=x.float(), target=1)
    assert torch.allclose(e.attributions, expected.attributions)
    assert any("converting the inputs to torch.float32" in r.getMessage() for r in caplog.records)


def test_float32_inputs_to_a_float64_model_are_converted(demo):
    model, x = tiny_model().double(), tiny_input()
    e = _explain(model=model, inputs=x, target=1)
    assert e.attributions.dtype == torch.float64
    assert torch.equal(
        e.attributions, _explain(model=model, inputs=x.double(), target=1).attributions
    )


def test_float64_inputs_are_converted_under_amp(demo, caplog):
    with caplog.at_level(logging.WARNING, logger="esegeta_core"):
        e = _explain(inputs=tiny_input().double(), amp="bf16", target=1)
    assert e.attributions.dtype == torch.float32
    assert any("converting the inputs" in r.getMessage() for r in caplog.records)


# --- 2. inputs the model's forward pass fails on --------------------------------------


class TinyUNet(nn.Module):
    """Three poolings and skip connections: needs sides divisible by 8."""

    def __init__(self) -> None:
        super().__init__()
        self.inc = nn.Conv3d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool3d(2)
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.inc(x)
        b = self.pool(self.pool(self.pool(a)))
        return self.head(torch.cat([a, self.up(self.up(self.up(b)))], 1))


@pytest.mark.parametrize("target", [None, 1])
def test_an_input_too_small_for_the_model_names_its_shape_and_the_fix(demo, target):
    model = tiny_model()
    model.train()
    hooks = count_hooks(model)
    error = _refused(
        ec.InvalidInputError,
        [
            GXI,
            "the model's forward pass failed on an input of shape (2, 3, 1, 1)",
            "Output size is too small",
            "interpolate",
        ],
        model=model,
        inputs=torch.rand(2, 3, 1, 1),
        target=target,
    )
    assert isinstance(error.__cause__, RuntimeError)
    assert model.training and count_hooks(model) == hooks


def test_a_volume_too_small_for_a_unets_down_sampling(demo):
    torch.manual_seed(0)
    _refused(
        ec.InvalidInputError,
        ["forward pass failed on an input of shape (1, 1, 12, 12, 12)", "Sizes of tensors"],
        model=TinyUNet(),
        inputs=torch.rand(1, 1, 12, 12, 12),
        task="segmentation",
    )


def test_a_wrong_channel_count_is_the_inputs_fault_not_the_methods(demo):
    _refused(
        ec.InvalidInputError,
        ["(2, 5, 16, 16)", "3 channels", "channel count"],
        inputs=torch.rand(2, 5, 16, 16),
        target=0,
    )


def test_a_patch_too_small_for_the_model_asks_for_larger_patches(demo):
    _refused(
        ec.InvalidInputError,
        ["a patch of shape (1, 3, 1, 1)", "larger patches"],
        patches={"size": 1},
        progress=False,
    )


def test_a_method_that_fails_on_an_input_the_model_accepts_is_still_the_methods(demo):
    _refused(ec.MethodFailedError, ["demo.broken", "exploded"], RuntimeError, method="demo.broken")


# --- 3. meta tensors -----------------------------------------------------------------


def test_meta_inputs_are_refused(demo):
    _refused(
        ec.InvalidInputError,
        ["meta device", "(2, 3, 16, 16)"],
        inputs=torch.empty(2, 3, 16, 16, device="meta"),
    )


def test_a_model_with_meta_weights_is_refused_with_how_to_materialise_it(demo):
    with torch.device("meta"):
        model = TinyClassifier()
    _refused(
        ec.InvalidModelError,
        ["'features.conv1.weight'", "meta device", "model.to_empty(device=", "load_state_dict"],
        TypeError,
        model=model,
    )


def test_sparse_inputs_are_refused(demo):
    _refused(ec.InvalidInputError, ["dense", "to_dense()"], inputs=tiny_input().to_sparse())


# --- 4-6. method, patches, seed, amp --------------------------------------------------


@pytest.mark.parametrize("method", [None, 3, ["demo.grad_x_input"]])
def test_a_method_that_is_not_a_name_lists_how_to_find_names(demo, method):
    _refused(
        ec.InvalidParamsError, ["method must be a method name", "esegeta methods"], method=method
    )


def test_a_method_class_gets_its_name_suggested(demo):
    cls = ec.get_registry().get(GXI)
    _refused(ec.InvalidParamsError, [f"{GXI!r}"], method=cls)


@pytest.mark.parametrize("patches", ["yes", 8, [8, 8], True])
def test_patches_of_the_wrong_type_say_what_patches_accepts(demo, patches):
    _refused(
        ec.InvalidParamsError, ["patches must be a PatchSpec", "dict", "None"], patches=patches
    )


def test_an_int_patches_suggests_the_size_field(demo):
    _refused(ec.InvalidParamsError, ["{'size': 8}"], patches=8)


def test_a_misspelt_patch_field_is_named(demo):
    _refused(ec.InvalidParamsError, ["sise", "size", "overlap"], patches={"sise": 8})


@pytest.mark.parametrize("seed", ["abc", 1.5, True, 2**70, [1]])
def test_a_bad_seed_is_refused_before_the_method_runs(demo, seed):
    # demo.broken raises when it runs: the seed must be refused first
    _refused(
        ec.InvalidParamsError, ["seed must be an int or None"], method="demo.broken", seed=seed
    )


def test_numpy_integer_seeds_work_like_ints(demo):
    a = _explain(method="demo.noisy", seed=np.int64(7)).attributions
    assert torch.equal(a, _explain(method="demo.noisy", seed=7).attributions)


@pytest.mark.parametrize("amp", ["fp8", ["bf16"], 16])
def test_a_bad_amp_is_refused(demo, amp):
    _refused(ec.InvalidParamsError, ["amp must be 'bf16', 'fp16', 'tf32' or None"], amp=amp)


# --- 7. inference mode and no_grad ----------------------------------------------------

_GRADIENT_METHODS = [GXI, "captum.saliency", "cnnvis.grad_cam"]


def _method_or_skip(name):
    if name not in ec.get_registry().methods:
        pytest.skip(f"{name} is not installed")
    return name


@pytest.mark.parametrize("method", _GRADIENT_METHODS)
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "inference_tensor"])
def test_explain_works_under_inference_mode_and_no_grad(demo, method, mode):
    method = _method_or_skip(method)
    model, x = tiny_model(), tiny_input()
    expected = ec.explain(model, x, method, target=1).attributions
    if mode == "inference_tensor":
        with torch.inference_mode():
            xi = x.clone()
        e = ec.explain(model, xi, method, target=1)
    else:
        with torch.inference_mode() if mode == "inference_mode" else torch.no_grad():
            e = ec.explain(model, x, method, target=1)
    assert not e.attributions.is_inference()
    assert torch.allclose(e.attributions, expected, atol=1e-6)
    assert expected.abs().sum() > 0


def test_a_region_mask_made_in_inference_mode_works(demo):
    model, x = tiny_model("segmentation"), tiny_input("segmentation")
    with torch.inference_mode():
        mask = torch.ones(16, 16)
    e = ec.explain(model, x, GXI, target=ec.Region(1, mask), task="segmentation")
    expected = ec.explain(
        model, x, GXI, target=ec.Region(1, torch.ones(16, 16)), task="segmentation"
    )
    assert torch.equal(e.attributions, expected.attributions)


# --- 8. task and wrapper typos --------------------------------------------------------


def test_a_task_typo_is_a_value_error_with_a_suggestion(demo):
    _refused(
        ec.InvalidParamsError,
        ["'segmantation'", "Did you mean 'segmentation'", "'classification' or 'segmentation'"],
        task="segmantation",
    )


def test_a_wrapper_typo_is_a_value_error_with_a_suggestion(demo):
    _refused(
        ec.InvalidParamsError,
        ["'multi-class'", "Did you mean 'multi_class'", "'threshold'"],
        model=tiny_model("segmentation"),
        inputs=tiny_input("segmentation"),
        task="segmentation",
        wrapper="multi-class",
    )


@pytest.mark.parametrize("kwargs", [dict(task=None), dict(task=3), dict(wrapper=3)])
def test_task_and_wrapper_of_the_wrong_type(demo, kwargs):
    _refused(ec.InvalidParamsError, ["must be"], **kwargs)


# --- 9. regions under patches ---------------------------------------------------------


def _patched_region(label, mask, **kwargs):
    model, x = tiny_model("segmentation"), tiny_input("segmentation")
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ec.InvalidTargetError) as info:
        ec.explain(
            model,
            x,
            GXI,
            target=ec.Region(label, mask),
            task="segmentation",
            progress=False,
            **kwargs,
        )
    return str(info.value), calls


@pytest.mark.parametrize("patches", [None, {"size": 8}])
def test_an_empty_region_is_refused_with_and_without_patches(demo, patches):
    message, calls = _patched_region(2, torch.zeros(16, 16), patches=patches)
    assert "Region mask is empty" in message
    if patches is not None:
        assert not calls  # refused before any patch is explained


def test_a_region_label_the_model_does_not_have_is_refused_under_patches(demo):
    mask = torch.zeros(16, 16)
    mask[2:6, 2:6] = 1
    message, _ = _patched_region(7, mask, patches={"size": 8})
    assert "out of range" in message and "3 classes" in message


def test_a_region_mask_of_the_wrong_shape_is_refused_before_patching(demo):
    message, calls = _patched_region(1, torch.ones(5, 5), patches={"size": 8})
    assert "does not match the input (2, 1, 16, 16)" in message and "whole input" in message
    assert not calls


def test_a_per_item_region_under_patches_uses_each_items_mask(demo):
    model, x = tiny_model("segmentation"), tiny_input("segmentation")
    masks = torch.zeros(2, 16, 16)
    masks[0, :4, :4] = 1
    masks[1, 12:, 12:] = 1
    e = ec.explain(
        model,
        x,
        GXI,
        target=ec.Region(1, masks),
        task="segmentation",
        patches={"size": 8, "mode": "crop"},
        progress=False,
    )
    a = e.attributions
    assert a[0, ..., :8, :8].abs().sum() > 0 and a[0, ..., 8:, 8:].abs().sum() == 0
    assert a[1, ..., 8:, 8:].abs().sum() > 0 and a[1, ..., :8, :8].abs().sum() == 0

"""The catalogue of bad inputs: each gets a clear EsegetaError that also inherits the
matching builtin, says how to fix it, and leaves the model exactly as it was."""

from __future__ import annotations

import math

import pytest
import torch

import esegeta_core as ec
from esegeta_core.model_state import count_hooks
from esegeta_core.testing import tiny_input, tiny_model


def _nan_input():
    x = tiny_input()
    x[0, 0, 0, 0] = math.nan
    return x


def _inf_input():
    x = tiny_input()
    x[1, 2, 3, 4] = math.inf
    return x


CATALOGUE = {
    # name: (call kwargs, error class, builtin, message fragments)
    "unknown method": (
        dict(method="demo.grad_x_inptu"),
        ec.MethodNotFoundError,
        LookupError,
        ["Did you mean 'demo.grad_x_input'", "esegeta methods"],
    ),
    "wrong input rank": (
        dict(inputs=torch.rand(3, 16, 16)),
        ec.InvalidInputError,
        ValueError,
        ["(B, C, H, W)", "unsqueeze(0)"],
    ),
    "not a tensor": (
        dict(inputs=[[1.0]]),
        ec.InvalidInputError,
        ValueError,
        ["torch.Tensor", "torch.as_tensor"],
    ),
    "integer input": (
        dict(inputs=torch.ones(2, 3, 16, 16, dtype=torch.long)),
        ec.InvalidInputError,
        ValueError,
        ["floating point", "inputs.float()"],
    ),
    "NaN input": (
        dict(inputs=_nan_input()),
        ec.InvalidInputError,
        ValueError,
        ["NaN or infinite", "nan_to_num"],
    ),
    "infinite input": (
        dict(inputs=_inf_input()),
        ec.InvalidInputError,
        ValueError,
        ["NaN or infinite"],
    ),
    "target out of range": (
        dict(target=7),
        ec.InvalidTargetError,
        ValueError,
        ["out of range", "4 classes (0..3)"],
    ),
    "negative target": (
        dict(target=[0, -1]),
        ec.InvalidTargetError,
        ValueError,
        ["out of range"],
    ),
    "target of the wrong length": (
        dict(target=[0, 1, 2]),
        ec.InvalidTargetError,
        ValueError,
        ["one class per item (2)"],
    ),
    "layer path not found": (
        dict(method="demo.layer_mean", layer="features.conv3"),
        ec.LayerNotFoundError,
        LookupError,
        ["'features.conv3' not found", "Did you mean", "features.conv2"],
    ),
    "model not a module": (
        dict(model=lambda x: x),
        ec.InvalidModelError,
        TypeError,
        ["torch.nn.Module"],
    ),
    "parameter of the wrong type": (
        dict(scale="large"),
        ec.InvalidParamsError,
        ValueError,
        ["demo.grad_x_input", "scale", "esegeta methods"],
    ),
    "parameter out of bounds": (
        dict(scale=-1.0),
        ec.InvalidParamsError,
        ValueError,
        ["greater than 0"],
    ),
    "unknown parameter": (
        dict(scael=2.0),
        ec.InvalidParamsError,
        ValueError,
        ["scael", "Extra inputs are not permitted"],
    ),
    "3D input to a 2D-only method": (
        dict(method="demo.flat2d", inputs=tiny_input(rank=3), model=tiny_model(rank=3)),
        ec.UnsupportedRankError,
        ValueError,
        ["supports 2D inputs only", "demo.grad_x_input"],
    ),
    "unknown wrapper": (
        dict(
            task="segmentation",
            wrapper="otsu_count",
            model=tiny_model("segmentation"),
            inputs=tiny_input("segmentation"),
        ),
        ec.InvalidParamsError,
        ValueError,
        ["multi_class", "threshold"],
    ),
    "unknown task": (
        dict(task="detection"),
        ec.InvalidParamsError,
        ValueError,
        ["'classification' or 'segmentation'"],
    ),
}


@pytest.mark.parametrize("case", list(CATALOGUE), ids=str)
def test_bad_input_gets_a_clear_error_and_changes_nothing(demo, case):
    kwargs, error, builtin, fragments = CATALOGUE[case]
    call = dict(model=tiny_model(), inputs=tiny_input(), method="demo.grad_x_input")
    call.update(kwargs)
    model = call["model"]
    if isinstance(model, torch.nn.Module):
        model.train()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        hooks = count_hooks(model)
    with pytest.raises(error) as info:
        ec.explain(call.pop("model"), call.pop("inputs"), call.pop("method"), **call)
    assert isinstance(info.value, ec.EsegetaError)
    assert isinstance(info.value, builtin)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if isinstance(model, torch.nn.Module):
        assert all(m.training for m in model.modules())
        assert count_hooks(model) == hooks
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_invalid_params_keep_the_pydantic_error_as_cause(demo):
    import pydantic

    with pytest.raises(ec.InvalidParamsError) as info:
        ec.explain(tiny_model(), tiny_input(), "demo.grad_x_input", scale="x")
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


def test_unknown_method_lists_installed_plugins(demo):
    with pytest.raises(ec.MethodNotFoundError, match="Installed plugins: .*demo"):
        ec.explain(tiny_model(), tiny_input(), "nothing.like.this")

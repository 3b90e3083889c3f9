"""The core's shared helpers: the model's device, seeded blocks, the model and input
batch checks (one home for what ``explain()`` and the metrics both need)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esegeta_core import InvalidInputError, InvalidModelError, model_device
from esegeta_core.devices import seeded
from esegeta_core.evaluation import deletion
from esegeta_core.input_checks import check_batch, check_model


def test_model_device_reads_parameters_then_buffers_then_defaults_to_cpu():
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    buffered = nn.BatchNorm2d(3)
    buffered.weight = None  # no parameters left, buffers remain
    buffered.bias = None
    assert not list(buffered.parameters()) and model_device(buffered) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    meta = nn.Linear(2, 2, device="meta")
    assert model_device(meta) == torch.device("meta")


def test_seeded_repeats_draws_and_leaves_the_global_generator_alone():
    cpu = torch.device("cpu")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7, cpu):
        first = torch.rand(3)
    with seeded(7, cpu):
        again = torch.rand(3)
    assert torch.equal(first, again)
    assert torch.equal(torch.rand(3), expected_next)  # as if the blocks never ran


def test_seeded_none_does_nothing():
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    with seeded(None, torch.device("cpu")):
        inside = torch.rand(2)
    assert torch.equal(inside, expected)


BAD = {
    "not a tensor": ([[1.0]], "must be a torch.Tensor, got list. Convert with torch.as_tensor"),
    "no batch axis": (torch.rand(3, 8, 8), "shaped (B, C, H, W) or (B, C, D, H, W), got (3, 8, 8). "
                      "Add the batch dimension with inputs.unsqueeze(0)."),
    "too many axes": (torch.rand(1, 1, 1, 1, 1, 1), "got (1, 1, 1, 1, 1, 1)."),
    "integers": (torch.ones(1, 3, 8, 8, dtype=torch.long), "floating point, got torch.int64"),
    "empty": (torch.rand(0, 3, 8, 8), "inputs are empty (0, 3, 8, 8)"),
    "meta": (torch.empty(1, 3, 8, 8, device="meta"), "meta device"),
    "sparse": (torch.rand(1, 3, 8, 8).to_sparse(), "dense tensor, got layout torch.sparse_coo"),
    "nan": (torch.full((1, 3, 8, 8), float("nan")), "NaN or infinite values. Clean them first"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=str)
def test_check_batch_refuses_bad_inputs_naming_the_caller(case):
    inputs, fragment = BAD[case]
    with pytest.raises(InvalidInputError) as info:
        check_batch(inputs, "Method 'x.y'")
    message = str(info.value)
    assert message.startswith("Method 'x.y': ") and fragment in message


@pytest.mark.parametrize("case", BAD, ids=str)
def test_metrics_refuse_the_same_inputs_under_their_own_name(case):
    inputs, fragment = BAD[case]
    with pytest.raises(InvalidInputError) as info:
        deletion(nn.Conv2d(3, 2, 1), inputs, torch.tensor([0]), torch.rand(1, 1, 8, 8))
    assert str(info.value).startswith("Metric 'deletion': ") and fragment in str(info.value)


def test_check_model_refuses_what_cannot_run_naming_the_caller():
    with pytest.raises(
        InvalidModelError, match=r"^Metric 'm': the model must be a torch\.nn\.Module"
    ):
        check_model(lambda x: x, "Metric 'm'")
    meta = nn.Linear(2, 2, device="meta")
    with pytest.raises(InvalidModelError, match=r"^Method 'a\.b': the model's parameter 'weight'"):
        check_model(meta, "Method 'a.b'")
    model = nn.Linear(2, 2)
    assert check_model(model, "Method 'a.b'") is model


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 1, 4, 4, 4)])
def test_check_batch_returns_the_inputs_detached(shape):
    x = torch.rand(shape, requires_grad=True)
    out = check_batch(x, "Metric 'm'")
    assert not out.requires_grad and torch.equal(out, x.detach())


def test_torch_threads_sets_the_count_for_the_block_only():
    from esegeta_core.devices import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before

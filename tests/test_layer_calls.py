"""esegeta_core.layer_calls: counts made on a job's whole pass, visible in the job only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esegeta_core import layer_calls


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.unused = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


def test_counts_in_scope_only_and_hooks_removed() -> None:
    model = Twice()
    x = torch.rand(1, 1, 4, 4)
    with layer_calls.counting([model.conv]):  # outside a job: nothing recorded
        model(x)
    assert layer_calls.calls(model.conv) is None
    with layer_calls.scope():
        assert layer_calls.calls(model.conv) is None
        with layer_calls.counting([model.conv, model.unused]):
            model(x)
        assert layer_calls.calls(model.conv) == 2
        assert layer_calls.calls(model.unused) is None  # did not run: the method says so
        assert not model.conv._forward_hooks and not model.unused._forward_hooks
    assert layer_calls.calls(model.conv) is None


def test_a_pass_that_raises_records_nothing() -> None:
    model = Twice()
    with layer_calls.scope():
        with pytest.raises(RuntimeError), layer_calls.counting([model.conv]):
            model(torch.rand(1, 2, 4, 4))  # wrong channels
        assert layer_calls.calls(model.conv) is None
        assert not model.conv._forward_hooks

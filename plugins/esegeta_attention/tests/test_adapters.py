"""The adapter base for modules with a fused-kernel flag and a sub-module applied to the
probabilities (timm, MONAI): matching, the switch, the reading, and the clean-up."""

from __future__ import annotations

from contextlib import ExitStack
from typing import ClassVar

import torch
from esegeta_attention.adapters.base import UnfusedAdapter, read_output
from torch import nn


class FakeAttention(nn.Module):
    """Softmax attention over the tokens; ``fast`` stands for a fused kernel."""

    def __init__(self, fast: bool | None = True) -> None:
        super().__init__()
        if fast is not None:
            self.fast = fast
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.drop((x @ x.transpose(-2, -1)).softmax(-1)[:, None])
        return (attn[:, 0] @ x) * (2.0 if getattr(self, "fast", False) else 1.0)


class FakeAdapter(UnfusedAdapter):
    classes: ClassVar[tuple[tuple[str, str], ...]] = ((__name__, "FakeAttention"),)
    flag = "fast"
    reads = "drop"


class OptionalFlag(FakeAdapter):
    flag_optional = True


X = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(0))


def test_matches_by_class_flag_and_sub_module() -> None:
    assert FakeAdapter().matches(FakeAttention())
    assert not FakeAdapter().matches(FakeAttention(fast=None))  # the flag is required
    assert OptionalFlag().matches(FakeAttention(fast=None))
    assert not FakeAdapter().matches(nn.Dropout())


def test_the_flag_is_off_for_the_call_and_the_probabilities_are_read() -> None:
    module = FakeAttention()
    plain = module(X)
    seen: list[torch.Tensor] = []
    with ExitStack() as stack:
        FakeAdapter().enable(module, lambda source, shape=None: seen.append(source), stack)
        assert module.fast is False
        unfused = module(X)
    assert module.fast is True and torch.allclose(unfused * 2, plain)
    assert len(seen) == 1 and seen[0].shape == (2, 1, 5, 5)
    assert torch.allclose(seen[0].sum(-1), torch.ones(2, 1, 5))
    assert not module.drop._forward_hooks


def test_an_optional_flag_that_is_off_or_missing_is_left_alone() -> None:
    for module in (FakeAttention(fast=False), FakeAttention(fast=None)):
        before = dict(vars(module))
        with ExitStack() as stack:
            OptionalFlag().enable(module, lambda source, shape=None: None, stack)
            assert vars(module).keys() == before.keys()
        assert vars(module).keys() == before.keys()


def test_read_output_hands_over_the_output_unchanged() -> None:
    layer = nn.Linear(4, 3)
    seen: list[torch.Tensor] = []
    with ExitStack() as stack:
        read_output(stack, layer, lambda source, shape=None: seen.append(source))
        out = layer(X)
    assert len(seen) == 1 and seen[0] is out
    assert torch.equal(layer(X), out) and not layer._forward_hooks

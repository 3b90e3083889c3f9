"""The reused pass buffer every perturbation engine builds its passes in."""

from __future__ import annotations

import pytest
import torch

from esegeta_core.runtime.pass_buffer import PassBuffer


@pytest.mark.parametrize("spatial", [(6, 5), (4, 3, 5)])
def test_grows_and_reuses(spatial: tuple[int, ...]) -> None:
    buffer = PassBuffer(torch.zeros(2, *spatial, dtype=torch.float64))
    a = buffer.take(3, False)
    assert a.shape == (3, 2, *spatial) and a.dtype == torch.float64
    b = buffer.take(2, False)
    assert b.data_ptr() == a.data_ptr() and buffer.allocations == 1  # reused, not grown
    c = buffer.take(5, False)
    assert c.shape[0] == 5 and buffer.allocations == 2


@pytest.mark.parametrize("spatial", [(6, 5), (4, 3, 5)])
def test_keep_survives_growth_and_layout(spatial: tuple[int, ...]) -> None:
    buffer = PassBuffer(torch.zeros(3, *spatial))
    first = buffer.take(2, False, keep=True)
    first.copy_(torch.randn_like(first))
    saved = first.clone()
    grown = buffer.take(4, False, keep=True)
    assert torch.equal(grown[:2], saved)
    layout = torch.channels_last if len(spatial) == 2 else torch.channels_last_3d
    relaid = buffer.take(4, True, keep=True)
    assert relaid.is_contiguous(memory_format=layout)
    assert torch.equal(relaid[:2], saved)


def test_layout_change_without_keep_makes_a_fresh_tensor() -> None:
    buffer = PassBuffer(torch.zeros(3, 4, 4))
    buffer.take(4, False)
    cl = buffer.take(3, True)
    assert cl.shape == (3, 3, 4, 4) and cl.is_contiguous(memory_format=torch.channels_last)
    assert buffer.data is not None and buffer.data.shape[0] == 4  # the size is kept
    assert buffer.allocations == 2

"""Ablation-CAM on a negative target score: the drop is divided by the score's
magnitude, so the map still shows the evidence for the class (the paper's division by
the score itself, pytorch-grad-cam's, flips every weight there and shows the evidence
against it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esegeta_core import explain


class Signed(nn.Module):
    """conv -> ReLU (the explained layer) -> global average -> linear with a large
    negative bias: every class score is about -100. Channel 0 is the positive part of
    the input, channel 1 the negative part; class 0 counts channel 0 for and channel 1
    against, class 1 the other way round."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
            self.fc.bias.fill_(-100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def _halves() -> torch.Tensor:
    """One image: +1 on the left half, -1 on the right."""
    x = torch.ones(1, 1, 8, 8)
    x[..., 4:] = -1.0
    return x


@pytest.mark.parametrize("target", [0, 1])
def test_a_negative_score_keeps_the_evidence_for_the_class(target: int) -> None:
    model, x = Signed().eval(), _halves()
    with torch.no_grad():
        assert float(model(x)[0, target]) < -99  # the score is negative
    cam = explain(model, x, "cnnvis.ablation_cam", target, layer="relu", progress=False)
    grad = explain(model, x, "cnnvis.grad_cam", target, layer="relu", progress=False)
    m, g = cam.attributions[0, 0], grad.attributions[0, 0]
    for_class, against = (slice(0, 4), slice(4, 8)) if target == 0 else (slice(4, 8), slice(0, 4))
    assert float(m[:, for_class].min()) > 0 and float(m[:, against].abs().max()) == 0
    # Grad-CAM, whose weights do not depend on the score's sign, agrees
    assert float(g[:, for_class].min()) > 0 and float(g[:, against].abs().max()) == 0


def test_a_positive_score_is_unchanged() -> None:
    """Where the score is positive the weights are the paper's: the drop over it."""
    model, x = Signed().eval(), _halves()
    with torch.no_grad():
        model.fc.bias.fill_(100.0)
    cam = explain(model, x, "cnnvis.ablation_cam", 0, layer="relu", upsample=False,
                  progress=False)  # fmt: skip
    # ablating channel 0 drops the score by 0.5 (its mean), out of 100
    want = torch.zeros(8, 8)
    want[:, :4] = 0.5 / 100.0
    torch.testing.assert_close(cam.attributions[0, 0], want, rtol=1e-4, atol=1e-7)

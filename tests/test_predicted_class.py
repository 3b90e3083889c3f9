"""``target=None`` on a segmentation model: the predicted class is never one that wins
no pixel. A class's summed score is the sum of the logits of the pixels it wins, so an
absent class scores exactly 0, above classes that win only with negative logits; the
argmax picked it (on a random SegFormer), and every map of it was zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esegeta_core import explain
from esegeta_core.targets import MultiClassScores, predicted_classes


def _negative_winners() -> nn.Module:
    """A 1x1 convolution from one channel to three classes, logits x - 5, -10 and
    0.5 x - 3 for x in [0, 1]: class 2 wins every pixel with a negative logit, classes
    0 and 1 win none (sums 0)."""
    net = nn.Conv2d(1, 3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([1.0, 0.0, 0.5]).view(3, 1, 1, 1))
        net.bias.copy_(torch.tensor([-5.0, -10.0, -3.0]))
    return net.eval()


def test_a_class_that_wins_no_pixel_is_not_the_prediction() -> None:
    model, x = _negative_winners(), torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        sums = MultiClassScores()(model(x))
    assert sums[:, :2].eq(0).all() and bool((sums[:, 2] < 0).all())
    assert sums.argmax(1).tolist() == [0, 0]  # the argmax: a class that wins nothing
    e = explain(model, x, "captum.saliency", task="segmentation", progress=False)
    assert e.target.tolist() == [2, 2]
    assert bool((e.attributions.flatten(1).abs().amax(1) > 0).all())  # maps, not zero
    # (the model is linear: its gradient maps are one value, and say so)
    assert not any("zero everywhere" in w for w in e.extras.get("warnings", []))


def test_patched_inputs_pick_the_prediction_the_same_way() -> None:
    model, x = _negative_winners(), torch.rand(1, 1, 16, 16)
    e = explain(model, x, "captum.saliency", task="segmentation", patches={"size": 8},
                progress=False)  # fmt: skip
    assert e.target.tolist() == [2]


@pytest.mark.parametrize(
    ("scores", "summed", "want"),
    [
        ([[0.0, -1.0, -0.5]], True, [2]),  # absent class 0 skipped
        ([[0.0, -1.0, -0.5]], False, [0]),  # a classifier's logits: the plain argmax
        ([[0.0, 0.0, 0.0]], True, [0]),  # nothing wins anything: the plain argmax
        ([[0.0, 2.0, -0.5]], True, [1]),
    ],
)
def test_predicted_classes(scores, summed, want) -> None:  # type: ignore[no-untyped-def]
    got = predicted_classes(torch.tensor(scores), summed=summed)
    assert got.tolist() == want


def test_a_random_segformer_s_second_item() -> None:
    """The real case: SegFormer (random weights, the zoo's seed) explained its second
    item for a class that wins no pixel; every method's map of it was zero."""
    pytest.importorskip("transformers")
    from esegeta_core.testing.zoo import ZOO

    spec = next(s for s in ZOO if s.name == "huggingface.segformer")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = spec.build().eval()
    x = spec.input()
    e = explain(model, x, "captum.saliency", task="segmentation", seed=0, progress=False)
    with torch.no_grad():
        wins = model(x).logits.argmax(1)
    for item, cls in enumerate(e.target.tolist()):
        assert bool((wins[item] == cls).any())  # the class explained wins pixels
    assert not e.extras.get("warnings")

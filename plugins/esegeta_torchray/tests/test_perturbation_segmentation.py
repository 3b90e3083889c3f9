"""TorchRay's rise squashes scores with a sigmoid: it explains classifiers only."""

from __future__ import annotations

import pytest

from esegeta_core import NotApplicableError, describe_method, explain
from esegeta_core.testing import tiny_input, tiny_model


def test_rise_refuses_segmentation_before_the_model_runs() -> None:
    """A segmentation's class scores sum logits over every pixel: TorchRay's sigmoid of
    them is 0 or 1 whatever the mask (the map flat or empty). torchray.rise claims
    classification only; a segmentation call is refused before any pass, naming
    cnnvis.rise first (it scores segmentation models by the raw sums)."""
    assert describe_method("torchray.rise").tasks == ("classification",)
    model, x = tiny_model("segmentation", 2), tiny_input("segmentation", 2)
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(NotApplicableError, match=r"'torchray\.rise'.*do: cnnvis\.rise"):
        explain(model, x, "torchray.rise", target=0, task="segmentation", num_masks=8)
    assert calls == []
    classifier, image = tiny_model("classification", 2), tiny_input("classification", 2)
    e = explain(classifier, image, "torchray.rise", target=0, num_masks=8, progress=False)
    assert bool(e.attributions.isfinite().all())

"""``lime.lime`` equals LIME's own ``LimeImageExplainer`` on 2D images: same user
segmentation, same seed, same tiny model -> the same segment weights, intercept, R^2
and top-segment masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lime.lime_image import LimeImageExplainer

from esegeta_core import explain
from esegeta_core.feature_masks import grid_mask
from esegeta_core.testing import tiny_input, tiny_model


def _classifier_fn(model: torch.nn.Module, softmax: bool):
    """What a LIME user writes: numpy (N, H, W, C) batches -> (N, classes) scores."""

    def fn(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            scores = model(x)
            if softmax:
                scores = torch.softmax(scores, dim=1)
        return scores.numpy()

    return fn


@pytest.mark.parametrize(
    ("num_features", "hide_color", "softmax"),
    [(3, 0.0, True), (8, None, True), (16, 0.5, False)],
    ids=["forward-selection", "highest-weights-mean-hide", "logits"],
)
def test_weights_equal_lime_image_explainer(
    num_features: int, hide_color: float | None, softmax: bool
) -> None:
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2)
    mask = grid_mask(x[:1], 4)[0, 0]  # 16 segments, ids 0..15 as LIME expects
    seed, samples, batch = 7, 48, 16
    e = explain(
        model,
        x,
        "lime.lime",
        target=[1, 2],
        segmentation=mask,
        num_samples=samples,
        num_features=num_features,
        hide_color=hide_color,
        batch_size=batch,
        use_softmax=softmax,
        random_seed=seed,
    )
    # one explainer for the batch: its random state runs on from item to item, as ours
    explainer = LimeImageExplainer(kernel_width=0.25, random_state=seed)
    fn = _classifier_fn(model, softmax)
    for i, label in enumerate([1, 2]):
        image = x[i].permute(1, 2, 0).numpy()
        ref = explainer.explain_instance(
            image,
            fn,
            labels=(label,),
            hide_color=hide_color,
            top_labels=None,
            num_features=num_features,
            num_samples=samples,
            batch_size=batch,
            segmentation_fn=lambda _img: mask.numpy(),
            random_seed=seed,
        )
        expected = np.zeros(mask.shape)
        for segment, weight in ref.local_exp[label]:
            expected[mask.numpy() == segment] = weight
        got = e.attributions[i]
        assert torch.equal(got, got[:1].expand_as(got)), "channels carry the same map"
        np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-4, atol=1e-9)
        assert e.extras["intercept"][i].item() == pytest.approx(ref.intercept[label], rel=1e-5)
        assert e.extras["score"][i].item() == pytest.approx(ref.score, rel=1e-5)
        for key, flags in (
            ("positive_mask", {"positive_only": True}),
            ("negative_mask", {"positive_only": False, "negative_only": True}),
        ):
            _, ref_mask = ref.get_image_and_mask(label, num_features=num_features, **flags)
            assert torch.equal(e.extras[key][i, 0], torch.from_numpy(ref_mask.astype(bool)))
        assert torch.equal(e.extras["segments"][i, 0], mask)

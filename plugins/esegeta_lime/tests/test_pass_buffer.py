"""LIME's perturbed samples made per pass in one reused buffer: the map does not depend
on the pass size (fixed, planned, cached plans, channels-last), equals the fixed
computation (every sample made at once, all classes scored, LIME's own fit), and the
model never sees more inputs per pass than the plan allows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from esegeta_lime.params import LimeParams
from esegeta_lime.surrogate import hidden_image
from torch import nn

import esegeta_core as ec
from esegeta_core.feature_masks import grid_mask
from esegeta_core.runtime import passes
from esegeta_core.testing import PassRecorder, tiny_input, tiny_model
from esegeta_core.testing.plans import fresh_plans  # noqa: F401  (autouse)


def resnet18() -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=5).eval()


def reference_weights(
    model: nn.Module, x: torch.Tensor, segments: torch.Tensor, target: list[int], seed: int
) -> list[torch.Tensor]:
    """LIME as computed before the pass buffer: every item's samples made at once, all
    classes' softmax scored, LIME's ``LimeBase`` fit on the target's column."""
    from lime.lime_base import LimeBase
    from sklearn.metrics import pairwise_distances

    params = LimeParams(segmentation=segments, num_samples=24, random_seed=seed)
    state = np.random.RandomState(seed)
    out = []
    for item, ids, label in zip(x, segments, target, strict=True):
        n = int(ids.max()) + 1
        data = state.randint(0, 2, params.num_samples * n).reshape((params.num_samples, n))
        data[0, :] = 1
        hidden = hidden_image(item, ids[0], params.hide_color)
        keep = torch.as_tensor(data).bool()[:, ids[0]].unsqueeze(1)
        with torch.no_grad():
            labels = torch.softmax(model(torch.where(keep, item, hidden)), dim=1).double()
        distances = pairwise_distances(data, data[:1], metric="cosine").ravel()

        def kernel(d: np.ndarray) -> np.ndarray:
            return np.sqrt(np.exp(-(d**2) / 0.25**2))

        _, ranked, _, _ = LimeBase(kernel, random_state=state).explain_instance_with_data(
            data, labels.numpy(), distances, label, params.num_features, feature_selection="auto"
        )
        weights = torch.zeros(n, dtype=torch.float64)
        for feature, weight in ranked:
            weights[int(feature)] = float(weight)
        out.append(weights)
    return out


CASES = [
    ("tiny2d", lambda: tiny_model("classification", 2), (3, 3, 16, 16), [0, 2, 1]),
    ("tiny3d", lambda: tiny_model("classification", 3), (3, 3, 8, 8, 8), [1, 0, 2]),
    ("resnet18", resnet18, (2, 3, 32, 32), [4, 1]),
]


def _weights(e: ec.Explanation) -> torch.Tensor:
    return torch.stack(e.extras["segment_weights"])


@pytest.mark.parametrize(("name", "build", "shape", "target"), CASES)
def test_lime_map_does_not_depend_on_the_pass_size(name, build, shape, target) -> None:
    model = build()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    segments = grid_mask(x, 4)  # 16 or 64 segments per item
    args = {"segmentation": segments, "num_samples": 24, "random_seed": 2, "progress": False}
    fixed = ec.explain(model, x, "lime.lime", target, batch_size=512, **args)
    expected = reference_weights(model, x, segments, target, seed=2)
    torch.testing.assert_close(_weights(fixed), torch.stack(expected), rtol=1e-5, atol=1e-7)
    runs = [ec.explain(model, x, "lime.lime", target, batch_size=b, **args) for b in (1, 7)]
    for cap in (1, 7, 512):
        passes.clear_plans()  # a plan found under a smaller cap would be reused
        with passes.planning(model, cap):
            runs.append(ec.explain(model, x, "lime.lime", target, batch_size=512, **args))
    auto = ec.explain(model, x, "lime.lime", target, auto_batch=True, **args)
    assert auto.extras["pass_plan"]["inputs_per_pass"] >= 1
    for e in [*runs, auto]:
        torch.testing.assert_close(e.attributions, fixed.attributions, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(_weights(e), _weights(fixed), rtol=1e-5, atol=1e-7)
        assert torch.equal(e.extras["positive_mask"], fixed.extras["positive_mask"])


def test_lime_passes_hold_at_most_batch_size_in_one_reused_buffer() -> None:
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=2)
    ec.explain(
        model, x, "lime.lime", [0, 1], segmentation=grid_mask(x, 4), num_samples=17,
        random_seed=0, batch_size=7,
    )  # fmt: skip
    # per item: passes of 7, 7 and 3 (after explain's probe pass of one item)
    assert model.sizes[-6:] == [7, 7, 3, 7, 7, 3]
    assert len(set(model.pointers[-3:])) == 1  # an item's passes built in one buffer


@pytest.mark.parametrize("cap", [1, 5])
def test_lime_passes_never_exceed_the_plan(cap: int) -> None:
    """A cached plan (also channels-last) is what the model sees, never every sample."""
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=3)
    args = {"segmentation": grid_mask(x, 4), "num_samples": 50, "random_seed": 1}
    fixed = ec.explain(model, x, "lime.lime", [0, 1, 2], batch_size=512, **args)
    for channels_last in (False, True):
        key = passes._key("forward", x[:1])
        passes._plans[model] = {key: passes.PassPlan(cap, channels_last)}
        model.sizes.clear()
        auto = ec.explain(model, x, "lime.lime", [0, 1, 2], auto_batch=True, **args)
        plan = auto.extras["pass_plan"]
        assert plan["inputs_per_pass"] == cap and not plan["measured_now"]
        assert max(model.sizes) <= cap
        assert sum(model.sizes) >= 3 * 50
        torch.testing.assert_close(auto.attributions, fixed.attributions, rtol=1e-5, atol=1e-7)
    # the planner's search under a cap: no pass above it either
    passes.clear_plans()
    model.sizes.clear()
    with passes.planning(model, cap):
        planned = ec.explain(model, x, "lime.lime", [0, 1, 2], batch_size=512, **args)
    assert max(model.sizes) <= cap
    torch.testing.assert_close(planned.attributions, fixed.attributions, rtol=1e-5, atol=1e-7)

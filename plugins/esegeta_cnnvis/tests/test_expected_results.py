"""Expected results on the synthetic ground-truth benchmark (issue 6), seeded.

On the 2D shapes benchmark with its trained tiny classifier, the Grad-CAM family points
at the shape (pointing game >= 90%) while a map that always points at the image centre
does not; the cascading randomisation check flags guided backprop as barely
model-dependent while the plain gradient passes (Adebayo et al. 2018,
https://arxiv.org/abs/1810.03292) when it randomises the upper half of the network; run
down to the first conv layer (its default) it passes both on this small network (see
the test). The values measured when these tests were written (torch 2.x, CPU) are in
the comments; the thresholds leave a margin.

The classifier is trained once (about 10 to 25 s on one CPU thread) into ``$ESEGETA_CACHE``
when CI shares one between test processes, else into a temporary folder.
"""

from __future__ import annotations

import os

import pytest
import torch

from esegeta_core import explain
from esegeta_core.evaluation import (
    cascading_randomisation,
    pointing_accuracy,
    pointing_game,
    randomisation_layers,
)
from esegeta_core.evaluation.explain_fns import method_explain_fn
from esegeta_core.synthetic import default_cache_dir, evaluate_model, pretrained

CAMS = [
    "cnnvis.grad_cam",
    "cnnvis.grad_cam_pp",
    "cnnvis.xgrad_cam",
    "cnnvis.layer_cam",
    "cnnvis.hires_cam",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if os.environ.get("ESEGETA_CACHE"):
        cache = default_cache_dir()
    else:
        cache = tmp_path_factory.mktemp("esegeta-cache") / "models"
    return pretrained("shapes_classifier", cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def data(trained):
    """64 held-out images (seeds below 10 000 never meet the training data)."""
    return trained.test_data(64, seed=1)


def _centre_map(n: int, size: int) -> torch.Tensor:
    """A Gaussian peak at the image centre for every item: the centre-bias baseline."""
    axis = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    peak = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * 8.0**2))
    return peak.expand(n, 1, size, size).clone()


def test_the_classifier_reaches_its_target(trained, data):
    assert trained.metrics["accuracy"] >= trained.recipe.target  # 0.974 on 500, target 0.95
    assert evaluate_model(trained.model, data)["accuracy"] >= trained.recipe.target  # 1.0
    assert trained.pointing_tolerance == 4.0  # TorchRay's 15 px at 224 px, at 64 px


@pytest.mark.parametrize("method", CAMS)
def test_the_grad_cam_family_points_at_the_shape(trained, data, method):
    e = explain(trained.model, data.images, method, data.labels, layer=trained.cam_layer)
    game = pointing_game(e.saliency(), data.masks, tolerance=trained.pointing_tolerance)
    # measured 1.0 (64 of 64 hits) for each of the five at 4 px; with tolerance 1 (the
    # maximum itself on the shape) 0.97 to 0.98 (both with the model trained as now)
    assert float(game.hit.mean()) >= 0.90
    per_class = pointing_accuracy(game.hit, data.labels, num_classes=4)
    assert float(per_class.accuracy) >= 0.90  # TorchRay's mean over classes
    assert bool((per_class.per_class >= 0.80).all()), per_class.per_class


def test_a_centre_baseline_scores_well_below(trained, data):
    images = data.images
    hits = pointing_game(
        _centre_map(len(images), images.shape[-1]), data.masks, tolerance=trained.pointing_tolerance
    ).hit
    # measured 0.19 (12 of 64): the shapes are placed anywhere in the image. It depends on
    # the generated data only, not on the model. (With TorchRay's 15 px, far too lenient
    # for 64 px images, the centre would score 0.77.)
    assert float(hits.mean()) <= 0.35


@pytest.fixture(scope="module")
def randomisation(trained, data):
    """The cascading randomisation check of guided backprop and the plain gradient on
    32 images, over the top half of the network: the classifier and the last two of
    its four conv blocks, re-initialised one after the other from the output."""
    x, y = data.images[:32], data.labels[:32]
    top = randomisation_layers(trained.model)[:5]
    assert top == ["fc", "features.bn4", "features.conv4", "features.bn3", "features.conv3"]
    return {
        method: cascading_randomisation(trained.model, x, y, method_explain_fn(method), layers=top)
        for method in ("cnnvis.guided_backprop", "cnnvis.vanilla_backprop")
    }


def test_randomisation_flags_guided_backprop_and_passes_the_gradient(randomisation):
    guided = randomisation["cnnvis.guided_backprop"]
    gradient = randomisation["cnnvis.vanilla_backprop"]
    # Spearman (absolute values) with the original maps after each step, mean of 32:
    # guided backprop 0.81, 0.77, 0.68, 0.70, 0.63 (every item above 0.5 at the end)
    # gradient        0.46, 0.43, 0.20, 0.20, 0.13 (none above 0.5)
    assert guided.failed and float(guided.spearman[-1].mean()) >= 0.55
    assert float(guided.fails.float().mean()) >= 0.8
    assert not gradient.failed and float(gradient.spearman[-1].mean()) <= 0.3
    assert not bool(gradient.fails.any())
    # guided backprop stays the more similar at every step
    assert bool((guided.spearman.mean(1) > gradient.spearman.mean(1) + 0.2).all())
    # Why only the top half: the check's default cascade goes on down to the first conv
    # layer, and once the lower blocks are random guided backprop's maps change too in
    # this small four-block network. Measured on 64 images, the default cascade gives
    # guided backprop 0.82, 0.75, 0.68, 0.69, 0.63, 0.62, 0.48, 0.44, 0.09 and the
    # gradient 0.46, 0.42, 0.20, 0.20, 0.13, 0.12, 0.09, 0.07, 0.04, so the default
    # verdict (on the fully random network) passes both. The sanity-checks paper's
    # finding, that guided backprop ignores the weights of the upper layers, is what the
    # restricted check tests.

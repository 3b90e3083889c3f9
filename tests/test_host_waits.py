"""The core's per-pass work waits for no device (issue 19): what the perturbation
engines decide per pass reaches the device through ``esegeta_core.runtime.indices``,
and the segmentation wrappers' scores (run on every pass) read nothing back. Counted
without a GPU by ``esegeta_core.testing.syncs`` (the engines themselves are tested in
the plugins that call them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esegeta_core.runtime.indices import device_index, device_scalar
from esegeta_core.targets import MultiClassScores, RegionScores, ScoreModel, ThresholdScores
from esegeta_core.testing import tiny_input, tiny_model
from esegeta_core.testing.syncs import host_waits, scores_as_on_a_gpu, waits_per_pass
from esegeta_core.toolkit import target_pass_scores


def test_device_index_and_scalar_are_not_counted_and_hold_the_values() -> None:
    with host_waits() as seen:
        index = device_index([3, 1, 2], torch.device("cpu"))
        repeated = device_index(np.repeat([4, 5], 2), torch.device("cpu"))
        value = device_scalar(0.25, torch.zeros(2, dtype=torch.float64))
    assert index.tolist() == [3, 1, 2] and index.dtype == torch.long
    assert repeated.tolist() == [4, 4, 5, 5]
    assert value.dtype == torch.float64 and value.ndim == 0 and float(value) == 0.25
    assert not seen
    with host_waits() as seen:
        torch.tensor([3, 1, 2])
        torch.zeros(4)[torch.zeros(4) > 0]
    assert seen == {"aten.lift_fresh.default": 1, "aten.index.Tensor (boolean mask)": 1}


def _wrapped(kind: str) -> tuple[ScoreModel, torch.Tensor]:
    if kind == "threshold (otsu)":
        return ScoreModel(tiny_model("segmentation", classes=1), ThresholdScores("otsu")), (
            torch.tensor([1, 0] * 4)
        )
    model = tiny_model("segmentation", classes=5)
    if kind == "region":
        mask = torch.zeros(16, 16)
        mask[4:9, 2:12] = 1
        return ScoreModel(model, RegionScores(mask)), torch.tensor([4, 0, 2, 1] * 2)
    return ScoreModel(model, MultiClassScores()), torch.tensor([4, 0, 2, 1] * 2)


@pytest.mark.parametrize("kind", ["multi_class (5 classes)", "region", "threshold (otsu)"])
def test_the_segmentation_scores_wait_for_nothing_per_pass(kind: str) -> None:
    scored, targets = _wrapped(kind)
    x = tiny_input("segmentation", batch=8, seed=2)

    def call(size: int) -> None:
        with torch.no_grad():
            for start in range(0, 8, size):
                stop = start + size
                target_pass_scores(scored, x[start:stop], targets[start:stop])

    with scores_as_on_a_gpu():  # on the CPU the wrapper reads the classes: no wait there
        assert waits_per_pass(call) == {}
        # nor per input (Otsu's threshold is one per item): one pass of 2, one of 8
        counts = []
        for n in (2, 8):
            with torch.no_grad(), host_waits() as seen:
                target_pass_scores(scored, x[:n], targets[:n])
            counts.append(seen)
        assert counts[0] == counts[1]


def test_the_gpu_path_gives_the_cpu_paths_scores() -> None:
    """More than three classes: each item's class gathered and compared on the device
    (the GPU's path) gives the per-class sums (the CPU's) and the full reduction's."""
    scored, targets = _wrapped("multi_class (5 classes)")
    x = tiny_input("segmentation", batch=8, seed=2)
    with torch.no_grad():
        out = scored.model(x)
        reduce = MultiClassScores()
        gathered = reduce.gathered_class_sums(out, targets)
        torch.testing.assert_close(gathered, reduce.class_scores(out, targets))
        full = reduce(out).gather(1, targets.view(-1, 1)).squeeze(1)
        torch.testing.assert_close(gathered, full, rtol=0, atol=0)
        ties = out.round()  # the first class wins a tie
        full = reduce(ties).gather(1, targets.view(-1, 1)).squeeze(1)
        torch.testing.assert_close(reduce.gathered_class_sums(ties, targets), full)

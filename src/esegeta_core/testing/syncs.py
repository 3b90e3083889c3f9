"""Count the operations that make the host wait for a CUDA device, on any device.

On a GPU a perturbation engine must not stop the host once per pass (see
:mod:`esegeta_core.runtime.indices`). Without a GPU the waits cannot be timed, but the
operations that cause them can be seen: :func:`host_waits` counts, through a
``TorchDispatchMode``, every read of a tensor's value into Python (``.item()``,
``int(t)``, ``bool(t)``: ``_local_scalar_dense``), every tensor made from host data
(``torch.tensor``, an indexed write of a Python number: ``lift_fresh``) except those
made by :func:`~esegeta_core.runtime.indices.device_index` and
:func:`~esegeta_core.runtime.indices.device_scalar`, and every operation whose output
size depends on values (``nonzero``, ``unique``, boolean-mask indexing,
``repeat_interleave`` without ``output_size``). ``.tolist()`` of a CPU tensor is not
seen. Run an engine at two pass sizes: a count that differs is a wait per pass.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from esegeta_core.runtime import indices

WAITS = frozenset(
    {
        "aten._local_scalar_dense.default",
        "aten.lift_fresh.default",
        "aten.nonzero.default",
        "aten.repeat_interleave.Tensor",
        "aten._unique2.default",
        "aten.unique_dim.default",
        "aten.unique_consecutive.default",
        "aten.masked_select.default",
    }
)
"""Operations that wait for the device on CUDA (or copy from pageable host memory)."""
_EXEMPT = {indices.device_index.__code__, indices.device_scalar.__code__}


PASS_CASES: dict[str, dict[str, Any]] = {
    "captum.occlusion": {"window": 4, "strides": 4},
    "captum.feature_ablation": {"grid_cell": 4},
    "captum.feature_permutation": {"grid_cell": 4},
    "captum.shapley_value_sampling": {"grid_cell": 8, "n_samples": 3},
    "captum.shapley_values": {"grid_cell": 8},
    "captum.kernel_shap": {"grid_cell": 4, "n_samples": 24},
    "captum.lime": {"grid_cell": 4, "n_samples": 24},
    "captum.layer_feature_ablation": {"layer": "@conv2"},
    "captum.neuron_feature_ablation": {
        "layer": "@conv2",
        "neuron_selector": (0, 1, 1),
        "grid_cell": 4,
    },
    "cnnvis.score_cam": {"layer": "@conv2"},
    "cnnvis.ablation_cam": {"layer": "@conv2"},
    "cnnvis.rise": {"num_masks": 24},
    "lime.lime": {"num_samples": 24, "segmentation": "slic", "n_segments": 8, "sigma": 1.0},
    "torchray.rise": {"num_masks": 24, "num_cells": 4},
}
"""Every perturbation method with parameters that keep it fast on the tiny models
(:func:`~esegeta_core.testing.tiny_model`), for counting its waits per pass; ``"@name"``
is a layer of the tiny model's trunk (:func:`case_params`)."""
_TRUNK = {"classification": "features", "segmentation": "encoder"}


def case_params(name: str, task: str) -> dict[str, Any]:
    """:data:`PASS_CASES`' parameters of ``name`` for the tiny ``task`` model (its
    layer paths filled in)."""
    return {
        k: f"{_TRUNK[task]}.{v[1:]}" if isinstance(v, str) and v.startswith("@") else v
        for k, v in PASS_CASES[name].items()
    }


def _from_exempt(depth: int = 12) -> bool:
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code in _EXEMPT:
            return True
        frame = frame.f_back
    return False


def _bool_index(args: tuple[Any, ...]) -> bool:
    found = args[1] if len(args) > 1 else None
    return isinstance(found, list | tuple) and any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in found
    )


class _Counting(TorchDispatchMode):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        name = str(func)
        if name in WAITS:
            if name != "aten.lift_fresh.default" or not _from_exempt():
                self.counts[name] += 1
        elif name in ("aten.index.Tensor", "aten.index_put_.default") and _bool_index(args):
            self.counts[f"{name} (boolean mask)"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_waits() -> Iterator[Counter[str]]:
    """Within the block, count the operations that would make the host wait for a CUDA
    device (see the module), by operation name."""
    counts: Counter[str] = Counter()
    with _Counting(counts):
        yield counts


def waits_per_pass(
    call: Callable[[int], object],
    small: int = 1,
    large: int = 4,
    counter: Callable[[], contextlib.AbstractContextManager[Counter[str]]] = host_waits,
) -> dict[str, int]:
    """The waits that come with every pass: ``call(pass_size)`` counted at ``small``
    and at ``large`` inputs per pass (each after a first, uncounted call at that size,
    so that one-off work such as a plan or a cache is not counted), and for each
    operation whose counts differ, ``small``'s count minus ``large``'s. Empty when the
    waits do not grow with the passes. ``counter``: :func:`host_waits`, or another
    context that yields a count (CUDA's own, in ``benchmarks/gpu_waits.py``)."""
    counts = []
    for size in (small, large):
        call(size)
        with counter() as seen:
            call(size)
        counts.append(seen)
    first, second = counts
    return {k: first[k] - second[k] for k in first.keys() | second.keys() if first[k] != second[k]}


@contextlib.contextmanager
def scores_as_on_a_gpu() -> Iterator[None]:
    """Within the block the segmentation wrapper scores its targets as it does for
    targets on a GPU (:meth:`~esegeta_core.targets.MultiClassScores.gathered_class_sums`,
    which reads nothing on the host), where on the CPU it reads the classes present (no
    wait there): so that :func:`waits_per_pass` on the CPU counts what a GPU would wait
    for."""
    from esegeta_core.targets import MultiClassScores

    cpu_path = MultiClassScores.class_scores
    MultiClassScores.class_scores = MultiClassScores.gathered_class_sums  # type: ignore[method-assign]
    try:
        yield
    finally:
        MultiClassScores.class_scores = cpu_path  # type: ignore[method-assign]

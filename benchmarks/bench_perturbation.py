"""Perturbation methods against their compute floor and their peers, side by side.

Issue 19: every perturbation method of every plugin (and the channel-perturbing CAMs,
Score-CAM and Ablation-CAM), on a 2D ResNet-50 at 64 px (batch 1, and batch 4 for a
subset), a 3D MONAI DenseNet121 at 48^3 and a 3D MONAI U-Net at 48^3 explained as a
segmentation model (batch 1 and 4). For each row, in one process and interleaved:

- **floor**: the bare forward passes the method needs (its perturbed inputs and its
  reference passes, no bookkeeping), at each pass size of a sweep, then channels-last at
  the best size; the best is the floor. It runs with freed memory kept for the next
  pass, as ``explain()`` runs on the CPU (:mod:`esegeta_core.runtime.heap`; the
  ``heap`` entry says whether it was held), so the ratios measure esegeta's own work,
  not glibc's page faults (``bench_heap.py`` measures those). For Ablation-CAM and
  layer feature ablation the ablated copies only need the layers after the explained
  one: their floor is one whole pass plus passes of the model's tail on the layer's
  activations. On the segmentation case each of the floor's passes ends with each
  input's score of the target (the class's logits summed where they win, that class
  only, as the core's segmentation wrapper makes it for esegeta's passes): that sum is
  the function being explained, which every method and every peer computes per pass
  (about a twentieth of a pass of the small U-Net). The JSON has those rows against the
  network's outputs alone too (``network_best``, ``paired_ratio_to_network``);
- **default**: ``explain()`` with the method's defaults for its pass sizes;
- **auto_first_call**: ``auto_batch=True`` on an empty plan cache (the pass planner
  measures on the method's own passes), once; **auto_planned**: the same call with the
  plan cached per network (short work finishes its search over a few calls first:
  ``calls_to_settle``, at most 12 calls or 60 s);
- **peers**: what a user would otherwise call, with its defaults: Captum's class
  (``perturbations_per_eval=1``), MONAI's ``OcclusionSensitivity``, pytorch-grad-cam's
  ``ScoreCAM`` / ``AblationCAM``, TorchRay's ``rise``, lime's ``LimeImageExplainer``
  (see ``peers_perturbation.py``). A peer that cannot run a row is listed with the
  reason.

The machine is noisy: each row runs ``--repeats`` rounds (more for a row whose first
call is short, ``rounds`` in the JSON: at least 2 s of it in all, at most 15 rounds,
unless ``--repeats`` is given), each timing every variant once in a rotating order (the
floor sweeps every size in the first round, then its best size and layout); the
minimum per variant is kept. A peer timed twice and already 1.5 times slower than both
esegeta timings is not timed again (``peer_timings``). ``paired_ratio_to_floor`` is the
steadier figure on a shared machine: per variant, the median over the rounds after the
first of its time over the floor's in the same round (the floor's best is the least of
more timings than any call gets, every size of the sweep's included).

Targets (issue 19, on CPU): every method at most 1.1x its floor with ``auto_batch``,
never slower than without it, and at least as fast as every peer. The ``summary`` has
the ratios and whether each target holds (comparisons other than the floor allow
``NOISE``; the floor's target is checked on both ratios). Models have random weights
(nothing downloaded). Run::

    python benchmarks/bench_perturbation.py --out benchmarks/results/perturbation_cpu.json

``--smoke`` runs every row and peer at tiny sizes (a few minutes); ``--list`` prints the
rows and their pass counts; ``--cases 2d,3d,unet`` and ``--only METHOD,...`` filter;
``--device cuda`` runs on the first GPU, where the floor's sweep adds larger passes
(:data:`GPU_SIZES`) and the targets are the GPU's (:data:`GPU_PEER_TARGETS`; no floor
target); ``--amp`` runs ``explain()`` and the floor in that precision (``tf32``: TF32
allowed on a GPU, which esegeta turns off by default). The JSON is written after every
row, so a run cut short keeps its finished rows (``rows_planned`` has the whole count).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's and lime's progress bars

import peers_perturbation as peers
import torch
import torch.nn.functional as F
from torch import nn

import esegeta_core as ec
from esegeta_core.runtime import heap, passes, precision
from esegeta_core.targets import score_model

FLOOR_TARGET = 1.1
"""Most auto_planned / floor the issue allows (on a CPU)."""
GPU_PEER_TARGETS = {"Captum": 5.0, "MONAI": 2.0, "pytorch-grad-cam": 2.0}
"""On a GPU: how many times faster than each peer (by its name's first word) the call
with ``auto_batch`` must be (issue 19; Captum at its default ``perturbations_per_eval=1``)."""
NOISE = 0.05
"""Margin of the comparisons between timed calls (auto vs default, esegeta vs peer)."""
SAME_MAP = 1e-4
"""Most difference, relative to the map's largest value, between the maps of the call
with ``auto_batch`` and the default call (seeded alike): rounding only."""
SETTLE_CALLS = 12
"""Most calls after the first to let the planner finish its search before timing."""
SETTLE_SECONDS = 60.0
"""Most seconds spent on those calls."""
SHORT_ROUNDS_SECONDS = 8.0
"""A row whose first call is short gets more rounds, up to this many seconds of that
call per round count (``--repeats`` at least, :data:`MOST_ROUNDS` at most): the noise
of a 60 ms call is a larger share of it than of a 5 s call's. At 2 s the rows of calls
under a second had 5 rounds, so 4 paired ratios, and their verdict against 1.10x moved
with the run (the U-Net's RISE at batch 1: 1.13 and 1.06 in two runs of the same
plan); 8 s gives them 8-15 rounds, about 6 minutes more in all."""
MOST_ROUNDS = 15
PEER_SETTLE = 0.3
"""Seconds to wait, untimed, after a peer's call: the scikit-learn fits of Captum's LIME
and KernelSHAP and of ``lime`` leave OpenBLAS's worker threads spinning for a while,
and the next timing would pay for them (bare ResNet-50 passes: 0.54 s after bare
passes, 0.60-0.62 s right after a fit, 0.55 s 0.3 s later). esegeta's own fits run on
one BLAS thread (:mod:`esegeta_core.runtime.host_blas`)."""
SLOW_PEER = 1.5
"""A peer at least this many times slower than both esegeta timings is timed once."""

SKIPPED = {
    "torchray.extremal_perturbation": "an optimisation of a mask by gradient descent "
    "(forward and backward passes through the model, 800 iterations by default), not "
    "forward-only perturbation passes: no pass-size floor applies",
}
"""Methods of the perturbation family not benchmarked, with the reason."""

EXTRA = ("cnnvis.score_cam", "cnnvis.ablation_cam")
"""Channel-perturbing methods of other families that must be covered too."""

PLAN: dict[str, list[tuple[str, tuple[int, ...]]]] = {
    "2d": [
        ("captum.occlusion", (1, 4)),
        ("captum.feature_ablation", (1, 4)),
        ("captum.shapley_value_sampling", (1,)),
        ("captum.shapley_values", (1,)),
        ("captum.kernel_shap", (1,)),
        ("captum.lime", (1,)),
        ("captum.feature_permutation", (4,)),
        ("captum.layer_feature_ablation", (1,)),
        ("captum.neuron_feature_ablation", (1,)),
        ("cnnvis.rise", (1, 4)),
        ("torchray.rise", (1,)),
        ("lime.lime", (1,)),
        ("cnnvis.score_cam", (1,)),
        ("cnnvis.ablation_cam", (1,)),
    ],
    "3d": [
        ("captum.occlusion", (1,)),
        ("captum.feature_ablation", (1,)),
        ("cnnvis.rise", (1,)),
        ("lime.lime", (1,)),
        ("cnnvis.score_cam", (1,)),
        ("cnnvis.ablation_cam", (1,)),
    ],
    "unet": [
        ("captum.occlusion", (1, 4)),
        ("cnnvis.rise", (1, 4)),
    ],
}
"""Which methods each case runs, at which batch sizes."""


@dataclass
class Case:
    """A model and its input, with the per-case settings of the rows."""

    key: str
    label: str
    model: nn.Module
    x: torch.Tensor
    sizes: list[int]
    tail_sizes: list[int]
    window: int
    cell: int
    coarse_cell: int
    samples: int
    masks: dict[int, int]
    n_segments: int
    layers: dict[str, str] = field(default_factory=dict)
    tails: dict[str, nn.Module] = field(default_factory=dict)
    task: str = "classification"
    target: int = 0


@dataclass
class Floor:
    """The bare passes of a method: ``whole`` inputs through the model (the batch's
    items in turn), or with ``tail`` one whole pass of the batch (``whole`` = its items)
    plus ``tail_passes`` inputs through the layers after the explained one (copies of
    the layer's activations ``acts``)."""

    whole: int
    tail: nn.Module | None = None
    acts: torch.Tensor | None = None
    tail_passes: int = 0

    @property
    def passes(self) -> int:
        return self.whole + self.tail_passes


@dataclass
class Row:
    """One method on one case and batch."""

    method: str
    params: dict[str, Any]
    floor: Floor
    peers: dict[str, peers.Peer | str]
    note: str = ""


@dataclass(frozen=True)
class Scale:
    """The sizes of a run: the full benchmark or the smoke test."""

    px: int
    side3d: int
    side_unet: int
    window2d: int
    cell2d: int
    coarse2d: int
    window3d: int
    cell3d: int
    window_unet: int
    samples2d: int
    samples3d: int
    masks2d: dict[int, int]
    masks3d: int
    masks_unet: dict[int, int]
    segments2d: int
    segments3d: int
    sizes2d: list[int]
    sizes3d: list[int]
    tail_sizes: list[int]
    repeats: int
    smoke: bool = False


FULL = Scale(
    px=64, side3d=48, side_unet=48, window2d=8, cell2d=8, coarse2d=16, window3d=8,
    cell3d=12, window_unet=8, samples2d=200, samples3d=128, masks2d={1: 256, 4: 128}, masks3d=128,
    masks_unet={1: 256, 4: 128}, segments2d=32, segments3d=32, sizes2d=[1, 8, 16, 32, 64],
    sizes3d=[1, 4, 8, 16, 32], tail_sizes=[8, 32, 64, 128, 256, 512], repeats=5,
)  # fmt: skip
SMOKE = Scale(
    px=32, side3d=32, side_unet=16, window2d=8, cell2d=8, coarse2d=16, window3d=16,
    cell3d=16, window_unet=8, samples2d=16, samples3d=16, masks2d={1: 16, 4: 8}, masks3d=16,
    masks_unet={1: 16, 4: 8}, segments2d=8, segments3d=8, sizes2d=[1, 8], sizes3d=[1, 4],
    tail_sizes=[8, 64], repeats=1, smoke=True,
)  # fmt: skip
"""Smoke: ResNet-18 for ResNet-50 and a small MONAI DenseNet for DenseNet121 (same
layer names), 32 px, the DenseNet at 32^3 (it needs 32 voxels per side), the U-Net at
16^3."""
GPU_SIZES = {"sizes2d": [128, 256, 512], "sizes3d": [64, 128], "tail_sizes": [1024]}
"""Pass sizes the floor's sweep adds on a GPU, where passes larger than a CPU's best
still run faster per input (a sweep capped below the planner's choice would flatter it)."""


# --- inputs, cases ----------------------------------------------------------------------


def smooth(
    batch: int, channels: int, spatial: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """Random inputs smooth enough for SLIC to find superpixels (noise has none)."""
    coarse = torch.rand(batch, channels, *(max(2, s // 8) for s in spatial))
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(coarse, size=spatial, mode=mode, align_corners=False).to(device)


def build_cases(scale: Scale, keys: list[str], device: torch.device) -> list[Case]:
    """The models (random weights) and inputs of the selected cases."""
    torch.manual_seed(0)
    out = []
    if "2d" in keys:
        from torchvision.models import resnet18, resnet50

        net = (resnet18 if scale.smoke else resnet50)(weights=None).eval().to(device)
        name = "ResNet-18" if scale.smoke else "ResNet-50"
        tail3 = nn.Sequential(net.layer4, net.avgpool, nn.Flatten(1), net.fc)
        out.append(
            Case(
                key="2d", label=f"{name} {scale.px} px", model=net,
                x=smooth(4, 3, (scale.px, scale.px), device), sizes=scale.sizes2d,
                tail_sizes=scale.tail_sizes, window=scale.window2d, cell=scale.cell2d,
                coarse_cell=scale.coarse2d, samples=scale.samples2d, masks=scale.masks2d,
                n_segments=scale.segments2d,
                layers={"score_cam": "layer2", "ablation": "layer3", "neuron": "layer3"},
                tails={"layer3": tail3},
            )
        )  # fmt: skip
    if "3d" in keys:
        from monai.networks.nets import DenseNet, DenseNet121

        if scale.smoke:
            net = DenseNet(
                spatial_dims=3, in_channels=1, out_channels=3, init_features=8,
                growth_rate=8, block_config=(2, 2, 2, 2),
            )  # fmt: skip
            name = "MONAI DenseNet (small)"
        else:
            net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=3)
            name = "MONAI DenseNet121"
        net = net.eval().to(device)
        f = net.features
        tail = nn.Sequential(f.denseblock3, f.transition3, f.denseblock4, f.norm5, net.class_layers)
        side = scale.side3d
        out.append(
            Case(
                key="3d", label=f"{name} 3D {side}^3", model=net,
                x=smooth(1, 1, (side,) * 3, device), sizes=scale.sizes3d,
                tail_sizes=scale.tail_sizes, window=scale.window3d, cell=scale.cell3d,
                coarse_cell=scale.cell3d, samples=scale.samples3d,
                masks={1: scale.masks3d}, n_segments=scale.segments3d,
                layers={"score_cam": "features.transition1", "ablation": "features.transition2"},
                tails={"features.transition2": tail},
            )
        )  # fmt: skip
    if "unet" in keys:
        from monai.networks.nets import UNet

        net = UNet(
            spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2)
        )
        side = scale.side_unet
        out.append(
            Case(
                key="unet", label=f"MONAI UNet 3D {side}^3 (segmentation, class 1)",
                model=net.eval().to(device), x=smooth(4, 1, (side,) * 3, device),
                sizes=scale.sizes3d, tail_sizes=scale.tail_sizes, window=scale.window_unet,
                cell=scale.window_unet, coarse_cell=scale.window_unet, samples=scale.samples3d,
                masks=scale.masks_unet, n_segments=scale.segments3d,
                task="segmentation", target=1,
            )
        )  # fmt: skip
    return out


# --- rows ---------------------------------------------------------------------------------


def _windows(spatial: tuple[int, ...], window: int) -> int:
    """Occlusion windows of ``window`` at stride ``window`` (Captum's count)."""
    return math.prod((n - window) // window + 1 for n in spatial)


def _cells(spatial: tuple[int, ...], cell: int) -> int:
    """Features of a grid of ``cell`` (partial cells at the edges count)."""
    return math.prod(-(-n // cell) for n in spatial)


def _layer_output(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """The output of the layer at ``path`` on ``x``."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(path).register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _two_d(c: Case, what: str) -> str | None:
    """Why a 2D-only peer cannot run this case (None when it can)."""
    return None if c.x.ndim == 4 else f"not run: {what} is 2D only"


def _scored(c: Case) -> nn.Module | Callable[[torch.Tensor], torch.Tensor]:
    """The model as a Captum peer needs it: per-class scores (segmentation: summed)."""
    if c.task == "classification":
        return c.model
    return lambda inp: peers.multi_class_sums(c.model(inp))


def occlusion(c: Case, x: torch.Tensor) -> Row:
    w, spatial = c.window, tuple(x.shape[2:])
    extent = (x.shape[1], *([w] * len(spatial)))
    found: dict[str, peers.Peer | str] = {
        "Captum Occlusion": peers.captum(
            "Occlusion", _scored(c), x, target=c.target, sliding_window_shapes=extent,
            strides=extent,
        ),
    }  # fmt: skip
    activate: Any = True if c.task == "classification" else peers.multi_class_sums
    found["MONAI OcclusionSensitivity"] = (
        peers.monai_occlusion(c.model, x, w, activate)
        if x.shape[0] == 1
        else "not run: it takes a batch of 1 only"
    )
    note = ""
    if c.task == "segmentation":
        note = (
            "Captum and MONAI take (B, classes) scores, not a segmentation output: both "
            "get the per-class sums of the winning logits (esegeta's multi_class wrapper) "
            "from a small function (Captum's forward_func, MONAI's activate=)"
        )
    return Row(
        "captum.occlusion",
        {"window": w, "strides": w},
        Floor((_windows(spatial, w) + 1) * x.shape[0]),
        found,
        note,
    )


def _grid_row(
    c: Case, x: torch.Tensor, method: str, captum_name: str, cell: int, **extra: Any
) -> Row:
    """A Captum method on a grid of ``cell``; its peer gets the same grid as a tensor."""
    spatial = tuple(x.shape[2:])
    features = _cells(spatial, cell)
    mask = peers.grid_mask(spatial, [cell] * len(spatial), x.device)
    samples = int(extra.get("n_samples", 0))
    if method == "captum.shapley_value_sampling":
        per_item = samples * features + 1
    elif method in ("captum.kernel_shap", "captum.lime"):
        per_item = samples
    else:  # ablation, permutation: one pass per feature and the unperturbed one
        per_item = features + 1
    params = {"feature_mask": "grid", "grid_cell": cell, **extra}
    peer = peers.captum(captum_name, c.model, x, target=c.target, feature_mask=mask, **extra)
    return Row(method, params, Floor(per_item * x.shape[0]), {f"Captum {captum_name}": peer})


def feature_ablation(c: Case, x: torch.Tensor) -> Row:
    return _grid_row(c, x, "captum.feature_ablation", "FeatureAblation", c.cell)


def feature_permutation(c: Case, x: torch.Tensor) -> Row:
    return _grid_row(c, x, "captum.feature_permutation", "FeaturePermutation", c.coarse_cell)


def shapley_value_sampling(c: Case, x: torch.Tensor) -> Row:
    return _grid_row(
        c, x, "captum.shapley_value_sampling", "ShapleyValueSampling", c.coarse_cell, n_samples=2
    )


def kernel_shap(c: Case, x: torch.Tensor) -> Row:
    return _grid_row(c, x, "captum.kernel_shap", "KernelShap", c.cell, n_samples=c.samples)


def captum_lime(c: Case, x: torch.Tensor) -> Row:
    return _grid_row(c, x, "captum.lime", "Lime", c.cell, n_samples=c.samples)


def shapley_values(c: Case, x: torch.Tensor) -> Row:
    """Exact Shapley values on the method's default 2 x 2 grid (4 features, 4 x 4!
    orderings): cheap enough; more features grow factorially."""
    spatial = tuple(x.shape[2:])
    cells = [*spatial[:-2], *(-(-n // 2) for n in spatial[-2:])]
    mask = peers.grid_mask(spatial, cells, x.device)
    peer = peers.captum("ShapleyValues", c.model, x, target=c.target, feature_mask=mask)
    per_item = 4 * math.factorial(4) + 1
    return Row(
        "captum.shapley_values", {}, Floor(per_item * x.shape[0]), {"Captum ShapleyValues": peer}
    )


def layer_feature_ablation(c: Case, x: torch.Tensor) -> Row:
    path = c.layers["ablation"]
    acts = _layer_output(c.model, path, x)
    channels = acts.shape[1]
    mask = torch.arange(channels, device=x.device).view(1, channels, *([1] * (acts.ndim - 2)))
    peer = peers.captum(
        "LayerFeatureAblation", c.model, x, layer=c.model.get_submodule(path), target=c.target,
        layer_mask=mask,
    )  # fmt: skip
    floor = Floor(x.shape[0], c.tails[path], acts[:1], channels * x.shape[0])
    return Row(
        "captum.layer_feature_ablation",
        {"layer": path},
        floor,
        {"Captum LayerFeatureAblation": peer},
        f"{channels} channels ablated one at a time; Captum runs whole passes",
    )


def neuron_feature_ablation(c: Case, x: torch.Tensor) -> Row:
    path = c.layers["neuron"]
    acts = _layer_output(c.model, path, x)
    neuron = [0, *(n // 2 for n in acts.shape[2:])]
    spatial = tuple(x.shape[2:])
    cell = c.coarse_cell
    mask = peers.grid_mask(spatial, [cell] * len(spatial), x.device)
    peer = peers.captum(
        "NeuronFeatureAblation", c.model, x, layer=c.model.get_submodule(path), target=None,
        neuron_selector=tuple(neuron), feature_mask=mask,
    )  # fmt: skip
    params = {"layer": path, "neuron_selector": neuron, "feature_mask": "grid", "grid_cell": cell}
    per_item = _cells(spatial, cell) + 1
    return Row(
        "captum.neuron_feature_ablation",
        params,
        Floor(per_item * x.shape[0]),
        {"Captum NeuronFeatureAblation": peer},
    )


def cnnvis_rise(c: Case, x: torch.Tensor) -> Row:
    n = c.masks[x.shape[0]]
    peer: peers.Peer | str = _two_d(c, "TorchRay's rise") or peers.torchray_rise(c.model, x, n)
    note = "TorchRay scores and accumulates every class per pass" if x.ndim == 4 else ""
    return Row(
        "cnnvis.rise",
        {"num_masks": n, "mask_seed": 0},
        Floor(n * x.shape[0]),
        {"TorchRay rise": peer},
        note,
    )


def torchray_rise(c: Case, x: torch.Tensor) -> Row:
    n = c.masks[x.shape[0]]
    return Row(
        "torchray.rise",
        {"num_masks": n},
        Floor(n * x.shape[0]),
        {"TorchRay rise": peers.torchray_rise(c.model, x, n)},
        "esegeta scores only the target's column; TorchRay's own call scores every class. "
        "TorchRay draws its masks batch_size (32) at a time and runs them so: esegeta draws "
        "the same masks and auto_batch plans the passes (pass_size), so the map stays "
        "TorchRay's",
    )


def lime_lime(c: Case, x: torch.Tensor) -> Row:
    n = c.samples
    reason = _two_d(c, "lime's LimeImageExplainer")
    peer = reason or peers.lime_image(c.model, x, n, c.n_segments)
    params = {"num_samples": n, "segmentation": "slic", "n_segments": c.n_segments}
    return Row("lime.lime", params, Floor(n * x.shape[0]), {"lime LimeImageExplainer": peer})


def score_cam(c: Case, x: torch.Tensor) -> Row:
    path = c.layers["score_cam"]
    acts = _layer_output(c.model, path, x)
    dead = acts.flatten(2).abs().amax(2) == 0
    # one pass for the activations, one per live (item, channel), one for all dead ones
    whole = 1 + int((~dead).sum()) + int(bool(dead.any()))
    peer = peers.grad_cam("score", c.model, x, path)
    return Row(
        "cnnvis.score_cam",
        {"layer": path},
        Floor(whole),
        {"pytorch-grad-cam ScoreCAM": peer},
        f"{acts.shape[1]} channels at {path}, {int(dead.sum())} all zero",
    )


def ablation_cam(c: Case, x: torch.Tensor) -> Row:
    path = c.layers["ablation"]
    acts = _layer_output(c.model, path, x)
    same = (acts.flatten(2) == 0).all(2)  # ablating an all-zero channel changes nothing
    floor = Floor(x.shape[0], c.tails[path], acts[:1], int((~same).sum()))
    peer = peers.grad_cam("ablation", c.model, x, path)
    note = (
        f"{acts.shape[1]} channels at {path}, {int(same.sum())} all zero; pytorch-grad-cam "
        "runs the layers before the layer per pass"
    )
    return Row(
        "cnnvis.ablation_cam", {"layer": path}, floor, {"pytorch-grad-cam AblationCAM": peer}, note
    )


BUILDERS: dict[str, Callable[[Case, torch.Tensor], Row]] = {
    "captum.occlusion": occlusion,
    "captum.feature_ablation": feature_ablation,
    "captum.shapley_value_sampling": shapley_value_sampling,
    "captum.shapley_values": shapley_values,
    "captum.kernel_shap": kernel_shap,
    "captum.lime": captum_lime,
    "captum.feature_permutation": feature_permutation,
    "captum.layer_feature_ablation": layer_feature_ablation,
    "captum.neuron_feature_ablation": neuron_feature_ablation,
    "cnnvis.rise": cnnvis_rise,
    "torchray.rise": torchray_rise,
    "lime.lime": lime_lime,
    "cnnvis.score_cam": score_cam,
    "cnnvis.ablation_cam": ablation_cam,
}


def check_coverage() -> list[str]:
    """Every installed perturbation-family method (and Score-CAM, Ablation-CAM) is in
    :data:`PLAN` or :data:`SKIPPED`; exits loudly otherwise. Returns the installed ones."""
    installed = sorted({m.name for m in ec.list_methods(family="perturbation")} | set(EXTRA))
    planned = {m for rows in PLAN.values() for m, _ in rows}
    unbuilt = planned - set(BUILDERS)
    missing = [m for m in installed if m not in planned and m not in SKIPPED]
    if missing or unbuilt:
        sys.exit(
            f"bench_perturbation: perturbation methods neither benchmarked nor skipped: "
            f"{missing}; planned without a builder: {sorted(unbuilt)}. Add them to PLAN "
            "(with a builder) or to SKIPPED with the reason."
        )
    return installed


# --- timing -------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _scoring(case: Case) -> Callable[[torch.Tensor], torch.Tensor]:
    """A segmentation case's network to its target's score per input: the bare
    passes, then the least any method computes of the function it explains (the
    target's logits summed where they win, one class only: the core's
    ``target_scores``, what esegeta's passes take)."""
    scored = score_model(case.model, "segmentation", None, case.target)

    def run(batch: torch.Tensor) -> torch.Tensor:
        # on the passes' device, as esegeta's passes hold them (no host reads on a GPU)
        classes = torch.full((batch.shape[0],), case.target, device=batch.device)
        return scored.target_scores(batch, classes)

    return run


def _floor_run(
    case: Case,
    x: torch.Tensor,
    floor: Floor,
    size: int,
    channels_last: bool,
    amp: str | None,
    *,
    scores: bool = True,
) -> Callable[[], None]:
    """The floor's passes at ``size`` inputs per pass, after one untimed pass of each
    shape it uses (the set-up of a new shape is not part of the floor), in the precision
    ``explain(amp=amp)`` computes in (on a GPU: float32 without TF32 for None). For a
    segmentation case each pass ends with the target's score per input (``scores``;
    without it, the network's outputs only: the ``network`` figure)."""
    net: Callable[[torch.Tensor], object]
    if floor.tail is not None and floor.acts is not None:
        net, items, count = floor.tail, floor.acts, floor.tail_passes
    else:  # the batch's items in turn, as the method's passes perturb each of them
        net, items, count = case.model, x, floor.whole
        if scores and case.task == "segmentation":
            net = _scoring(case)
    fmt = passes.memory_format(channels_last, items.ndim)
    n = min(size, count)
    cycled = items.repeat(-(-n // items.shape[0]), *([1] * (items.ndim - 1)))[:n]
    batch = cycled.contiguous(memory_format=fmt)
    whole = x.contiguous(memory_format=passes.memory_format(channels_last, x.ndim))

    def run() -> None:
        # the heap held as explain() holds it on the CPU (esegeta_core.runtime.heap):
        # the floor's passes get the same reuse of freed memory as the method's
        with torch.no_grad(), heap.held_heap(x.device), precision.autocast(amp, x.device):
            if floor.tail is not None:
                case.model(whole)
            for start in range(0, count, size):
                net(batch[: min(size, count - start)])

    with torch.no_grad(), precision.autocast(amp, x.device):
        for n in {batch.shape[0], count % size or batch.shape[0]}:
            net(batch[:n])
        if floor.tail is not None:
            case.model(whole)
    return run


def _sizes(sizes: list[int], count: int) -> list[int]:
    """The sweep's sizes, those above ``count`` merged into one pass of ``count``."""
    return sorted({min(s, max(1, count)) for s in sizes})


def run_row(
    case: Case,
    x: torch.Tensor,
    row: Row,
    repeats: int,
    device: torch.device,
    *,
    more_for_short: bool = True,
    amp: str | None = None,
) -> dict[str, Any]:
    """Every timing of one row, interleaved; the row's dict for the JSON. esegeta's
    calls and the floor compute in ``amp``'s precision; the peers in the process's."""
    started = time.perf_counter()

    def explain(**extra: Any) -> ec.Explanation:
        return ec.explain(
            case.model, x, row.method, case.target, task=case.task, progress=False, amp=amp,
            **row.params, **extra,
        )  # fmt: skip

    first: list[ec.Explanation] = []
    passes.clear_plans()
    first_seconds = _once(lambda: first.append(explain(auto_batch=True)), device)
    plan = first[0].extras.get("pass_plan")
    if more_for_short:
        rounds = min(MOST_ROUNDS, math.ceil(SHORT_ROUNDS_SECONDS / max(first_seconds, 1e-3)))
        repeats = max(repeats, rounds)
    # auto_planned times the call with its plan settled: short work (layer replay's two
    # passes per call, a layout trial left to later calls) finishes its search over a
    # few calls, which a run's repeated jobs make anyway
    # (a search its work is too short to move on stays as it is: that is settled too)
    settle, settle_start, state = 0, time.perf_counter(), None
    while (
        passes._unfinished.get(case.model)
        and repr(passes._unfinished.get(case.model)) != state
        and settle < SETTLE_CALLS
        and time.perf_counter() - settle_start < SETTLE_SECONDS
    ):
        state = repr(passes._unfinished.get(case.model))
        first.append(explain(auto_batch=True))
        settle += 1
    runnable = {k: v for k, v in row.peers.items() if callable(v)}
    calls: dict[str, Callable[[], Any]] = {
        "default": explain,
        "auto": lambda: explain(auto_batch=True),
        **runnable,
    }
    best: dict[str, float] = {}
    timings: dict[str, int] = {}
    failed: dict[str, str] = {}
    tail = row.floor.tail is not None
    sizes = _sizes(
        case.tail_sizes if tail else case.sizes, row.floor.tail_passes if tail else row.floor.whole
    )
    layouts = x.shape[1] > 1 or tail  # channels-last differs from contiguous
    scored = case.task == "segmentation" and not tail
    floor: dict[tuple[int, bool], float] = {}
    variants = ["floor", "default", "auto", *runnable]
    # each round's timings after the first (whose floor sweeps): the paired ratios
    per_round: list[dict[str, float]] = []
    for r in range(repeats):
        shift = r % len(variants)
        this_round: dict[str, float] = {}
        if r > 0:
            per_round.append(this_round)
        for name in variants[shift:] + variants[:shift]:
            if name == "floor":
                keys = [(s, False) for s in sizes] if r == 0 else [min(floor, key=floor.get)]
                for size, cl in keys:
                    fn = _floor_run(case, x, row.floor, size, cl, amp)
                    this_round["floor"] = _once(fn, device)
                    floor[(size, cl)] = min(floor.get((size, cl), math.inf), this_round["floor"])
                if r > 0 and scored:  # the network's outputs alone, at the floor's size
                    fn = _floor_run(case, x, row.floor, *keys[0], amp, scores=False)
                    this_round["network"] = _once(fn, device)
                    best["network"] = min(best.get("network", math.inf), this_round["network"])
                if r == 0 and layouts:
                    size = min(floor, key=floor.get)[0]
                    fn = _floor_run(case, x, row.floor, size, True, amp)
                    floor[(size, True)] = _once(fn, device)
                continue
            if name in failed:
                continue
            if name in runnable and timings.get(name, 0) >= 2:
                # timed twice first: a peer's first call in the process may pay one-off
                # set-up (Captum's occlusion on the first row: 1.95 s, then 0.71 s)
                ours = max(best.get("default", 0.0), best.get("auto", 0.0))
                if best[name] >= SLOW_PEER * ours:
                    continue
            try:
                seconds = _once(calls[name], device)
            except Exception as exc:  # a peer that fails is recorded as such (ours raise)
                if name not in runnable:
                    raise
                failed[name] = f"not run: failed with {type(exc).__name__}: {exc}"[:300]
                continue
            finally:
                if name in runnable:
                    time.sleep(PEER_SETTLE)
            best[name] = min(best.get(name, math.inf), seconds)
            this_round[name] = seconds
            timings[name] = timings.get(name, 0) + 1
    floor_key = min(floor, key=floor.get)
    floor_best = floor[floor_key]
    # results unchanged: the planned call's map against the default's, seeded alike
    # (the same products, added in other passes: equal up to rounding)
    planned_map = explain(auto_batch=True, seed=0).attributions.float()
    plain_map = explain(seed=0).attributions.float()
    scale = float(plain_map.abs().max()) or 1.0
    difference = float((planned_map - plain_map).abs().max()) / scale
    out: dict[str, Any] = {
        "case": f"{case.label}, batch {x.shape[0]}",
        "method": row.method,
        "params": row.params,
        "passes": row.floor.passes,
        "floor_kind": (
            f"1 whole pass of {row.floor.whole} + {row.floor.tail_passes} inputs through "
            "the layers after the layer"
            if tail
            else f"{row.floor.whole} inputs through the whole model"
            + (", each scored (the target's winning logits summed)" if scored else "")
        ),
        "floor_seconds": {
            f"{s}{' channels_last' if cl else ''}": round(v, 4) for (s, cl), v in floor.items()
        },
        "floor_best": round(floor_best, 4),
        "floor_best_pass_size": floor_key[0],
        "floor_channels_last": floor_key[1],
        "default": round(best["default"], 4),
        "auto_first_call": round(first_seconds, 4),
        "auto_planned": round(best["auto"], 4),
        "plan": plan,
        "calls_to_settle": settle,
        "plan_settled": first[-1].extras.get("pass_plan"),
        "rounds": repeats,
        "auto_map_difference": float(f"{difference:.2g}"),
    }
    for name, peer in row.peers.items():
        out[f"peer {name}"] = round(best[name], 4) if name in best else failed.get(name, peer)
    out["peer_timings"] = {k: v for k, v in timings.items() if k in runnable}
    out["ratio_to_floor"] = {
        k: round(v / floor_best, 3)
        for k, v in out.items()
        if k in ("default", "auto_first_call", "auto_planned") or k.startswith("peer ")
        if isinstance(v, float)
    }
    out["paired_ratio_to_floor"] = _paired(per_round)
    if "network" in best:  # a segmentation: the same against the unscored passes
        out["network_best"] = round(best["network"], 4)
        out["ratio_to_network"] = {
            k: round(out[k] / best["network"], 3) for k in ("default", "auto_planned")
        }
        out["paired_ratio_to_network"] = _paired(per_round, "network")
    if row.note:
        out["note"] = row.note
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    return out


def _paired(per_round: list[dict[str, float]], to: str = "floor") -> dict[str, float]:
    """Per variant, the median over the rounds after the first of its time divided by
    the floor's (or ``to``'s) in the same round (at the floor's best size then). The
    best of each variant over the rounds (``ratio_to_floor``) is the issue's figure; on
    a shared machine whose speed drifts between rounds, and where the floor's best is
    the least of every size it swept (the luckiest of more timings than any call gets),
    the paired ratio is the steadier one."""
    names = {name for timings in per_round for name in timings} - {to}
    out = {}
    for name in sorted(names):
        ratios = [t[name] / t[to] for t in per_round if name in t and to in t]
        if ratios:
            out[name] = round(statistics.median(ratios), 3)
    return out


# --- output -------------------------------------------------------------------------------


def summarise(row: dict[str, Any], gpu: bool = False) -> dict[str, Any]:
    """Ratios of auto_planned to the floor, the default and each peer; the targets (on
    a GPU, the peers' are :data:`GPU_PEER_TARGETS`)."""
    auto, default = row["auto_planned"], row["default"]
    ratios: dict[str, Any] = {
        "auto/floor": round(auto / row["floor_best"], 3),
        "auto/default": round(auto / default, 3),
    }
    targets: dict[str, bool] = {
        "auto not slower than default": auto <= default * (1 + NOISE),
        "auto map equals default": row["auto_map_difference"] <= SAME_MAP,
    }
    paired = row.get("paired_ratio_to_floor", {}).get("auto")
    if paired is not None:
        ratios["auto/floor, paired"] = paired
    if not gpu:  # the floor's target is the CPU's (issue 19)
        targets[f"auto <= {FLOOR_TARGET}x floor"] = auto <= FLOOR_TARGET * row["floor_best"]
        if paired is not None:
            targets[f"auto <= {FLOOR_TARGET}x floor, paired"] = paired <= FLOOR_TARGET
    for key, value in row.items():
        if key.startswith("peer ") and isinstance(value, float):
            name = key[len("peer ") :]
            ratios[f"auto/{name}"] = round(auto / value, 3)
            times = GPU_PEER_TARGETS.get(name.split()[0], 1.0) if gpu else 1.0
            if times == 1.0:
                targets[f"default as fast as {name}"] = default <= value * (1 + NOISE)
                targets[f"auto as fast as {name}"] = auto <= value * (1 + NOISE)
            else:
                targets[f"auto {times:g}x as fast as {name}"] = auto * times <= value
    return {"case": row["case"], "method": row["method"], **ratios, "targets": targets}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (seconds, ratios to the floor and to the peers)."""
    lines = [
        "| method | case | passes | floor (size) | default | auto, first call | auto, planned "
        "| peers | planned / floor | paired | planned / default | planned / peer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        peer_cells, peer_ratios = [], []
        for key, value in row.items():
            if not key.startswith("peer ") or key == "peer_timings":
                continue
            name = key[len("peer ") :]
            if isinstance(value, float):
                peer_cells.append(f"{name} {value:.2f}")
                peer_ratios.append(f"{row['auto_planned'] / value:.2f}")
            else:
                reason = value if len(value) <= 80 else value[:77] + "..."
                peer_cells.append(f"{name}: {reason}")  # the JSON has it whole
        cl = ", CL" if row["floor_channels_last"] else ""
        paired = row.get("paired_ratio_to_floor", {}).get("auto")
        lines.append(
            f"| `{row['method']}` | {row['case']} | {row['passes']} "
            f"| {row['floor_best']:.2f} ({row['floor_best_pass_size']}{cl}) "
            f"| {row['default']:.2f} | {row['auto_first_call']:.2f} | {row['auto_planned']:.2f} "
            f"| {'; '.join(peer_cells) or '-'} "
            f"| {row['auto_planned'] / row['floor_best']:.2f} "
            f"| {paired if paired is not None else '-'} "
            f"| {row['auto_planned'] / row['default']:.2f} | {', '.join(peer_ratios) or '-'} |"
        )
    return "\n".join(lines)


def _warm_imports() -> None:
    """Import the libraries the rows use, so no timing pays a first import."""
    import captum.attr  # noqa: F401
    import lime.lime_image  # noqa: F401
    import monai.visualize  # noqa: F401
    import pytorch_grad_cam  # noqa: F401
    import skimage.segmentation  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import torchray.attribution.rise  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the first GPU")
    parser.add_argument("--smoke", action="store_true", help="every row and peer, tiny sizes")
    parser.add_argument("--cases", default="2d,3d,unet", help="comma-separated: 2d,3d,unet")
    parser.add_argument("--only", default="", help="comma-separated method names")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per row")
    parser.add_argument("--list", action="store_true", help="print the rows and passes, exit")
    parser.add_argument("--quick", action="store_true", help="the 2D case only (--cases 2d)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--amp",
        default=None,
        choices=precision.PRECISIONS,
        help="explain()'s amp (and the floor's)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    installed = check_coverage()
    scale = SMOKE if args.smoke else FULL
    repeats = args.repeats or scale.repeats
    keys = ["2d"] if args.quick else [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = set(keys) - set(PLAN)
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    if unknown or only - set(BUILDERS):
        sys.exit(f"unknown cases {sorted(unknown)} or methods {sorted(only - set(BUILDERS))}")
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", 0)
        if not args.smoke:
            scale = replace(scale, **{k: getattr(scale, k) + v for k, v in GPU_SIZES.items()})
    _warm_imports()
    cases = build_cases(scale, keys, device)
    jobs = [
        (case, case.x[:batch], BUILDERS[method](case, case.x[:batch]))
        for case in cases
        for method, batches in PLAN[case.key]
        if not only or method in only
        for batch in batches
    ]
    if args.list:
        for case, x, row in jobs:
            print(f"{case.label}, batch {x.shape[0]}: {row.method} {row.params} "
                  f"passes={row.floor.passes} peers={list(row.peers)}")  # fmt: skip
        return
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for case, x, row in jobs:
        rows.append(
            run_row(case, x, row, repeats, device, more_for_short=not args.repeats, amp=args.amp)
        )
        done = rows[-1]
        print(
            f"[{time.perf_counter() - started:7.1f} s] {done['case']}: {done['method']} "
            f"floor {done['floor_best']:.3f} default {done['default']:.3f} "
            f"auto {done['auto_planned']:.3f} ({done['wall_seconds']} s)",
            file=sys.stderr,
            flush=True,
        )
        if args.out:  # a run cut short (a lent GPU's time limit) keeps its finished rows
            _write(args.out, _result(args, rows, repeats, device, started, installed, len(jobs)))
    result = _result(args, rows, repeats, device, started, installed, len(jobs))
    print(json.dumps(result, indent=2, default=str))
    print()
    print(markdown(rows))
    if args.out:
        _write(args.out, result)


def _result(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    repeats: int,
    device: torch.device,
    started: float,
    installed: list[str],
    planned: int,
) -> dict[str, Any]:
    """The results JSON: the machine, the settings, the rows and their summary;
    ``rows_planned`` tells a run cut short (fewer ``rows``) from a whole one."""
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "scale": "smoke" if args.smoke else "full",
        "repeats": repeats,
        "noise_margin": NOISE,
        "heap": "held during explain() and the floor's passes"
        if heap.enabled() and device.type == "cpu"
        else "not held (glibc's defaults)",
        "seconds": round(time.perf_counter() - started, 1),
        "perturbation_methods": installed,
        "skipped": SKIPPED,
        "rows_planned": planned,
        "rows": rows,
        "amp": args.amp,
        "summary": [summarise(r, device.type == "cuda") for r in rows],
    }


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

"""The model zoo: every installed method on the architectures people actually use.

The conformance suite runs on tiny models written for it; users bring torchvision,
timm, MONAI and Hugging Face models, with reused and in-place activations, dict and
object outputs, GELU and SiLU, layer norms, skip connections and token layouts. The
zoo builds such models in code with random weights (no downloads), runs a method on
each with small inputs and batches of two, and classifies every call:

- ``ok``: a finite map of the right shape, and the model left exactly as it was found
  (modes, hooks, ``requires_grad``, weights and every module's attributes);
- ``not_applicable``: refused before running for a reason the method's capabilities
  state (:class:`~esegeta_core.NotApplicableError`, an input rank it does not claim);
- ``refused``: refused before running with another esegeta error (counted against);
- ``failed``: anything else: a backend exception, a bad map, a changed model.

torchvision, timm, MONAI and transformers are imported only when a model is built;
they are test dependencies, not dependencies of esegeta.

    from esegeta_core.testing.zoo import ZOO, run_zoo, summarize
    results = run_zoo([m for m in ZOO if m.fast])
    summarize(results)["success_rate"]
"""

from __future__ import annotations

import logging
import pickle
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from esegeta_core.api import explain
from esegeta_core.errors import (
    EsegetaError,
    MethodFailedError,
    NotApplicableError,
    UnsupportedRankError,
)
from esegeta_core.layers import auto_layer, resolve_layer
from esegeta_core.model_state import ModelState, count_hooks
from esegeta_core.plugin.manager import get_registry
from esegeta_core.targets import score_model
from esegeta_core.toolkit import recording

log = logging.getLogger(__name__)

Status = Literal["ok", "not_applicable", "refused", "failed"]


@dataclass(frozen=True)
class ZooModel:
    """A real architecture, built in code with random weights."""

    name: str
    source: Literal["torchvision", "timm", "monai", "huggingface"]
    task: Literal["classification", "segmentation"]
    shape: tuple[int, ...]
    """Input batch shape ``(B, C, *spatial)``."""
    build: Callable[[], nn.Module]
    fast: bool = False
    """Part of the subset CI runs (small enough for every method in seconds)."""
    note: str = ""

    @property
    def rank(self) -> int:
        return len(self.shape) - 2

    def input(self, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(self.shape, generator=gen)


def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return build


def _tv_seg(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models.segmentation, name)(
            weights=None, weights_backbone=None, **kwargs
        )

    return build


def _r3d() -> nn.Module:
    import torchvision

    return torchvision.models.video.r3d_18(weights=None, num_classes=10)


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)

    return build


def _monai(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import monai.networks.nets as nets

        return getattr(nets, name)(**kwargs)

    return build


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        num_labels=5,
    )
    return ViTForImageClassification(config)


def _hf_segformer() -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_labels=3,
        hidden_sizes=[16, 32, 64, 128],
        decoder_hidden_size=64,
        depths=[1, 1, 1, 1],
    )
    return SegformerForSemanticSegmentation(config)


ZOO: list[ZooModel] = [
    ZooModel("torchvision.resnet50", "torchvision", "classification", (2, 3, 64, 64),
             _tv("resnet50", num_classes=10), note="Bottleneck reuses one in-place ReLU"),
    ZooModel("torchvision.resnet18", "torchvision", "classification", (2, 3, 64, 64),
             _tv("resnet18", num_classes=10), fast=True, note="BasicBlock reuses its ReLU"),
    ZooModel("torchvision.densenet121", "torchvision", "classification", (2, 3, 64, 64),
             _tv("densenet121", num_classes=10), note="functional F.relu, norm-relu-conv"),
    ZooModel("torchvision.vgg11", "torchvision", "classification", (2, 3, 64, 64),
             _tv("vgg11", num_classes=10), note="in-place ReLUs"),
    ZooModel("torchvision.mobilenet_v3_small", "torchvision", "classification",
             (2, 3, 64, 64), _tv("mobilenet_v3_small", num_classes=10), fast=True,
             note="Hardswish, squeeze-excitation gates"),
    ZooModel("torchvision.efficientnet_b0", "torchvision", "classification", (2, 3, 64, 64),
             _tv("efficientnet_b0", num_classes=10), note="SiLU, stochastic depth"),
    ZooModel("torchvision.convnext_tiny", "torchvision", "classification", (2, 3, 64, 64),
             _tv("convnext_tiny", num_classes=10), note="LayerNorm2d, GELU, layer scale"),
    ZooModel("torchvision.swin_t", "torchvision", "classification", (2, 3, 64, 64),
             _tv("swin_t", num_classes=10), note="channels-last stages (B, H, W, C)"),
    ZooModel("torchvision.fcn_resnet50", "torchvision", "segmentation", (2, 3, 64, 64),
             _tv_seg("fcn_resnet50", num_classes=3, aux_loss=True),
             note="dict output {'out', 'aux'}"),
    ZooModel("torchvision.lraspp_mobilenet_v3_large", "torchvision", "segmentation",
             (2, 3, 64, 64), _tv_seg("lraspp_mobilenet_v3_large", num_classes=3), fast=True,
             note="dict output {'out'}"),
    ZooModel("torchvision.r3d_18", "torchvision", "classification", (2, 3, 16, 32, 32),
             _r3d, note="3D video network"),
    ZooModel("timm.vit_tiny_patch16_224", "timm", "classification", (2, 3, 64, 64),
             _timm("vit_tiny_patch16_224", img_size=64, num_classes=10),
             note="tokens with a class token"),
    ZooModel("timm.vit_tiny_depth2", "timm", "classification", (2, 3, 32, 32),
             _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                   num_classes=5), fast=True, note="two blocks"),
    ZooModel("timm.resnet18", "timm", "classification", (2, 3, 64, 64),
             _timm("resnet18", num_classes=10)),
    ZooModel("monai.unet_2d", "monai", "segmentation", (2, 1, 64, 64),
             _monai("UNet", spatial_dims=2, in_channels=1, out_channels=3,
                    channels=(8, 16, 32), strides=(2, 2), num_res_units=2),
             note="PReLU, InstanceNorm, residual units"),
    ZooModel("monai.unet_3d", "monai", "segmentation", (2, 1, 32, 32, 32),
             _monai("UNet", spatial_dims=3, in_channels=1, out_channels=3,
                    channels=(8, 16, 32), strides=(2, 2), num_res_units=2), fast=True),
    ZooModel("monai.segresnet", "monai", "segmentation", (2, 1, 32, 32, 32),
             _monai("SegResNet", spatial_dims=3, init_filters=8, in_channels=1,
                    out_channels=3), note="GroupNorm, reused ReLUs"),
    ZooModel("monai.densenet121_3d", "monai", "classification", (2, 1, 32, 32, 32),
             _monai("DenseNet121", spatial_dims=3, in_channels=1, out_channels=2)),
    ZooModel("monai.unetr", "monai", "segmentation", (2, 1, 32, 32, 32),
             _monai("UNETR", in_channels=1, out_channels=3, img_size=32, feature_size=8,
                    hidden_size=96, mlp_dim=192, num_heads=4, spatial_dims=3),
             note="3D token grid"),
    ZooModel("monai.basic_unetplusplus", "monai", "segmentation", (2, 1, 32, 32),
             _monai("BasicUNetPlusPlus", spatial_dims=2, in_channels=1, out_channels=3,
                    features=(8, 8, 16, 32, 64, 8)), note="list output"),
    ZooModel("huggingface.vit", "huggingface", "classification", (2, 3, 32, 32), _hf_vit,
             fast=True, note="ImageClassifierOutput.logits"),
    ZooModel("huggingface.segformer", "huggingface", "segmentation", (2, 3, 64, 64),
             _hf_segformer, note="SemanticSegmenterOutput.logits at 1/4 resolution"),
]  # fmt: skip
"""The architectures; ``fast`` ones form the subset that runs in CI."""

_NEURON = {"neuron_selector": (1,)}  # run_zoo puts an active neuron in its place
_PATH = {"n_steps": 4}
_GRID = {"grid_cell": 16}

ZOO_PARAMS: dict[str, dict[str, Any]] = {
    "captum.integrated_gradients": _PATH,
    "captum.gradient_shap": {"n_samples": 2},
    "captum.feature_ablation": _GRID,
    "captum.feature_permutation": _GRID,
    "captum.occlusion": {"window": 16, "strides": 16},
    "captum.shapley_value_sampling": {**_GRID, "n_samples": 2},
    # alpha=0: the random models' scores change less than the default Lasso penalty lets through
    "captum.lime": {**_GRID, "n_samples": 32, "alpha": 0.0},
    "captum.kernel_shap": {**_GRID, "n_samples": 16},
    "captum.layer_conductance": _PATH,
    "captum.internal_influence": _PATH,
    "captum.layer_integrated_gradients": _PATH,
    "captum.layer_gradient_shap": {"n_samples": 2},
    "captum.neuron_gradient": _NEURON,
    "captum.neuron_integrated_gradients": {**_NEURON, **_PATH},
    "captum.neuron_conductance": {**_NEURON, **_PATH},
    "captum.neuron_deep_lift": _NEURON,
    "captum.neuron_deep_lift_shap": _NEURON,
    "captum.neuron_gradient_shap": {**_NEURON, "n_samples": 2},
    "captum.neuron_guided_backprop": _NEURON,
    "captum.neuron_deconvolution": _NEURON,
    "captum.neuron_feature_ablation": {**_NEURON, **_GRID},
    "cnnvis.integrated_gradients": {"n_steps": 4},
    "cnnvis.smoothgrad": {"noise_samples": 2},
    "cnnvis.vargrad": {"noise_samples": 2},
    "cnnvis.layer_visualization": {"steps": 2},
    "cnnvis.deep_dream": {"steps": 2},
    "cnnvis.inverted_representation": {"steps": 2},
    "cnnvis.rise": {"num_masks": 16, "batch_size": 16, "cells": 4},
    "torchray.rise": {"num_masks": 16, "batch_size": 16},
    "torchray.extremal_perturbation": {"max_iter": 2, "areas": [0.1]},
    # 24: SLIC on the zoo's RGB noise puts items in one segment at 8 or 16 (refused)
    "lime.lime": {"num_samples": 16, "n_segments": 24},
    "lucent.feature_visualization": {"steps": 2},
    "zennit.lrp": {},
}
"""Cheap settings per method (fewer steps, samples and windows); layers are ``"auto"``."""


@dataclass
class ZooResult:
    """One (model, method) call."""

    model: str
    method: str
    status: Status
    reason: str = ""
    seconds: float = 0.0
    error: str = ""
    """The exception's type for refusals and failures."""
    warning: str = ""
    """For an ok call: the warnings the call returned with its map (an item's map zero
    everywhere, or one value everywhere), else ""."""


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What must not change: per module its mode and attribute names, hooks,
    ``requires_grad``, gradients, weights and the pickled size."""
    return {
        "modes": [m.training for m in model.modules()],
        "attributes": [sorted(m.__dict__) for m in model.modules()],
        "children": [list(m._modules) for m in model.modules()],
        "hooks": count_hooks(model),
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "pickled": _pickled_size(model),
    }


def _pickled_size(model: nn.Module) -> int:
    try:
        return len(pickle.dumps(model))
    except Exception:  # noqa: BLE001 - some models hold unpicklable callables
        return -1


def fingerprint_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Which parts of two :func:`model_fingerprint` results differ."""
    changed = [k for k in before if k not in ("state",) and before[k] != after[k]]
    if before["state"].keys() != after["state"].keys() or any(
        not torch.equal(v, after["state"][k]) for k, v in before["state"].items()
    ):
        changed.append("state")
    return changed


def params_for(method: str, extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The zoo's parameters for ``method``: cheap counts, ``"auto"`` for required layers."""
    cls = get_registry().get(method)
    params = dict(ZOO_PARAMS.get(method, {}))
    params.update((extra or {}).get(method, {}))
    for name in cls.Params.layer_fields():
        info = cls.Params.model_fields[name]
        if name not in params and info.is_required():
            is_list = "list" in str(info.annotation).lower()
            params[name] = ["auto"] if is_list else "auto"
    return params


def run_zoo_case(
    spec: ZooModel,
    method: str,
    model: nn.Module,
    x: torch.Tensor,
    *,
    params: dict[str, Any] | None = None,
) -> ZooResult:
    """Explain ``model`` (built from ``spec``) on ``x`` with ``method``; classify the call."""
    params = params_for(method) if params is None else params
    before = model_fingerprint(model)
    start = time.perf_counter()
    try:
        e = explain(model, x, method, task=spec.task, seed=0, progress=False, **params)
    except (NotApplicableError, UnsupportedRankError) as exc:
        return ZooResult(spec.name, method, "not_applicable", _line(exc), _since(start),
                         type(exc).__name__)  # fmt: skip
    except MethodFailedError as exc:
        return ZooResult(spec.name, method, "failed", _line(exc), _since(start),
                         type(exc).__name__)  # fmt: skip
    except EsegetaError as exc:
        return ZooResult(spec.name, method, "refused", _line(exc), _since(start),
                         type(exc).__name__)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a raw exception escaping explain is a bug
        log.debug("zoo %s %s:\n%s", spec.name, method, traceback.format_exc())
        return ZooResult(spec.name, method, "failed", _line(exc), _since(start),
                         type(exc).__name__)  # fmt: skip
    seconds = _since(start)
    changed = fingerprint_changes(before, model_fingerprint(model))
    if changed:
        return ZooResult(spec.name, method, "failed",
                         f"the model was changed: {', '.join(changed)}", seconds,
                         "ModelChanged")  # fmt: skip
    a = e.attributions
    problem = _bad_map(a, x, e.output)
    if problem:
        return ZooResult(spec.name, method, "failed", problem, seconds, "BadMap")
    warning = " ".join(e.extras.get("warnings", []))
    return ZooResult(spec.name, method, "ok", "", seconds, warning=_line(warning))


def _bad_map(a: torch.Tensor, x: torch.Tensor, output: str) -> str:
    if a.numel() == 0:
        return f"empty map {tuple(a.shape)}"
    if a.is_floating_point() and not bool(torch.isfinite(a).all()):
        return "non-finite map"
    if output == "input" and tuple(a.shape[2:]) != tuple(x.shape[2:]):
        return f"map {tuple(a.shape)} does not match the input {tuple(x.shape)}"
    if output != "image" and a.shape[0] != x.shape[0]:
        return f"map {tuple(a.shape)} has the wrong batch size"
    return ""


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:600]


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def active_neuron(spec: ZooModel, model: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """A neuron the neuron methods can explain on ``x``: at the spatial centre of the
    layer ``layer="auto"`` picks, the channel whose smallest value over the items is the
    largest. Random weights leave many channels off (0 after their ReLU) there, and a
    neuron that is off has a zero map, which would test nothing. None when the layer
    gives no ``(B, C, ...)`` tensor."""
    scored = score_model(model, spec.task, None, None)
    state = ModelState.capture(model)  # a library may install its hooks on a first call
    try:
        path = auto_layer(scored, x[:1], method="zoo")  # a forward/backward probe
        with torch.no_grad(), recording([resolve_layer(scored, path)]) as records:
            scored(x)
    finally:
        state.restore()
    value = records[0][-1] if records[0] else None
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] != x.shape[0]:
        return None
    centre = tuple(n // 2 for n in value.shape[2:])
    column = value[(slice(None), slice(None), *centre)].float()
    return (int(column.min(dim=0).values.argmax()),)


def run_zoo(
    models: Iterable[ZooModel] = ZOO,
    methods: Sequence[str] | None = None,
    *,
    params: dict[str, dict[str, Any]] | None = None,
    on_result: Callable[[ZooResult], None] | None = None,
) -> list[ZooResult]:
    """Every method (default: every installed one) on every model; one result each."""
    names = sorted(get_registry().methods) if methods is None else list(methods)
    results = []
    for spec in models:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = spec.build().eval()
        x = spec.input()
        neuron: tuple[int, ...] | None = None
        for method in names:
            chosen = params_for(method, params)
            # the zoo's own neuron, not one the caller gave (found once, when first needed)
            if "neuron_selector" in chosen and "neuron_selector" not in (params or {}).get(
                method, {}
            ):
                neuron = neuron or active_neuron(spec, model, x)
                if neuron is not None:
                    chosen["neuron_selector"] = neuron
            result = run_zoo_case(spec, method, model, x, params=chosen)
            results.append(result)
            if on_result is not None:
                on_result(result)
        del model
    return results


@dataclass
class ZooSummary:
    """Totals of a zoo run."""

    calls: int
    by_status: dict[str, int]
    applicable: int
    ok: int
    success_rate: float
    models: list[str]
    warned: int = 0
    """Ok calls whose map came back with a warning (zero or one value everywhere)."""
    refusals: list[dict[str, str]] = field(default_factory=list)
    not_applicable: list[dict[str, str]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def summarize(results: Sequence[ZooResult]) -> ZooSummary:
    """Totals, the success rate over applicable calls, and every non-ok call."""
    by_status = Counter(r.status for r in results)
    applicable = len(results) - by_status["not_applicable"]
    ok = by_status["ok"]

    def rows(status: str) -> list[dict[str, str]]:
        return [
            {"model": r.model, "method": r.method, "reason": r.reason}
            for r in results
            if r.status == status
        ]

    return ZooSummary(
        calls=len(results),
        by_status=dict(by_status),
        applicable=applicable,
        ok=ok,
        success_rate=round(ok / applicable, 4) if applicable else 1.0,
        models=sorted({r.model for r in results}),
        warned=sum(1 for r in results if r.status == "ok" and r.warning),
        refusals=rows("refused"),
        not_applicable=rows("not_applicable"),
        failures=rows("failed"),
    )


def as_records(results: Sequence[ZooResult]) -> list[dict[str, Any]]:
    """The results as plain dicts (for JSON)."""
    return [asdict(r) for r in results]

"""The CAM family: agreement with pytorch-grad-cam, CAM by hand, N-D and batches,
create_graph, several layers, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esegeta_core import InvalidParamsError, NotApplicableError, explain
from esegeta_core.testing import tiny_input, tiny_model

CLS = "classification"
TARGETS = [1, 3]
ALL_CAMS = [
    "cnnvis.cam",
    "cnnvis.grad_cam",
    "cnnvis.grad_cam_pp",
    "cnnvis.guided_grad_cam",
    "cnnvis.score_cam",
    "cnnvis.hires_cam",
    "cnnvis.xgrad_cam",
    "cnnvis.layer_cam",
    "cnnvis.eigen_cam",
    "cnnvis.ablation_cam",
]
GRADIENT_CAMS = [
    "cnnvis.cam",
    "cnnvis.grad_cam",
    "cnnvis.grad_cam_pp",
    "cnnvis.guided_grad_cam",
    "cnnvis.hires_cam",
    "cnnvis.xgrad_cam",
    "cnnvis.layer_cam",
]


def _model(rank: int = 2, dead: bool = False) -> nn.Module:
    """The tiny classifier; with ``dead``, channel 0 of ``features.relu2`` is all zero."""
    model = tiny_model(CLS, rank)
    if dead:
        with torch.no_grad():
            model.features.conv2.weight[0] = 0
            model.features.conv2.bias[0] = -1
    return model


def _ours(method: str, rank: int = 2, dead: bool = False, **params: Any) -> torch.Tensor:
    model = _model(rank, dead)
    x = tiny_input(CLS, rank)
    params.setdefault("layer", "features.conv2")
    return explain(model, x, method, target=TARGETS, **params).attributions


def _reference(
    cam_class: str, layer: str, rank: int = 2, dead: bool = False, **kwargs: Any
) -> np.ndarray:
    """pytorch-grad-cam's map at layer resolution after its ReLU, before its scaling:
    its own ``get_cam_image`` on its own captured activations and gradients."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _model(rank, dead)
    x = tiny_input(CLS, rank)
    module = model.get_submodule(layer)
    cam = getattr(pytorch_grad_cam, cam_class)(model, [module], **kwargs)
    targets = [ClassifierOutputTarget(t) for t in TARGETS]
    try:
        outputs = cam.activations_and_grads(x)
        if cam.uses_gradients:
            sum(t(o) for t, o in zip(targets, outputs)).backward(retain_graph=True)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
        image = cam.get_cam_image(x, module, targets, acts, grads, eigen_smooth=False)
    finally:
        cam.activations_and_grads.release()
    return np.maximum(image, 0)


def _agree(ours: torch.Tensor, ref: np.ndarray) -> None:
    """Same maps: max abs diff < 1e-4 relative to the map's scale, and correlation > 0.99."""
    ours = ours.detach().squeeze(1)
    ref_t = torch.as_tensor(np.asarray(ref), dtype=ours.dtype)
    assert ours.shape == ref_t.shape
    assert ref_t.abs().max() > 0, "degenerate (all-zero) maps"
    for a, b in zip(ours, ref_t):
        scale = b.abs().max().item()
        if scale == 0:  # the ReLU removed everything: so must ours
            assert a.abs().max() == 0
            continue
        diff = (a - b).abs().max().item()
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert diff < 1e-4 * scale and corr > 0.99, (diff, scale, corr)


@pytest.mark.parametrize(
    ("method", "reference", "extra"),
    [
        ("cnnvis.grad_cam", "GradCAM", {}),
        ("cnnvis.grad_cam_pp", "GradCAMPlusPlus", {}),
        ("cnnvis.xgrad_cam", "XGradCAM", {}),
        ("cnnvis.hires_cam", "HiResCAM", {}),
        ("cnnvis.layer_cam", "LayerCAM", {}),
        ("cnnvis.score_cam", "ScoreCAM", {"batch_size": 3}),
    ],
)
def test_agrees_with_pytorch_grad_cam(method: str, reference: str, extra: dict) -> None:
    for layer in ("features.conv2", "features.conv1"):
        ours = _ours(method, layer=layer, upsample=False, **extra)
        _agree(ours, _reference(reference, layer))


def test_grad_cam_3d_agrees_with_pytorch_grad_cam() -> None:
    ours = _ours("cnnvis.grad_cam", rank=3, upsample=False)
    _agree(ours, _reference("GradCAM", "features.conv2", rank=3))


def test_ablation_cam_agrees_with_pytorch_grad_cam() -> None:
    # on a ReLU output pytorch-grad-cam ablates to 0, as the paper (and we) do; the dead
    # channel exercises our shortcut (ablating an all-zero channel changes nothing)
    for dead in (False, True):
        ours = _ours(
            "cnnvis.ablation_cam", layer="features.relu2", upsample=False, batch_size=5, dead=dead
        )
        _agree(ours, _reference("AblationCAM", "features.relu2", batch_size=5, dead=dead))


def test_score_cam_shortcut_for_dead_channels_agrees_with_pytorch_grad_cam() -> None:
    # an all-zero channel masks the input to 0: we run that forward once for all of them
    ours = _ours("cnnvis.score_cam", layer="features.relu2", upsample=False, dead=True)
    _agree(ours, _reference("ScoreCAM", "features.relu2", dead=True))


def test_eigen_cam_agrees_with_pytorch_grad_cam_up_to_the_svd_sign() -> None:
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model = tiny_model(CLS, 2)
    x = tiny_input(CLS, 2)
    acts = model.features(x).detach()
    raw = _ours("cnnvis.eigen_cam", layer="features", upsample=False, relu=False).squeeze(1)
    ref = torch.as_tensor(get_2d_projection(acts.numpy()))
    for a, b, act in zip(raw, ref, acts):
        sign = 1.0 if (a - b).abs().max() < (a + b).abs().max() else -1.0
        torch.testing.assert_close(a, sign * b, atol=1e-4, rtol=1e-4)
        # our sign: the map correlates positively with the summed activation
        total = act.sum(0)
        assert float(((total - total.mean()) * a).sum()) >= 0
    relu = _ours("cnnvis.eigen_cam", layer="features", upsample=False).squeeze(1)
    torch.testing.assert_close(relu, raw.clamp(min=0))
    # no target dependence
    other = explain(model, x, "cnnvis.eigen_cam", target=[0, 0], layer="features")
    torch.testing.assert_close(other.attributions, _ours("cnnvis.eigen_cam", layer="features"))


def test_cam_equals_a_hand_computation() -> None:
    model = tiny_model(CLS, 2)
    x = tiny_input(CLS, 2)
    acts = model.features(x).detach()
    weights = model.fc.weight.detach()[TARGETS]
    hand = torch.einsum("bk,bkhw->bhw", weights, acts).clamp(min=0)
    found = _ours("cnnvis.cam", layer="features", upsample=False)
    named = _ours("cnnvis.cam", layer="features", fc_layer="fc", upsample=False)
    torch.testing.assert_close(found.squeeze(1), hand)
    torch.testing.assert_close(named, found)
    with pytest.raises(InvalidParamsError, match="fc_layer"):
        _ours("cnnvis.cam", layer="features", fc_layer="features.conv1")


@pytest.mark.parametrize("method", ALL_CAMS)
def test_3d_batch_equals_item_at_a_time(method: str) -> None:
    model = tiny_model(CLS, 3)
    x = tiny_input(CLS, 3)
    extra = {"batch_size": 5} if method in ("cnnvis.score_cam", "cnnvis.ablation_cam") else {}
    batch = explain(model, x, method, target=TARGETS, layer="features.conv2", **extra)
    a = batch.attributions
    assert a.shape == ((2, 3, 8, 8, 8) if batch.output == "input" else (2, 1, 8, 8, 8))
    assert bool(torch.isfinite(a).all()) and a.abs().max() > 0
    for i, t in enumerate(TARGETS):
        one = explain(model, x[i : i + 1], method, target=t, layer="features.conv2", **extra)
        torch.testing.assert_close(one.attributions[0], a[i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_create_graph_reaches_the_parameters(method: str) -> None:
    model = tiny_model(CLS, 2)
    x = tiny_input(CLS, 2)
    e = explain(model, x, method, target=TARGETS, layer="features.conv2", create_graph=True)
    assert e.attributions.requires_grad
    (e.attributions**2).sum().backward()
    # fc comes after the layer: only reachable through the (create_graph) gradients or,
    # for CAM, through its weights; conv1 comes before: through activations and resize
    for p in (model.fc.weight, model.features.conv1.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0, method
    plain = explain(model, x, method, target=TARGETS, layer="features.conv2")
    assert not plain.attributions.requires_grad
    torch.testing.assert_close(plain.attributions, e.attributions.detach())


def test_several_layers_give_one_map_per_layer() -> None:
    layers = ["features.conv1", "features.conv2"]
    both = _ours("cnnvis.grad_cam", layer=layers)
    assert both.shape == (2, 2, 16, 16)
    for i, layer in enumerate(layers):
        torch.testing.assert_close(both[:, i : i + 1], _ours("cnnvis.grad_cam", layer=layer))
    with pytest.raises(InvalidParamsError, match="resolutions"):
        _ours("cnnvis.grad_cam", layer=layers, upsample=False)
    with pytest.raises(InvalidParamsError):
        _ours("cnnvis.grad_cam", layer=[])


def test_upsample_and_relu_options() -> None:
    low = _ours("cnnvis.grad_cam", upsample=False, relu=False)
    assert low.shape == (2, 1, 8, 8) and low.min() < 0
    high = _ours("cnnvis.grad_cam")
    size = (16, 16)
    expected = F.interpolate(low.clamp(min=0), size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(high, expected)


def test_score_cam_does_not_depend_on_its_batch_size() -> None:
    torch.testing.assert_close(
        _ours("cnnvis.score_cam", batch_size=1), _ours("cnnvis.score_cam", batch_size=64)
    )


def test_guided_grad_cam_is_guided_backprop_times_grad_cam() -> None:
    from esegeta_cnnvis.relu_rules import relu_rule

    model = tiny_model(CLS, 2)
    x = tiny_input(CLS, 2).requires_grad_(True)
    with relu_rule(model, "guided", x, "test"):
        model(x)[[0, 1], TARGETS].sum().backward()
    expected = x.grad * _ours("cnnvis.grad_cam")
    torch.testing.assert_close(_ours("cnnvis.guided_grad_cam"), expected)


class _FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_errors_are_clear() -> None:
    x = tiny_input(CLS, 2)
    # a functional ReLU gets the guided rule (a module of its own for the call)
    functional = explain(_FunctionalRelu(), x, "cnnvis.guided_grad_cam", target=0, layer="conv")
    assert torch.isfinite(functional.attributions).all()
    linear = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 2))  # fmt: skip
    with pytest.raises(NotApplicableError, match="plain gradient"):
        explain(linear, x, "cnnvis.guided_grad_cam", target=0, layer="0")
    with pytest.raises(InvalidParamsError, match=r"no 2D spatial layout.*convolutional layer"):
        _ours("cnnvis.grad_cam", layer="fc")
    with pytest.raises(InvalidParamsError, match="batch_size"):
        _ours("cnnvis.score_cam", batch_size=0)

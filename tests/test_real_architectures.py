"""The core on real architectures (torchvision, timm, MONAI; random weights, built in
code): layer="auto", layer layouts (tokens, channels-last), and a prepared model that
computes exactly what the model computes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from esegeta_core import InvalidParamsError, NotApplicableError, explain
from esegeta_core.layers import auto_layer
from esegeta_core.layouts import Layout, infer_layout, parse_reshape
from esegeta_core.preparation import prepared
from esegeta_core.targets import score_model
from esegeta_core.testing.zoo import ZOO, fingerprint_changes, model_fingerprint

tv = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def _zoo(name: str) -> tuple[nn.Module, torch.Tensor, str]:
    spec = next(m for m in ZOO if m.name == name)
    torch.manual_seed(0)
    return spec.build().eval(), spec.input(), spec.task


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5
    ).eval()


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("torchvision.resnet18", "layer4"),
        ("torchvision.mobilenet_v3_small", "features"),
        ("torchvision.lraspp_mobilenet_v3_large", "classifier.cbr"),
        ("timm.vit_tiny_depth2", "blocks.0"),
        ("huggingface.vit", "vit.layers.0"),
    ],
)
def test_auto_layer_picks_the_last_block(name: str, layer: str) -> None:
    if name.startswith("huggingface"):
        pytest.importorskip("transformers")
    model, x, task = _zoo(name)
    assert auto_layer(score_model(model, task, None, None), x) == layer


def test_auto_layer_skips_a_segmentation_head_and_an_unused_branch() -> None:
    model = tv.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=True
    ).eval()
    x = torch.rand(1, 3, 32, 32)
    # not the classifier head (3 channels = the classes), not the auxiliary branch
    assert auto_layer(score_model(model, "segmentation", None, None), x) == "backbone.layer4"


def test_auto_layer_is_recorded() -> None:
    model, x, _ = _zoo("torchvision.resnet18")
    e = explain(model, x, "captum.layer_grad_cam", 0)
    assert e.params.layer == "layer4"
    assert e.extras["layer_auto"] == {"layer": "layer4"}


def test_token_layout_with_a_class_token() -> None:
    model = _vit()
    x = torch.rand(2, 3, 32, 32)
    e = explain(model, x, "captum.layer_grad_cam", 1, layer="blocks.1")
    assert e.extras["layouts"]["blocks.1"]["kind"] == "tokens"
    assert e.extras["layouts"]["blocks.1"]["extra_tokens"] == 1
    assert e.extras["layouts"]["blocks.1"]["reshape"] == "tokens:1:4x4"  # what was used
    assert tuple(e.attributions.shape) == (2, 1, 4, 4)
    given = explain(model, x, "captum.layer_grad_cam", 1, layer="blocks.1", reshape="tokens:1:4x4")
    assert torch.allclose(given.attributions, e.attributions)


@pytest.mark.parametrize("layer", ["blocks.1", "blocks.1.norm2"])
def test_the_last_blocks_output_warns_why_its_map_is_zero(layer: str) -> None:
    """pytorch-grad-cam's norm1/norm2 question: after the last attention the score reads
    only the class token, so the patch tokens there get no gradient."""
    model = _vit()
    e = explain(model, torch.rand(2, 3, 32, 32), "cnnvis.grad_cam", 1, layer=layer)
    assert not e.attributions.any()
    (warning,) = e.extras["warnings"]
    assert "zero everywhere" in warning and "layer='auto'" in warning and "norm1" in warning
    auto = explain(model, torch.rand(2, 3, 32, 32), "cnnvis.grad_cam", 1)
    assert auto.params.layer == "blocks.0" and auto.attributions.any()
    assert "warnings" not in auto.extras


def test_grad_cam_on_a_vit_equals_pytorch_grad_cam_with_a_hand_written_reshape() -> None:
    gradcam = pytest.importorskip("pytorch_grad_cam")
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model = _vit()
    x = torch.rand(2, 3, 32, 32)

    def reshape(t: torch.Tensor) -> torch.Tensor:  # what their users write by hand
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cam = gradcam.GradCAM(model, [model.blocks[-1].norm1], reshape_transform=reshape)
        theirs = torch.as_tensor(cam(x, [targets.ClassifierOutputTarget(2)] * 2))
    ours = explain(model, x, "cnnvis.grad_cam", 2, layer="blocks.1.norm1").attributions[:, 0]
    flat = ours.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    ours = ((flat - lo) / (hi - lo + 1e-7)).view_as(ours)
    for a, b in zip(ours, theirs):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten().float()]))[0, 1]
        assert corr > 0.99


def test_channels_last_swin_stage_is_read_channels_last() -> None:
    model = tv.models.swin_t(num_classes=5).eval()
    x = torch.rand(1, 3, 64, 64)
    e = explain(model, x, "cnnvis.grad_cam", 0, layer="features.7")
    assert e.extras["layouts"]["features.7"]["kind"] == "channels_last"
    assert e.extras["layouts"]["features.7"]["reshape"] == "channels_last:0:2x2"
    again = explain(
        model, x, "cnnvis.grad_cam", 0, layer="features.7", reshape="channels_last:0:2x2"
    )
    assert torch.equal(again.attributions, e.attributions)
    # the same map as computing Grad-CAM by hand on the (B, H, W, C) output
    store: dict[str, torch.Tensor] = {}
    handle = model.features[7].register_forward_hook(lambda m, a, o: store.update(a=o))
    scores = model(x)
    handle.remove()
    (grad,) = torch.autograd.grad(scores[0, 0], store["a"])
    weights = grad.mean((1, 2), keepdim=True)
    manual = torch.relu((weights * store["a"]).sum(-1))[0]
    manual = torch.nn.functional.interpolate(
        manual[None, None], size=(64, 64), mode="bilinear", align_corners=False
    )[0, 0]
    assert torch.allclose(e.attributions[0, 0], manual.detach(), atol=1e-5)


def test_infer_layout_readings_and_refusals() -> None:
    cf = infer_layout((1, 64, 8, 8), (1, 3, 32, 32))
    assert cf.kind == "channels_first" and cf.grid == (8, 8)
    cl = infer_layout((1, 8, 8, 96), (1, 3, 32, 32))
    assert cl.kind == "channels_last" and cl.grid == (8, 8)
    tokens = infer_layout((1, 17, 192), (1, 3, 32, 32), patch=(8, 8))
    assert (tokens.kind, tokens.grid, tokens.extra) == ("tokens", (4, 4), 1)
    volume = infer_layout((1, 8, 96), (1, 1, 32, 32, 32), patch=(16, 16, 16))
    assert (volume.kind, volume.grid, volume.extra) == ("tokens", (2, 2, 2), 0)
    registers = infer_layout((1, 1 + 4 + 196, 8), (1, 3, 224, 224), patch=(16, 16))
    assert registers.extra == 5
    with pytest.raises(InvalidParamsError, match="reshape='channels_first'"):
        infer_layout((1, 8, 8, 8), (1, 3, 32, 32))
    assert infer_layout((1, 8, 8, 8), (1, 3, 32, 32), channels_last_seen=False).kind == (
        "channels_first"
    )
    with pytest.raises(InvalidParamsError, match="tokens:EXTRA:GRID"):
        infer_layout((1, 6, 4), (1, 3, 32, 32))  # no patch size, no reading fits
    assert parse_reshape("tokens:1:14x14") == Layout("tokens", (14, 14), 1, "given")
    assert parse_reshape({"kind": "channels_last"}) == Layout("channels_last", (), 0, "given")
    with pytest.raises(InvalidParamsError, match="is not a layout"):
        parse_reshape("rows")


def test_layout_view_round_trip() -> None:
    y = torch.rand(2, 17, 6)
    layout = Layout("tokens", (4, 4), 1)
    view = layout.to_channels_first(y)
    assert view.shape == (2, 6, 4, 4)
    assert torch.equal(layout.restore(view, y), y)
    cl = Layout("channels_last", (3, 5))
    z = torch.rand(2, 3, 5, 7)
    assert torch.equal(cl.restore(cl.to_channels_first(z), z), z)


@pytest.mark.parametrize(
    "name",
    [
        "torchvision.resnet18",
        "torchvision.mobilenet_v3_small",
        "torchvision.lraspp_mobilenet_v3_large",
        "timm.vit_tiny_depth2",
        "monai.unet_3d",
    ],
)
@pytest.mark.parametrize("level", ["gates", "relevance"])
def test_a_prepared_model_computes_exactly_what_the_model_computes(name: str, level: str) -> None:
    if name.startswith("monai"):
        pytest.importorskip("monai")
    model, x, task = _zoo(name)
    scored = score_model(model, task, None, None)
    with torch.no_grad():
        want = scored(x)
    before = model_fingerprint(model)
    try:
        with prepared(scored, x[:1], level, method="test.m"), torch.no_grad():
            got = scored(x)
    except NotApplicableError:
        assert level == "relevance" and name in (
            "torchvision.mobilenet_v3_small",
            "torchvision.lraspp_mobilenet_v3_large",
            "timm.vit_tiny_depth2",
        )
        return
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert fingerprint_changes(before, model_fingerprint(model)) == []


def test_densenet_functional_relu_gets_the_guided_rule() -> None:
    model = tv.models.densenet121(num_classes=5).eval()
    x = torch.rand(1, 3, 32, 32)
    e = explain(model, x, "captum.guided_backprop", 0)
    assert e.extras["preparation"]["routed_calls"] == {"relu": 1}
    assert e.extras["preparation"]["activation_modules"] == 121


def test_reshape_callable_like_pytorch_grad_cams() -> None:
    model = _vit()
    x = torch.rand(2, 3, 32, 32)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    inferred = explain(model, x, "cnnvis.grad_cam", 2, layer="blocks.1.norm1")
    given = explain(model, x, "cnnvis.grad_cam", 2, layer="blocks.1.norm1", reshape=reshape)
    assert torch.allclose(given.attributions, inferred.attributions, atol=1e-6)
    assert given.extras["layouts"]["blocks.1.norm1"]["kind"] == "callable"
    # no inverse: a method that replaces the layer's output is refused, not run wrongly
    with pytest.raises(InvalidParamsError, match="no inverse"):
        explain(model, x, "cnnvis.ablation_cam", 2, layer="blocks.1.norm1", reshape=reshape)
    with pytest.raises(InvalidParamsError, match="must return \\(B, C, \\*grid\\)"):
        explain(model, x, "cnnvis.grad_cam", 2, layer="blocks.1", reshape=lambda t: t[:, 1:])


@pytest.mark.parametrize(
    ("builder", "extra"),
    [
        (
            lambda: timm.create_model(
                "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, num_classes=5
            ),
            2,
        ),
        (
            lambda: timm.create_model(
                "vit_tiny_patch16_224",
                pretrained=False,
                img_size=32,
                patch_size=8,
                depth=2,
                reg_tokens=4,
                num_classes=5,
            ),
            5,
        ),
        (
            lambda: tv.models.VisionTransformer(
                image_size=32,
                patch_size=8,
                num_layers=2,
                num_heads=2,
                hidden_dim=32,
                mlp_dim=64,
                num_classes=5,
            ),
            1,
        ),
    ],
    ids=["deit_distilled", "vit_registers", "torchvision_vit"],
)
def test_extra_tokens_are_found_and_left_out_of_the_grid(builder, extra: int) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = builder().eval()
    for head in (m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 5):
        nn.init.normal_(head.weight)  # torchvision zero-initialises its ViT head
    x = torch.rand(2, 3, 32, 32)
    e = explain(model, x, "captum.layer_grad_cam", 1)
    (layout,) = e.extras["layouts"].values()
    assert layout["kind"] == "tokens" and layout["extra_tokens"] == extra
    grid = [2, 2] if extra == 2 else [4, 4]  # DeiT keeps patch 16
    assert layout["grid"] == grid
    assert e.attributions.shape[2:] == tuple(grid)


def test_3d_token_grids_of_unetr_and_swin_unetr() -> None:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    unetr = nets.UNETR(in_channels=1, out_channels=3, img_size=32, feature_size=8,
                       hidden_size=96, mlp_dim=192, num_heads=4, spatial_dims=3).eval()  # fmt: skip
    x = torch.rand(1, 1, 32, 32, 32)
    e = explain(unetr, x, "captum.layer_grad_cam", 1, task="segmentation", layer="vit.blocks.11")
    layout = e.extras["layouts"]["vit.blocks.11"]
    assert (layout["kind"], layout["grid"], layout["extra_tokens"]) == ("tokens", [2, 2, 2], 0)
    assert e.attributions.shape == (1, 1, 2, 2, 2)

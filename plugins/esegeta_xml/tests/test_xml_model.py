"""The explainer U-Net and the multiplication points of every adapter (2D and 3D)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from esegeta_xml import ExplainerClassifier, ExplainerUNet, SmallVGG, multiplying
from esegeta_xml.points import find_points, pool_to, resnet_points, vgg_points
from torch import nn

from esegeta_core.errors import InvalidInputError, InvalidModelError, LayerNotFoundError

torchvision = pytest.importorskip("torchvision")


@pytest.mark.parametrize("rank", [2, 3])
def test_unet_maps_are_one_channel_in_0_1_at_any_size(rank):
    net = ExplainerUNet(in_channels=2, spatial_dims=rank, widths=(4, 8, 16), init_bias=3.0)
    assert net.norm.bias.item() == 3.0 and [b[0].out_channels for b in net.down] == [4, 8, 16]
    x = torch.randn((2, 2) + (11,) * rank)  # not a multiple of 8: padded, then cropped
    with torch.no_grad():
        z = net(x)
    assert z.shape == (2, 1) + (11,) * rank
    assert float(z.min()) >= 0 and float(z.max()) < 1
    net.eval()  # a high BatchNorm bias: the first explanations are (nearly) all ones
    with torch.no_grad():
        assert float(net(x).min()) > 0.9


def test_unet_default_is_the_papers_three_levels():
    net = ExplainerUNet()
    assert net.widths == (32, 64, 128) and net.spatial_dims == 2
    assert isinstance(net.norm, nn.BatchNorm2d) and isinstance(net.head, nn.Conv2d)
    assert isinstance(ExplainerUNet(spatial_dims=3, widths=(4,)).norm, nn.BatchNorm3d)
    with pytest.raises(InvalidInputError, match="in_channels=3"):
        net(torch.randn(1, 1, 8, 8))


def test_average_pooling_to_each_resolution():
    z = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = pool_to(z, torch.zeros(1, 5, 2, 2))
    assert torch.equal(pooled, F.avg_pool2d(z, 2))
    assert pool_to(z, torch.zeros(1, 5, 4, 4)) is z


def _check_points(classifier: nn.Module, points: list[str], x: torch.Tensor) -> None:
    """At every point, the output seen downstream is the raw output times the map
    average-pooled to its resolution; the hooks are gone afterwards."""
    classifier.eval()
    z = torch.rand((x.shape[0], 1, *x.shape[2:]), generator=torch.Generator().manual_seed(0))
    raw, multiplied, handles = {}, {}, []

    def keep(store, name):
        return lambda module, inputs, output: store.__setitem__(name, output.clone())

    for name in points:  # registered before the multiplication: sees the raw output
        module = classifier.get_submodule(name)
        handles.append(module.register_forward_hook(keep(raw, name)))
    before = {n: dict(classifier.get_submodule(n)._forward_hooks) for n in points}
    with torch.no_grad(), multiplying(classifier, points, z):
        for name in points:  # registered after: sees what the next layer gets
            module = classifier.get_submodule(name)
            handles.append(module.register_forward_hook(keep(multiplied, name)))
        classifier(x)
    for handle in handles:
        handle.remove()
    for name in points:
        expected = raw[name] * pool_to(z, raw[name])
        assert torch.allclose(multiplied[name], expected, atol=1e-6), name
        assert not torch.allclose(multiplied[name], raw[name]), name
    after = {n: dict(classifier.get_submodule(n)._forward_hooks) for n in points}
    assert len(before) == len(after) and all(not h for h in after.values())


def test_resnet_adapter_multiplies_after_the_stem_and_every_block():
    resnet = torchvision.models.resnet18(weights=None, num_classes=2)
    points = resnet_points(resnet)
    blocks = [f"layer{i}.{j}" for i in (1, 2, 3, 4) for j in (0, 1)]
    assert points == ["maxpool", *blocks]
    _check_points(resnet, points, torch.randn(1, 3, 32, 32))


def _meta_vgg11() -> nn.Module:
    """torchvision's VGG-11 layout (its 'features' exactly) with a small head: the real
    head has 120M parameters, which would only slow the test down."""
    with torch.device("meta"):
        vgg = torchvision.models.vgg11(weights=None, num_classes=2)
    vgg.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    vgg.classifier = nn.Linear(512 * 7 * 7, 2)
    return vgg


def test_vgg_adapter_multiplies_every_stage_before_pooling():
    vgg = _meta_vgg11()
    points = vgg_points(vgg)
    assert points == ["features.1", "features.4", "features.9", "features.14", "features.19"]
    for name in points:  # each point is the stage's last ReLU, right before a max pool
        index = int(name.split(".")[1])
        assert isinstance(vgg.features[index], nn.ReLU)
        assert isinstance(vgg.features[index + 1], nn.MaxPool2d)
    _check_points(vgg, points, torch.randn(1, 3, 32, 32))


def test_auto_adapter_and_3d_classifiers():
    from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, VideoResNet

    video = VideoResNet(BasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1], BasicStem, num_classes=2)
    assert find_points(video) == ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    _check_points(video, find_points(video), torch.randn(1, 3, 4, 16, 16))
    vgg3d = SmallVGG(1, 2, spatial_dims=3, widths=(4, 8))
    assert find_points(vgg3d) == vgg_points(vgg3d) == ["features.5", "features.12"]
    _check_points(vgg3d, find_points(vgg3d), torch.randn(2, 1, 8, 8, 8))


class Custom(nn.Module):
    """Neither ResNet nor VGG; an nn.Identity marks a point inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, 4, 3, padding=1), act=nn.ReLU(), down=nn.Conv2d(4, 4, 2, 2)
            )
        )
        self.mark = nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.mark(self.body(x)).mean((2, 3)))


def test_generic_adapter_multiplies_named_modules():
    model = Custom()
    _check_points(model, ["body.act", "mark"], torch.randn(2, 3, 8, 8))
    joint = ExplainerClassifier(model, multiply_after=["body.act", "mark"], widths=(4,))
    assert joint.multiply_after == ["body.act", "mark"]
    x = torch.randn(2, 3, 8, 8)
    joint.eval()
    with torch.no_grad():
        z = joint.explanation(x)
        with multiplying(model, ["body.act", "mark"], z):
            expected = model(x)
        assert torch.allclose(joint(x), expected)


def test_generic_adapter_errors_name_the_fix():
    with pytest.raises(InvalidModelError, match="multiply_after"):
        ExplainerClassifier(Custom())
    with pytest.raises(LayerNotFoundError, match="Did you mean 'mark'"):
        ExplainerClassifier(Custom(), multiply_after=["marc"])
    joint = ExplainerClassifier(Custom(), multiply_after=["head"], widths=(4,))
    with pytest.raises(InvalidModelError, match="'head'.*feature map"):
        joint(torch.randn(2, 3, 8, 8))
    assert not joint.classifier.head._forward_hooks  # removed despite the error


@pytest.mark.parametrize("rank", [2, 3])
def test_the_classifier_is_usable_alone_again(rank, tiny_joint):
    joint = tiny_joint(rank).eval()
    x = torch.randn((2, 3) + (8,) * rank)
    with torch.no_grad():
        alone = joint.classifier(x)
        logits, z = joint.forward_with_explanation(x)
        assert z.shape == (2, 1) + (8,) * rank
        assert not torch.allclose(logits, alone)  # the explanation does multiply
        assert torch.equal(joint.classifier(x), alone)  # and is gone afterwards
        assert torch.equal(joint(x), logits)
    hooks = [m._forward_hooks for m in joint.modules() if m._forward_hooks]
    assert hooks == []

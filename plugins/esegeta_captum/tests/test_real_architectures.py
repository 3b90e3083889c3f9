"""Captum's rule-based methods on real torchvision architectures equal Captum's own
result on a hand-fixed copy of the same model (each activation a module of its own,
used once; skip connections as Captum's Addition_Module), and leave the model as found."""

from __future__ import annotations

import copy
import pickle
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esegeta_core import NotApplicableError, explain

tv = pytest.importorskip("torchvision")


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=6).eval()
    # non-trivial batch-norm statistics, so that the rules see more than identities
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _hand_fixed(model: nn.Module, add: bool = False) -> nn.Module:
    """What Captum's maintainers suggest: every ReLU its own module, used once (and,
    for LRP, the skip connection as Captum's Addition_Module)."""
    from captum.attr._utils.custom_modules import Addition_Module

    fixed = copy.deepcopy(model)
    for block in fixed.modules():
        if isinstance(block, tv.models.resnet.BasicBlock):
            block.relu1, block.relu2 = nn.ReLU(), nn.ReLU()
            block.add = Addition_Module()

            def forward(self, x, add=add):  # type: ignore[no-untyped-def]
                identity = x if self.downsample is None else self.downsample(x)
                out = self.relu1(self.bn1(self.conv1(x)))
                out = self.bn2(self.conv2(out))
                out = self.add(out, identity) if add else out + identity
                return self.relu2(out)

            block.forward = types.MethodType(forward, block)
    fixed.relu = nn.ReLU()
    return fixed


def _captum(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor, **kwargs):
    import captum.attr as ca

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(ca, name)(model).attribute(x, target=t, **kwargs)


@pytest.mark.parametrize(
    ("method", "captum_name"),
    [
        ("captum.deep_lift", "DeepLift"),
        ("captum.guided_backprop", "GuidedBackprop"),
        ("captum.deconvolution", "Deconvolution"),
    ],
)
def test_reused_relus_equal_captum_on_a_hand_fixed_copy(method: str, captum_name: str) -> None:
    model = _resnet18()
    x = torch.rand(2, 3, 32, 32)
    t = torch.tensor([1, 4])
    size = len(pickle.dumps(model))
    ours = explain(model, x, method, t).attributions
    kwargs = {"baselines": torch.zeros_like(x)} if captum_name == "DeepLift" else {}
    theirs = _captum(captum_name, _hand_fixed(model), x, t, **kwargs)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))
    assert len(pickle.dumps(model)) == size  # no input/output tensors left on modules
    with pytest.raises(RuntimeError):  # Captum on the model as it is: the known failure
        _captum("DeepLift", model, x, t, baselines=torch.zeros_like(x))


def test_lrp_with_skip_connections_equals_captum_with_addition_modules() -> None:
    model = _resnet18()
    x = torch.rand(2, 3, 32, 32)
    t = torch.tensor([0, 5])
    ours = explain(model, x, "captum.lrp", t).attributions
    theirs = _captum("LRP", _hand_fixed(model, add=True), x, t)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))


def test_densenets_functional_relu_gets_the_guided_rule() -> None:
    torch.manual_seed(0)
    model = tv.models.densenet121(num_classes=4).eval()
    x = torch.rand(1, 3, 32, 32)
    ours = explain(model, x, "captum.guided_backprop", 2).attributions
    fixed = copy.deepcopy(model)
    fixed.final_relu = nn.ReLU()

    def forward(self, x):  # type: ignore[no-untyped-def]
        out = self.final_relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))

    fixed.forward = types.MethodType(forward, fixed)
    for m in fixed.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    theirs = _captum("GuidedBackprop", fixed, x, torch.tensor([2]))
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))


def test_guided_rules_act_on_every_activation_class() -> None:
    torch.manual_seed(0)
    model = tv.models.efficientnet_b0(num_classes=3).eval()  # SiLU and sigmoid gates
    x = torch.rand(2, 3, 32, 32)
    plain = explain(model, x, "captum.saliency", 1, abs=False).attributions
    guided = explain(model, x, "captum.guided_backprop", 1)
    difference = (guided.attributions - plain).abs().max() / plain.abs().max()
    assert difference > 0.1  # not the plain gradient
    assert guided.extras["preparation"]["activation_modules"] == 65
    cnnvis = pytest.importorskip("esegeta_cnnvis")
    assert cnnvis is not None
    same = explain(model, x, "cnnvis.guided_backprop", 1).attributions
    scale = float(guided.attributions.abs().max())
    assert torch.allclose(same, guided.attributions, rtol=1e-4, atol=1e-5 * scale)


def test_a_model_without_activations_is_refused_for_guided_rules() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 3)).eval()
    with pytest.raises(NotApplicableError, match="plain gradient"):
        explain(model, torch.rand(1, 3, 16, 16), "captum.guided_backprop", 0)


def test_lrp_refuses_gating_and_names_it() -> None:
    torch.manual_seed(0)
    model = tv.models.mobilenet_v3_small(num_classes=3).eval()
    with pytest.raises(NotApplicableError, match="SqueezeExcitation"):
        explain(model, torch.rand(1, 3, 32, 32), "captum.lrp", 0)


def test_layer_integrated_gradients_before_an_in_place_relu() -> None:
    torch.manual_seed(0)
    model = tv.models.vgg11(num_classes=3).eval()
    x = torch.rand(1, 3, 32, 32)
    e = explain(model, x, "captum.layer_integrated_gradients", 0, layer="features.0", n_steps=4)
    assert torch.isfinite(e.attributions).all()
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_a_module_held_twice_is_hooked_once() -> None:
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = monai.SegResNet(spatial_dims=2, init_filters=8, in_channels=1, out_channels=2).eval()
    x = torch.rand(1, 1, 16, 16)
    for method in ("captum.deep_lift", "captum.lrp"):
        e = explain(model, x, method, 1, task="segmentation")
        assert torch.isfinite(e.attributions).all()

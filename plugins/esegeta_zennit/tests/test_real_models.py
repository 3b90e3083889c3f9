"""Real architectures: DenseNet-121 (pre-activation batch norms), a MONAI 3D UNet
(residual units, transposed convolutions, instance norm, PReLU), a ViT (refused) and
the model left exactly as found."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable

import pytest
import torch

from esegeta_core import NotApplicableError, explain


def _densenet121() -> torch.nn.Module:
    from torchvision.models import densenet121

    torch.manual_seed(0)
    return densenet121(weights=None, num_classes=10).eval()


def test_densenet121_runs_and_merges_only_what_follows_a_convolution() -> None:
    model = _densenet121()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    e = explain(model, x, "zennit.lrp", target=[1, 4])
    a = e.attributions
    assert a.shape == x.shape and bool(torch.isfinite(a).all()) and float(a.abs().sum()) > 0
    merged, unmerged = e.extras["merged_batch_norms"], e.extras["epsilon_batch_norms"]
    # merged: the stem's norm0 into conv0 and every dense layer's norm2 into its conv1
    assert merged["features.norm0"] == "features.conv0"
    layers = [n[: -len(".norm2")] for n in merged if n.endswith(".norm2")]
    assert len(layers) == 58 and len(merged) == 59
    assert all(merged[f"{p}.norm2"] == f"{p}.conv1" for p in layers)
    # never merged: the pre-activation norm1 (input: the concatenation of all earlier
    # features), the transitions' norms (norm -> relu -> conv) and the final norm5
    assert {n.rsplit(".", 1)[-1] for n in unmerged} == {"norm1", "norm", "norm5"}
    assert len(unmerged) == 58 + 3 + 1
    assert not any(n.endswith(".norm1") or "transition" in n for n in merged)
    assert e.extras["input_layers"] == ["features.conv0"]


def test_sequential_merge_batch_norm_mispairs_densenet() -> None:
    """What the issue reports, checked: zennit's SequentialMergeBatchNorm pairs a batch
    norm with the linear layer *declared* before it. On densenet121 that pairs each dense
    layer's conv2 (32 channels) with the next layer's norm1 (the concatenation, 96+
    channels) or a transition's norm: 58 of its 117 pairs are wrong. Applying it fails on
    the first wrong pair, with the merges before it left applied to the model."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.core import collect_leaves

    model = _densenet121()
    names = {id(m): n for n, m in model.named_modules()}
    pairs, last = [], None
    for leaf in collect_leaves(model):
        if isinstance(last, torch.nn.Conv2d) and isinstance(leaf, torch.nn.BatchNorm2d):
            pairs.append((names[id(last)], names[id(leaf)], last.out_channels, leaf.num_features))
        last = leaf
    wrong = [p for p in pairs if p[2] != p[3]]
    assert len(pairs) == 117 and len(wrong) == 58
    assert wrong[0][:2] == (
        "features.denseblock1.denselayer1.conv2",
        "features.denseblock1.denselayer2.norm1",
    )
    before = model.features.conv0.weight.detach().clone()
    with pytest.raises(RuntimeError, match="must match"):
        SequentialMergeBatchNorm().apply(model)
    assert not torch.equal(model.features.conv0.weight, before), "left half-merged"


def test_monai_unet_3d_segmentation_runs() -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    model = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2),
        num_res_units=2,
    ).eval()  # fmt: skip
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    e = explain(model, x, "zennit.lrp", task="segmentation", target=1)
    a = e.attributions
    assert a.shape == x.shape and bool(torch.isfinite(a).all()) and float(a.abs().sum()) > 0
    # the residual units' `cx + res` became proportional splits
    assert e.extras["preparation"]["routed_calls"].get("add", 0) >= 4
    # both convolutions of the first residual unit see the input: both get the flat rule
    assert sorted(e.extras["input_layers"]) == ["model.0.conv.unit0.conv", "model.0.residual"]


def test_vit_is_refused_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import esegeta_zennit.method as method
    import timm

    def never(*args, **kwargs):
        raise AssertionError("the method ran")

    monkeypatch.setattr(method, "plan_rules", never)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
        num_classes=5,
    ).eval()  # fmt: skip
    with pytest.raises(NotApplicableError, match="attention|product"):
        explain(model, torch.randn(1, 3, 32, 32), "zennit.lrp")


def _pickled_size(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    pickle.dump(model, buffer)
    return buffer.tell()


def test_resnet18_is_left_exactly_as_found() -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=10).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters()}
    size = _pickled_size(model)
    x = torch.randn(2, 3, 64, 64)
    for composite in ("epsilon_plus_flat", "epsilon_gamma_box"):
        explain(model, x, "zennit.lrp", target=[0, 1], composite=composite)
    explain(model, x, "zennit.layer_lrp", target=[0, 1], layer="layer2.0.bn1")
    assert _pickled_size(model) == size
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert all(p is params[n] for n, p in model.named_parameters()), "parameter objects kept"
    assert model.conv1.bias is None, "a merge's temporary bias is gone"
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        assert not any(k.startswith("canonizer") for k in m.__dict__)


def test_planned_merges_keep_the_forward_pass_including_transposed_convolutions(
    randomise_batch_norms: Callable[..., torch.nn.Module],
) -> None:
    """The merges the plan picks leave the model's output as it was (up to zennit's
    x / sqrt(1 + eps) after a merge), here with MONAI's conv -> batch norm units and its
    transposed up-convolutions."""
    from esegeta_zennit.lrp import PlannedMergeBatchNorm
    from esegeta_zennit.plan import plan_rules
    from monai.networks.nets import UNet
    from zennit.core import Composite

    torch.manual_seed(0)
    model = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2),
        num_res_units=2, norm="batch",
    )  # fmt: skip
    model = randomise_batch_norms(model).eval()
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    plan = plan_rules(model, x)
    kinds = {type(linear).__name__ for linear, _ in plan.merges}
    assert len(plan.merges) == 9 and plan.unmerged == []
    assert kinds == {"Conv3d", "ConvTranspose3d"}
    with torch.no_grad():
        before = model(x)
        composite = Composite(canonizers=[PlannedMergeBatchNorm(plan.merges)])
        with composite.context(model):
            merged = model(x)
        after = model(x)
    torch.testing.assert_close(merged, before, rtol=1e-4, atol=1e-4)
    assert torch.equal(after, before), "the merges are undone"

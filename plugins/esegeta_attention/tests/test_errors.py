"""Refusals before running (no attention, windowed attention, unsupported attention, a
layer that is not an attention block, bad parameters) and the model left as found,
also when the forward pass fails half-way."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from esegeta_attention.adapters import TorchMHAAdapter
from esegeta_attention.sites import AttentionCall, capturing, discover
from torch import nn

from esegeta_core import (
    InvalidInputError,
    InvalidParamsError,
    LayerNotFoundError,
    NotApplicableError,
    explain,
)
from esegeta_core.testing.zoo import fingerprint_changes, model_fingerprint

METHODS = ["attention.raw", "attention.rollout", "attention.gae"]
X2D = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def vit(timm_vit: Callable[..., nn.Module]) -> nn.Module:
    """One timm ViT for the refusals (they leave it as found)."""
    return timm_vit()


def _explain(model: nn.Module, x: torch.Tensor, method: str, **kwargs: object):  # type: ignore[no-untyped-def]
    before = model_fingerprint(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return explain(model, x, method, **kwargs)
    finally:
        assert not fingerprint_changes(before, model_fingerprint(model))


@pytest.mark.parametrize("method", METHODS)
def test_a_model_without_attention_is_not_applicable(method: str) -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).eval()
    with pytest.raises(NotApplicableError, match="no attention module.*Conv2d"):
        _explain(cnn, X2D, method, target=1)


@pytest.mark.parametrize("method", METHODS)
def test_torchvision_swin_is_refused_as_windowed(method: str) -> None:
    from torchvision.models import swin_t

    torch.manual_seed(0)
    model = swin_t(weights=None, num_classes=5).eval()
    with pytest.raises(NotApplicableError, match=r"windowed attention \(ShiftedWindowAttention"):
        _explain(model, torch.rand(1, 3, 64, 64), method, target=1)


@pytest.mark.parametrize("method", ["attention.rollout", "attention.gae"])
def test_monai_swin_unetr_is_refused_as_windowed(method: str) -> None:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    model = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=3).eval()
    with pytest.raises(NotApplicableError, match="windowed attention.*no global token mixing"):
        _explain(model, torch.rand(1, 1, 32, 32, 32), method, target=1, task="segmentation")


def test_the_cams_keep_working_on_swin() -> None:
    pytest.importorskip("esegeta_cnnvis", reason="the CAM comes from esegeta-cnnvis")
    from torchvision.models import swin_t

    torch.manual_seed(0)
    model = swin_t(weights=None, num_classes=5).eval()
    e = _explain(model, torch.rand(1, 3, 64, 64), "cnnvis.grad_cam", target=1)
    assert torch.isfinite(e.attributions).all()


class MyAttention(nn.Module):
    """Self-attention no adapter knows."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v


class Tokens(nn.Module):
    def __init__(self, mixer: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.mixer = mixer
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.mixer(tokens).mean(1))


def test_unsupported_attention_is_named_with_what_a_plugin_needs() -> None:
    torch.manual_seed(0)
    model = Tokens(MyAttention()).eval()
    with pytest.raises(NotApplicableError, match=r"MyAttention.*softmax probabilities"):
        _explain(model, X2D, "attention.rollout", target=1)


def test_unsupported_attention_running_beside_supported_blocks_stops_the_product() -> None:
    torch.manual_seed(0)
    model = Tokens(nn.Sequential(_SelfMHA(), MyAttention())).eval()
    with pytest.raises(NotApplicableError, match="cannot read also ran.*mixer.1"):
        _explain(model, X2D, "attention.rollout", target=1)
    e = _explain(model, X2D, "attention.raw", target=1)  # one block: nothing missing
    assert e.attributions.shape == (2, 1, 4, 4)


class _SelfMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_a_layer_that_is_not_an_attention_block(vit: nn.Module) -> None:
    with pytest.raises(InvalidParamsError, match=r"'head' \(Linear\) is not an attention block"):
        _explain(vit, X2D, "attention.raw", target=1, layer="head")
    with pytest.raises(InvalidParamsError, match="holds 2 attention blocks.*blocks.0.attn"):
        _explain(vit, X2D, "attention.raw", target=1, layer="blocks")
    with pytest.raises(LayerNotFoundError, match="Did you mean"):
        _explain(vit, X2D, "attention.raw", target=1, layer="blocks.0.atn")


def test_bad_parameters(vit: nn.Module) -> None:
    with pytest.raises(InvalidParamsError, match="discard"):
        _explain(vit, X2D, "attention.rollout", target=1, discard=0.5)
    with pytest.raises(InvalidParamsError, match="discard_ratio"):
        _explain(vit, X2D, "attention.rollout", target=1, discard_ratio=1.0)
    with pytest.raises(InvalidParamsError, match="head_fusion"):
        _explain(vit, X2D, "attention.rollout", target=1, head_fusion="median")
    with pytest.raises(InvalidParamsError, match="layer"):
        _explain(vit, X2D, "attention.gae", target=1, layer="blocks.0")
    with pytest.raises(InvalidParamsError, match="start_layer=2 is out of range.*2 attention"):
        _explain(vit, X2D, "attention.gae", target=1, start_layer=2)


def test_query_class_needs_a_class_token(monai_unetr: Callable[[], nn.Module]) -> None:
    model = monai_unetr()
    x = torch.rand(1, 1, 32, 32, 32)
    with pytest.raises(InvalidParamsError, match="no class token"):
        _explain(model, x, "attention.rollout", target=1, task="segmentation", query="class")


class _Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_switches_are_restored_when_the_forward_pass_fails(
    timm_vit: Callable[..., nn.Module],
) -> None:
    model = timm_vit()
    model.head = nn.Sequential(model.head, _Fails())
    for method in METHODS:
        # the model fails on its own: explain() says so (the input or the model, not the method)
        with pytest.raises(InvalidInputError, match="forward pass failed.*boom"):
            _explain(model, X2D, method, target=1)
        assert all(b.attn.fused_attn for b in model.blocks)


def test_multihead_attention_hands_the_caller_what_it_asked_for() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    out, _ = mha(x, x, x, need_weights=False)
    out_avg, avg = mha(x, x, x)
    (site,) = discover(mha).sites
    assert isinstance(site.adapter, TorchMHAAdapter)
    seen: list[AttentionCall] = []
    with capturing([site], seen.append, batch=2, method="t"):
        got, none = mha(x, x, x, need_weights=False)
        got_avg, avg2 = mha(x, x, x)
        _, per_head = mha(x, x, x, None, True, None, False)
    assert none is None and torch.allclose(got, out, atol=1e-6)
    assert torch.allclose(avg2, avg, atol=1e-6) and torch.allclose(got_avg, out_avg, atol=1e-6)
    assert per_head.shape == (2, 2, 5, 5)
    assert [c.probs.shape for c in seen] == [(2, 2, 5, 5)] * 3
    assert not mha._forward_hooks and not mha._forward_pre_hooks
    with (
        pytest.raises(NotApplicableError, match="cross-attention"),
        capturing([site], seen.append, batch=2, method="t"),
    ):
        mha(x, x.clone(), x.clone())
    assert not mha._forward_hooks and not mha._forward_pre_hooks


def test_torchvision_vit_left_with_need_weights_false_for_its_caller(
    torchvision_vit: Callable[[], nn.Module],
) -> None:
    """After a call, the encoder blocks get (output, None) from their attention again."""
    model = torchvision_vit()
    x = X2D
    with torch.no_grad():
        before = model(x)
    _explain(model, x, "attention.rollout", target=1)
    block = model.encoder.layers[0]
    seen: list[object] = []
    handle = block.self_attention.register_forward_hook(lambda m, a, o: seen.append(o[1]))
    try:
        with torch.no_grad():
            after = model(x)
    finally:
        handle.remove()
    assert seen == [None] and torch.equal(before, after)


class _LinearPatches(nn.Module):
    """Patches cut with unfold and embedded by a linear layer: no patch embedding to read
    the grid from, and 16 tokens read as 4x4 or as 7 extra + 3x3."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 64, 8)
        self.mixer = _SelfMHA()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.unfold(x, 8, stride=8).transpose(1, 2)
        return self.head(self.mixer(self.embed(patches)).mean(1))


def test_a_grid_that_cannot_be_inferred_is_given_with_tokens() -> None:
    torch.manual_seed(0)
    model = _LinearPatches().eval()
    with pytest.raises(InvalidParamsError, match=r"16 tokens cannot be read.*tokens='1:14x14'"):
        _explain(model, X2D, "attention.rollout", target=1)
    e = _explain(model, X2D, "attention.rollout", target=1, tokens="0:4x4")
    assert e.attributions.shape == (2, 1, 4, 4)
    assert e.extras["tokens"]["reason"] == "given"
    with pytest.raises(InvalidParamsError, match="tokens='1:4x4' does not fit"):
        _explain(model, X2D, "attention.gae", target=1, tokens="1:4x4")
    with pytest.raises(InvalidParamsError, match="tokens"):
        _explain(model, X2D, "attention.raw", target=1, tokens="4x4")


@pytest.mark.parametrize("method", METHODS)
def test_the_cores_reshape_gives_the_token_layout(method: str) -> None:
    """explain(reshape="tokens:EXTRA:GRID"), the CAMs' vocabulary, sets ``tokens``: the
    map and Explanation.params say what was used; nothing else is accepted silently."""
    torch.manual_seed(0)
    model = _LinearPatches().eval()
    e = _explain(model, X2D, method, target=1, reshape="tokens:0:4x4")
    assert e.params.tokens == "0:4x4"
    same = _explain(model, X2D, method, target=1, tokens="0:4x4")
    assert torch.equal(e.attributions, same.attributions)
    assert _explain(model, X2D, method, target=1, tokens="0:4x4", reshape="tokens:0:4x4")
    with pytest.raises(InvalidParamsError, match="disagree"):
        _explain(model, X2D, method, target=1, tokens="0:2x8", reshape="tokens:0:4x4")
    for bad in ("channels_last", {"kind": "channels_last"}, lambda t: t):
        with pytest.raises(InvalidParamsError, match="must give a token layout"):
            _explain(model, X2D, method, target=1, reshape=bad)


@pytest.mark.parametrize("method", METHODS)
def test_a_pyramid_transformer_is_not_applicable(method: str) -> None:
    """SegFormer: spatial-reduction attention (fewer keys than queries) in stages of
    different token counts."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(
        num_labels=3, hidden_sizes=[8, 16, 16, 16], decoder_hidden_size=16, depths=[1, 1, 1, 1]
    )
    model = SegformerForSemanticSegmentation(config).eval()
    with pytest.raises(NotApplicableError, match="pyramid|spatial reduction"):
        _explain(model, torch.rand(1, 3, 64, 64), method, target=1, task="segmentation")

"""Models built in code with random weights, and references written independently of
the plugin: attention recomputed from each module's own weights (or read through the
library's own API), rollout and Chefer et al.'s relevance as plain per-item loops."""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small models are as fast on one thread; several oversubscribe a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- models


def timm_vit(**kwargs: object) -> nn.Module:
    import timm

    torch.manual_seed(0)
    args = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 5, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def timm_deit() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
        depth=2, num_classes=5,
    ).eval()  # fmt: skip


def torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=5,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises it
    return model.eval()


def monai_unetr() -> nn.Module:
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    return UNETR(
        in_channels=1, out_channels=3, img_size=32, feature_size=8, hidden_size=96,
        mlp_dim=192, num_heads=4, spatial_dims=3,
    ).eval()  # fmt: skip


def hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=3, intermediate_size=96, num_labels=5,
    )  # fmt: skip
    return ViTForImageClassification(config).eval()


@dataclass(frozen=True)
class Case:
    """A model, its input, targets, task and what the map must look like."""

    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    grid: tuple[int, ...]
    extra: int
    task: str = "classification"
    targets: tuple[int, int] = (0, 3)

    def input(self) -> torch.Tensor:
        return torch.rand(self.shape, generator=torch.Generator().manual_seed(1))

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("timm_vit", timm_vit, (2, 3, 32, 32), (4, 4), 1),
    Case("timm_deit_distilled", timm_deit, (2, 3, 32, 32), (4, 4), 2),
    Case("timm_vit_registers", lambda: timm_vit(reg_tokens=4), (2, 3, 32, 32), (4, 4), 5),
    Case("torchvision_vit", torchvision_vit, (2, 3, 32, 32), (4, 4), 1),
    Case("monai_unetr_3d", monai_unetr, (2, 1, 32, 32, 32), (2, 2, 2), 0, "segmentation",
         (1, 2)),
    Case("huggingface_vit", hf_vit, (2, 3, 32, 32), (4, 4), 1),
]  # fmt: skip


# ------------------------------------------------- attention recomputed independently


def _timm_forward(store: list[torch.Tensor]) -> Callable[..., torch.Tensor]:
    def forward(self: nn.Module, x: torch.Tensor, attn_mask=None, is_causal=False):  # type: ignore[no-untyped-def]
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        store.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out)))

    return forward


def _mha_forward(store: list[torch.Tensor]) -> Callable[..., tuple[torch.Tensor, None]]:
    def forward(self: nn.Module, query: torch.Tensor, key, value, **kwargs):  # type: ignore[no-untyped-def]
        b, n, e = query.shape
        h = self.num_heads
        q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, h, e // h).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e // h), dim=-1)
        store.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(b, n, e)
        return self.out_proj(out), None

    return forward


def _monai_forward(store: list[torch.Tensor]) -> Callable[..., torch.Tensor]:
    def forward(self: nn.Module, x: torch.Tensor, attn_mask=None):  # type: ignore[no-untyped-def]
        q, k, v = self.input_rearrange(self.qkv(x))
        attn = torch.softmax(torch.einsum("blxd,blyd->blxy", q, k) * self.scale, dim=-1)
        store.append(attn)
        out = self.out_rearrange(torch.einsum("bhxy,bhyd->bhxd", attn, v))
        return self.drop_output(self.out_proj(out))

    return forward


def reference_attention(
    case: Case, model: nn.Module, x: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's attention ``(B, heads, N, N)`` (in the graph) and the ``(B, classes)``
    scores, from a copy of ``model`` whose attention is recomputed by code written here
    (Hugging Face: the library's own ``output_attentions`` with eager attention)."""
    from esegeta_core.targets import score_model

    twin = copy.deepcopy(model)
    store: list[torch.Tensor] = []
    if case.name == "huggingface_vit":
        twin.set_attn_implementation("eager")
        out = twin(pixel_values=x, output_attentions=True)
        return list(out.attentions), out.logits
    for module in twin.modules():
        kind = type(module).__name__
        if kind == "Attention" and type(module).__module__.startswith("timm"):
            module.forward = types.MethodType(_timm_forward(store), module)
        elif isinstance(module, nn.MultiheadAttention):
            module.forward = types.MethodType(_mha_forward(store), module)
        elif kind == "SABlock":
            module.forward = types.MethodType(_monai_forward(store), module)
    scores = score_model(twin, case.task, None, None)(x)
    plain = score_model(model, case.task, None, None)
    with torch.no_grad():
        expected = plain(x)
    assert torch.allclose(scores, expected, atol=1e-4, rtol=1e-4), "reference forward differs"
    assert store, "no attention recomputed"
    return store, scores


# ------------------------------------------------------------------- reference maps


def fuse(a: torch.Tensor, how: str) -> torch.Tensor:
    """(heads, N, N) -> (N, N)."""
    return {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[how]


def read_map(matrix: torch.Tensor, extra: int, grid: tuple[int, ...]) -> torch.Tensor:
    """One item's (N, N) matrix -> (1, *grid): the class token's row (extra tokens), or
    the mean of the patch rows (none)."""
    row = matrix[0, extra:] if extra else matrix[extra:, extra:].mean(0)
    return row.reshape(1, *grid)


def reference_raw(attn: torch.Tensor, how: str, extra: int, grid: tuple[int, ...]):
    return torch.stack([read_map(fuse(a, how), extra, grid) for a in attn.detach()])


def reference_rollout(
    attns: list[torch.Tensor], how: str, ratio: float, extra: int, grid: tuple[int, ...]
) -> torch.Tensor:
    """jacobgil/vit-explain's rollout with rows normalised (keepdim), per item."""
    maps = []
    for b in range(attns[0].shape[0]):
        n = attns[0].shape[-1]
        result = torch.eye(n)
        for attn in attns:
            fused = fuse(attn[b].detach(), how).clone()
            count = int(ratio * n * n)
            if count:
                flat = fused.flatten()
                order = [int(i) for i in torch.argsort(flat) if not (extra and int(i) == 0)]
                flat[order[:count]] = 0
                fused = flat.view(n, n)
            a = (fused + torch.eye(n)) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = a @ result
        maps.append(read_map(result, extra, grid))
    return torch.stack(maps)


def reference_gae(
    attns: list[torch.Tensor],
    scores: torch.Tensor,
    targets: tuple[int, ...],
    extra: int,
    grid: tuple[int, ...],
) -> torch.Tensor:
    """Chefer et al.'s ViT code (generate_relevance), one item and one backward at a time."""
    maps = []
    for b, t in enumerate(targets):
        grads = torch.autograd.grad(scores[b, t], attns, retain_graph=True)
        n = attns[0].shape[-1]
        relevance = torch.eye(n)
        for attn, grad in zip(attns, grads):
            cam = (grad[b] * attn[b].detach()).clamp(min=0).mean(dim=0)
            relevance = relevance + cam @ relevance
        maps.append(read_map(relevance, extra, grid))
    return torch.stack(maps)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())

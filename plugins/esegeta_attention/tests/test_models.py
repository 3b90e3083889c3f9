"""The three methods on real architectures (timm ViT, DeiT distilled, registers,
torchvision ViT, MONAI UNETR 3D, Hugging Face ViT), against references written
independently of the plugin (attention recomputed from each module's own weights or
read through the library's own API; rollout and Chefer et al.'s relevance as plain
per-item loops), with the model left exactly as found. The models come from
conftest.py's ``model_builders``."""

from __future__ import annotations

import copy
import math
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esegeta_core import explain
from esegeta_core.testing.zoo import fingerprint_changes, model_fingerprint


@dataclass(frozen=True)
class Case:
    """A model (by its name in ``model_builders``), its input, targets, task and what the
    map must look like."""

    name: str
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
    Case("timm_vit", (2, 3, 32, 32), (4, 4), 1),
    Case("timm_deit_distilled", (2, 3, 32, 32), (4, 4), 2),
    Case("timm_vit_registers", (2, 3, 32, 32), (4, 4), 5),
    Case("torchvision_vit", (2, 3, 32, 32), (4, 4), 1),
    Case("monai_unetr_3d", (2, 1, 32, 32, 32), (2, 2, 2), 0, "segmentation", (1, 2)),
    Case("huggingface_vit", (2, 3, 32, 32), (4, 4), 1),
]

# ------------------------------------------- attention recomputed independently


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


# ------------------------------------------------------------------------ tests

METHODS = ["attention.raw", "attention.rollout", "attention.gae"]
TOL = 1e-5


Built = tuple[nn.Module, torch.Tensor, list[torch.Tensor], torch.Tensor]
"""A model, its input, and the reference attention and scores."""
Build = Callable[[Case], Built]


@pytest.fixture(scope="module")
def built(model_builders: Mapping[str, Callable[[], nn.Module]]) -> Build:
    """The model of a case, its input and the reference attention and scores (built once
    per module)."""

    @cache
    def build(case: Case) -> Built:
        model = model_builders[case.name]()
        x = case.input()
        attns, scores = reference_attention(case, model, x)
        return model, x, attns, scores

    return build


def flags(model: nn.Module) -> list[Any]:
    """Every switch an adapter may touch, by value."""
    out: list[Any] = []
    for m in model.modules():
        for name in ("fused_attn", "use_flash_attention", "save_attn"):
            if name in m.__dict__:
                out.append((name, m.__dict__[name]))
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            out.append(("attn_implementation", config._attn_implementation))
    return out


def run(built: Build, case: Case, method: str, **params: Any) -> Any:
    """``explain`` on a case's model, checking that the model is left as found and the
    map's shape and token layout."""
    model, x, _, _ = built(case)
    before, switches = model_fingerprint(model), flags(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = explain(model, x, method, target=list(case.targets), task=case.task, **params)
    assert not fingerprint_changes(before, model_fingerprint(model))
    assert flags(model) == switches
    assert e.attributions.shape == (x.shape[0], 1, *case.grid)
    assert e.extras["tokens"]["extra_tokens"] == case.extra
    assert e.extras["tokens"]["grid"] == list(case.grid)
    return e


@pytest.mark.parametrize("case", CASES, ids=str)
def test_raw_attention_is_the_class_row_of_the_last_block(case: Case, built: Build) -> None:
    _, _, attns, _ = built(case)
    e = run(built, case, "attention.raw")
    expected = reference_raw(attns[-1], "mean", case.extra, case.grid)
    assert max_diff(e.attributions, expected) < TOL
    sal = e.saliency()
    assert sal.shape == (case.shape[0], 1, *case.shape[2:])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rollout_equals_the_reference(case: Case, built: Build) -> None:
    _, _, attns, _ = built(case)
    e = run(built, case, "attention.rollout")
    expected = reference_rollout(attns, "mean", 0.0, case.extra, case.grid)
    assert max_diff(e.attributions, expected) < TOL
    assert len(e.extras["attention_blocks"]) == len(attns)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gae_equals_the_reference_with_a_target_per_item(case: Case, built: Build) -> None:
    _, _, attns, scores = built(case)
    e = run(built, case, "attention.gae")
    expected = reference_gae(attns, scores, case.targets, case.extra, case.grid)
    assert float(expected.abs().max()) > 0
    assert max_diff(e.attributions, expected) < 1e-4 * max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("how", ["mean", "max", "min"])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[4]], ids=str)
def test_head_fusions_and_discard_ratio(case: Case, how: str, built: Build) -> None:
    _, _, attns, _ = built(case)
    raw = run(built, case, "attention.raw", head_fusion=how, layer=_first_block(case))
    assert max_diff(raw.attributions, reference_raw(attns[0], how, case.extra, case.grid)) < TOL
    for ratio in (0.0, 0.5, 0.9):
        e = run(built, case, "attention.rollout", head_fusion=how, discard_ratio=ratio)
        expected = reference_rollout(attns, how, ratio, case.extra, case.grid)
        assert max_diff(e.attributions, expected) < TOL, ratio


def _first_block(case: Case) -> str:
    return {
        "timm_vit": "blocks.0",  # a block holding one attention module
        "torchvision_vit": "encoder.layers.encoder_layer_0.self_attention",
        "monai_unetr_3d": "vit.blocks.0.attn",
    }[case.name]


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=str)
def test_start_layer(case: Case, built: Build) -> None:
    _, _, attns, scores = built(case)
    e = run(built, case, "attention.rollout", start_layer=-1)
    assert max_diff(e.attributions, reference_rollout(attns[-1:], "mean", 0.0, case.extra,
                                                      case.grid)) < TOL  # fmt: skip
    assert len(e.extras["attention_blocks"]) == 1
    e = run(built, case, "attention.gae", start_layer=1)
    expected = reference_gae(attns, scores, case.targets, case.extra, case.grid)
    full = reference_gae(attns[1:], scores, case.targets, case.extra, case.grid)
    assert max_diff(e.attributions, full) < 1e-4 * max(1.0, float(full.abs().max()))
    assert not torch.allclose(expected, full)


def test_query_mean_on_a_class_token_model(built: Build) -> None:
    case = CASES[0]
    _, _, attns, _ = built(case)
    e = run(built, case, "attention.raw", query="mean")
    fused = attns[-1].detach().mean(1)
    expected = fused[:, 1:, 1:].mean(1).reshape(2, 1, *case.grid)
    assert max_diff(e.attributions, expected) < TOL
    assert e.extras["tokens"]["query"] == "mean of the patch tokens"


def test_gae_batch_equals_items_one_by_one(built: Build) -> None:
    case = CASES[0]
    model, x, _, _ = built(case)
    both = explain(model, x, "attention.gae", target=[0, 3]).attributions
    one = explain(model, x[:1], "attention.gae", target=0).attributions
    two = explain(model, x[1:], "attention.gae", target=3).attributions
    assert max_diff(both, torch.cat([one, two])) < 1e-5
    other = explain(model, x, "attention.gae", target=[3, 0]).attributions
    assert not torch.allclose(both, other)


def test_monai_save_attn_agrees_and_flash_attention_is_restored(built: Build) -> None:
    """MONAI's own ``save_attn`` (detached) agrees with the raw map; a block set to flash
    attention is read unfused and left with flash attention on."""
    case = CASES[4]
    model, x, _, _ = built(case)
    plain = run(built, case, "attention.raw").attributions
    blocks = [b.attn for b in model.vit.blocks]
    try:
        for attn in blocks:
            attn.use_flash_attention = True
        e = run(built, case, "attention.raw")
        assert all(a.use_flash_attention for a in blocks)
        assert max_diff(e.attributions, plain) < TOL
        for attn in blocks:
            attn.use_flash_attention, attn.save_attn = False, True
        with torch.no_grad():
            model(x)
        saved = blocks[-1].att_mat
        assert max_diff(plain, saved.mean(1).mean(1).reshape(2, 1, *case.grid)) < TOL
    finally:
        for attn in blocks:
            attn.use_flash_attention, attn.save_attn = False, False
            attn.att_mat = torch.Tensor()


def test_huggingface_implementation_is_switched_only_for_the_call(built: Build) -> None:
    case = CASES[5]
    model, _, _, _ = built(case)
    before = model.config._attn_implementation
    assert before != "eager"
    run(built, case, "attention.gae")
    assert model.config._attn_implementation == before

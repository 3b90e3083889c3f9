"""The three methods on real architectures (timm ViT, DeiT distilled, registers,
torchvision ViT, MONAI UNETR 3D, Hugging Face ViT), against references written in
conftest.py, with the model left exactly as found."""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import pytest
import torch
from conftest import (
    CASES,
    Case,
    max_diff,
    reference_attention,
    reference_gae,
    reference_raw,
    reference_rollout,
)
from torch import nn

from esegeta_core import explain
from esegeta_core.testing.zoo import fingerprint_changes, model_fingerprint

METHODS = ["attention.raw", "attention.rollout", "attention.gae"]
TOL = 1e-5


@cache
def built(name: str) -> tuple[nn.Module, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """The model, its input and the reference attention and scores (once per module)."""
    case = next(c for c in CASES if c.name == name)
    model = case.build()
    x = case.input()
    attns, scores = reference_attention(case, model, x)
    return model, x, attns, scores


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


def run(case: Case, method: str, **params: Any) -> Any:
    model, x, _, _ = built(case.name)
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
def test_raw_attention_is_the_class_row_of_the_last_block(case: Case) -> None:
    _, _, attns, _ = built(case.name)
    e = run(case, "attention.raw")
    expected = reference_raw(attns[-1], "mean", case.extra, case.grid)
    assert max_diff(e.attributions, expected) < TOL
    sal = e.saliency()
    assert sal.shape == (case.shape[0], 1, *case.shape[2:])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rollout_equals_the_reference(case: Case) -> None:
    _, _, attns, _ = built(case.name)
    e = run(case, "attention.rollout")
    expected = reference_rollout(attns, "mean", 0.0, case.extra, case.grid)
    assert max_diff(e.attributions, expected) < TOL
    assert len(e.extras["attention_blocks"]) == len(attns)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gae_equals_the_reference_with_a_target_per_item(case: Case) -> None:
    _, _, attns, scores = built(case.name)
    e = run(case, "attention.gae")
    expected = reference_gae(attns, scores, case.targets, case.extra, case.grid)
    assert float(expected.abs().max()) > 0
    assert max_diff(e.attributions, expected) < 1e-4 * max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("how", ["mean", "max", "min"])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[4]], ids=str)
def test_head_fusions_and_discard_ratio(case: Case, how: str) -> None:
    _, _, attns, _ = built(case.name)
    raw = run(case, "attention.raw", head_fusion=how, layer=_first_block(case))
    assert max_diff(raw.attributions, reference_raw(attns[0], how, case.extra, case.grid)) < TOL
    for ratio in (0.0, 0.5, 0.9):
        e = run(case, "attention.rollout", head_fusion=how, discard_ratio=ratio)
        expected = reference_rollout(attns, how, ratio, case.extra, case.grid)
        assert max_diff(e.attributions, expected) < TOL, ratio


def _first_block(case: Case) -> str:
    return {
        "timm_vit": "blocks.0",  # a block holding one attention module
        "torchvision_vit": "encoder.layers.encoder_layer_0.self_attention",
        "monai_unetr_3d": "vit.blocks.0.attn",
    }[case.name]


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=str)
def test_start_layer(case: Case) -> None:
    _, _, attns, scores = built(case.name)
    e = run(case, "attention.rollout", start_layer=-1)
    assert max_diff(e.attributions, reference_rollout(attns[-1:], "mean", 0.0, case.extra,
                                                      case.grid)) < TOL  # fmt: skip
    assert len(e.extras["attention_blocks"]) == 1
    e = run(case, "attention.gae", start_layer=1)
    expected = reference_gae(attns, scores, case.targets, case.extra, case.grid)
    full = reference_gae(attns[1:], scores, case.targets, case.extra, case.grid)
    assert max_diff(e.attributions, full) < 1e-4 * max(1.0, float(full.abs().max()))
    assert not torch.allclose(expected, full)


def test_query_mean_on_a_class_token_model() -> None:
    case = CASES[0]
    _, _, attns, _ = built(case.name)
    e = run(case, "attention.raw", query="mean")
    fused = attns[-1].detach().mean(1)
    expected = fused[:, 1:, 1:].mean(1).reshape(2, 1, *case.grid)
    assert max_diff(e.attributions, expected) < TOL
    assert e.extras["tokens"]["query"] == "mean of the patch tokens"


def test_gae_batch_equals_items_one_by_one() -> None:
    case = CASES[0]
    model, x, _, _ = built(case.name)
    both = explain(model, x, "attention.gae", target=[0, 3]).attributions
    one = explain(model, x[:1], "attention.gae", target=0).attributions
    two = explain(model, x[1:], "attention.gae", target=3).attributions
    assert max_diff(both, torch.cat([one, two])) < 1e-5
    other = explain(model, x, "attention.gae", target=[3, 0]).attributions
    assert not torch.allclose(both, other)


def test_monai_save_attn_agrees_and_flash_attention_is_restored() -> None:
    """MONAI's own ``save_attn`` (detached) agrees with the raw map; a block set to flash
    attention is read unfused and left with flash attention on."""
    case = CASES[4]
    model, x, _, _ = built(case.name)
    plain = run(case, "attention.raw").attributions
    blocks = [b.attn for b in model.vit.blocks]
    try:
        for attn in blocks:
            attn.use_flash_attention = True
        e = run(case, "attention.raw")
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


def test_huggingface_implementation_is_switched_only_for_the_call() -> None:
    case = CASES[5]
    model, _, _, _ = built(case.name)
    before = model.config._attn_implementation
    assert before != "eager"
    run(case, "attention.gae")
    assert model.config._attn_implementation == before

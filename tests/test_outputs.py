"""Output adapters: dicts, tuples, lists and objects with ``.logits`` are explained like
tensors, in explain(), evaluate(), patches, mixed precision and run configs."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from esegeta_core import InvalidModelError, explain
from esegeta_core.evaluation import evaluate
from esegeta_core.outputs import describe_output, select_output
from esegeta_core.testing import tiny_input, tiny_model


@dataclass
class Outputs:
    """Like a Hugging Face ModelOutput's attribute access."""

    logits: torch.Tensor
    hidden: tuple[torch.Tensor, ...] = ()


class Wrapped(nn.Module):
    """A tiny model whose forward returns ``kind`` around its logits."""

    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        y = self.inner(x)
        if self.kind == "torchvision":
            return OrderedDict(out=y, aux=y.detach() * 0.5)
        if self.kind == "logits_dict":
            return {"logits": y, "features": y.mean()}
        if self.kind == "single":
            return {"prediction": y}
        if self.kind == "tuple":
            return (y, y.detach() + 1)
        if self.kind == "list":
            return [y, y * 2]
        if self.kind == "object":
            return Outputs(logits=y, hidden=(x,))
        if self.kind == "ambiguous":
            return {"a": y, "b": y * 2}
        return y


KINDS = ["torchvision", "logits_dict", "single", "tuple", "list", "object"]


def test_auto_selection_reads_every_common_output() -> None:
    y = torch.rand(2, 3)
    assert select_output(y) is y
    assert select_output(OrderedDict(out=y, aux=y + 1)) is y
    assert select_output({"logits": y, "loss": torch.tensor(1.0)}) is y
    assert select_output({"x": y}) is y
    assert select_output((y, y + 1)) is y
    assert select_output([y]) is y
    assert select_output(Outputs(logits=y)) is y


def test_transformers_model_output_is_read_by_its_logits() -> None:
    modeling = pytest.importorskip("transformers.modeling_outputs")
    y = torch.rand(2, 3)
    out = modeling.ImageClassifierOutput(logits=y)
    assert select_output(out) is y


def test_ambiguous_output_names_what_it_found() -> None:
    with pytest.raises(InvalidModelError) as info:
        select_output({"a": torch.rand(2, 3), "b": torch.rand(2, 5)}, method="m.x")
    text = str(info.value)
    assert "'a': tensor(2, 3)" in text and "'b': tensor(2, 5)" in text
    assert "output=KEY" in text and "Method 'm.x'" in text


def test_explicit_selectors_and_their_errors() -> None:
    y, z = torch.rand(2, 3), torch.rand(2, 4)
    assert select_output({"a": y, "b": z}, "b") is z
    assert select_output((y, z), 1) is z
    assert select_output((y, z), -1) is z
    assert select_output(Outputs(logits=y), "logits") is y
    assert select_output((y, z), lambda out: out[1] * 1).shape == (2, 4)
    with pytest.raises(InvalidModelError, match="not in the model's output"):
        select_output({"a": y}, "c")
    with pytest.raises(InvalidModelError, match="out of range"):
        select_output((y,), 3)
    with pytest.raises(InvalidModelError, match="not a tuple or list"):
        select_output({"a": y}, 0)
    with pytest.raises(InvalidModelError, match="not a\\s+tensor"):
        select_output({"a": (y,)}, "a")
    assert "Outputs(logits: tensor(2, 3)" in describe_output(Outputs(logits=y, hidden=(y,)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_explain_reads_wrapped_outputs_like_the_plain_model(kind: str, task: str) -> None:
    plain = tiny_model(task)
    x = tiny_input(task)
    t = torch.tensor([1, 0])
    want = explain(plain, x, "acme.times_input", t, task=task).attributions
    got = explain(Wrapped(plain, kind), x, "acme.times_input", t, task=task)
    assert torch.allclose(got.attributions, want)
    assert "output" not in got.extras


def test_explicit_output_is_used_and_recorded() -> None:
    plain = tiny_model()
    x = tiny_input()
    model = Wrapped(plain, "ambiguous")
    with pytest.raises(InvalidModelError, match="'a': tensor"):
        explain(model, x, "acme.times_input", 0)
    e = explain(model, x, "acme.times_input", 0, output="b")
    want = explain(plain, x, "acme.times_input", 0).attributions * 2
    assert torch.allclose(e.attributions, want)
    assert e.extras["output"] == "b"


def test_outputs_under_patches_and_mixed_precision() -> None:
    plain = tiny_model("segmentation", 3)
    x = tiny_input("segmentation", 3, size=16)
    model = Wrapped(plain, "torchvision")
    patches = {"size": 8, "overlap": 0}
    want = explain(plain, x, "acme.times_input", 1, task="segmentation", patches=patches)
    got = explain(
        model, x, "acme.times_input", 1, task="segmentation", patches=patches, progress=False
    )
    assert torch.allclose(got.attributions, want.attributions)
    amp = explain(model, x, "acme.times_input", 1, task="segmentation", amp="bf16")
    assert amp.attributions.dtype == torch.float32
    assert torch.isfinite(amp.attributions).all()


def test_evaluate_reads_wrapped_outputs() -> None:
    plain = tiny_model()
    x = tiny_input()
    board = evaluate(
        {"plain": plain, "object": Wrapped(plain, "object"), "pair": Wrapped(plain, "ambiguous")},
        x,
        ["acme.times_input"],
        0,
        metrics=["deletion"],
        output={"pair": "a"},
        progress=False,
    )
    rows = {r["model"]: r for r in board.rows()}
    assert rows["plain"]["deletion"] == pytest.approx(rows["object"]["deletion"])
    assert rows["plain"]["deletion"] == pytest.approx(rows["pair"]["deletion"])

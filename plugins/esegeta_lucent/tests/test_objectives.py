"""The objective grammar and its errors."""

from __future__ import annotations

import pytest
import torch
from esegeta_lucent.objectives import Objective, Term, captured, parse_objective

from esegeta_core import InvalidParamsError, LayerNotFoundError, explain
from esegeta_core.model_state import count_hooks
from esegeta_core.testing import tiny_input, tiny_model

METHOD = "lucent.feature_visualization"
QUICK = {"steps": 1, "pad": 0, "jitter": 0, "scale": 0.0, "rotate": 0}


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("logit", (Term("logit"),)),
        ("logit:2", (Term("logit", channel=2),)),
        ("features.conv2", (Term("features.conv2"),)),
        ("features.conv2:3", (Term("features.conv2", channel=3),)),
        ("features.conv2:3@4,5", (Term("features.conv2", channel=3, position=(4, 5)),)),
        ("features.conv2 : 3 @ center", (Term("features.conv2", channel=3, position="center"),)),
        ("0:3", (Term("0", channel=3),)),
        (
            "features.conv2:3 + 0.5*features.conv2:5 - 2e-1 * features.conv1",
            (
                Term("features.conv2", channel=3),
                Term("features.conv2", 0.5, channel=5),
                Term("features.conv1", -0.2),
            ),
        ),
        ("-logit", (Term("logit", -1.0),)),
    ],
)
def test_grammar(text: str, terms: tuple[Term, ...]) -> None:
    assert parse_objective(text) == terms


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        "features.conv2:",
        "features.conv2:x",
        "a b",
        "features.conv2@1,1",
        "logit@1",
        "features.conv2:1 features.conv2:2",
        "2*",
        "conv2:1 +",
        "conv2:1@",
    ],
)
def test_bad_grammar(text: str) -> None:
    with pytest.raises(ValueError, match="objective"):
        parse_objective(text)


def test_bad_grammar_is_rejected_before_running() -> None:
    model, x = tiny_model(), tiny_input()
    with pytest.raises(InvalidParamsError, match="LAYER:CHANNEL"):
        explain(model, x, METHOD, objective="features.conv2:", **QUICK)


def test_unknown_layer_names_near_matches() -> None:
    model, x = tiny_model(), tiny_input()
    with pytest.raises(LayerNotFoundError, match="features.conv2"):
        explain(model, x, METHOD, objective="logit + features.conv_2:1", **QUICK)


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        ("features.conv2:8", r"channel of 'features.conv2' 8, but there are 8"),
        ("features.conv2:1@9,0", "outside layer 'features.conv2'"),
        ("features.conv2:1@1,1,1", "outside layer"),
        ("logit:4", "class 4, but there are 4"),
        ("fc:1@0,0", "outside layer 'fc'"),
    ],
)
def test_out_of_range_terms(objective: str, message: str) -> None:
    model, x = tiny_model(), tiny_input()
    with pytest.raises(InvalidParamsError, match=message):
        explain(model, x, METHOD, objective=objective, **QUICK)


def test_values_per_item() -> None:
    acts = {"l": torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)}
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([1, 0])

    def value(text: str) -> list[float]:
        return Objective(parse_objective(text), target, METHOD).values(scores, acts).tolist()

    assert value("logit") == [2.0, 3.0]
    assert value("logit:0") == [1.0, 3.0]
    assert value("l:1") == [5.5, 17.5]
    assert value("l:1@1,0") == [6.0, 18.0]
    assert value("l:1@center") == [7.0, 19.0]
    assert value("l") == pytest.approx([acts["l"][i].pow(2).mean().item() for i in range(2)])
    assert value("2*l:1 - logit") == [9.0, 32.0]
    for text in ("2*l:1 - logit", "-0.5*l + l:1@center", "logit:1 + l:0@1,0"):
        assert str(Objective(parse_objective(text), target, METHOD)) == text


def test_captured_takes_the_latest_outputs_and_removes_its_hooks() -> None:
    model, x = tiny_model().eval(), tiny_input()
    layers = {"a": model.features.conv1, "b": model.features.conv2}
    second = model.features[:5](2 * x)  # conv1 .. conv2
    with captured(layers) as take:
        assert take() == {}
        model(x)
        first = take()
        assert set(first) == {"a", "b"} and first["a"].shape[0] == x.shape[0]
        assert take() == {}  # taken: only outputs of later passes come back
        model(x)
        model(2 * x)
        assert torch.equal(take()["b"], second)
    assert count_hooks(model) == 0

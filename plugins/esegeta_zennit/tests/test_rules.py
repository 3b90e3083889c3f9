"""The batch-norm merge plan on awkward orders, the rules given to unmerged batch
norms, parameters, refusals, clean-up on error and light imports."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn
from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
from zennit.rules import Epsilon
from zennit.types import BatchNorm

from esegeta_core import InvalidParamsError, NotApplicableError, explain

TARGET = torch.tensor([2, 0])
TOL = 1e-6
CONV = {2: nn.Conv2d, 3: nn.Conv3d}
BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}

Builder = Callable[..., nn.Module]
Inputs = Callable[..., torch.Tensor]
Reference = Callable[..., torch.Tensor]
Ready = Callable[[nn.Module], nn.Module]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


class PreActivation(nn.Module):
    """conv -> relu -> bn -> conv (the batch norm's input is an activation)."""

    def __init__(self, rank: int = 2) -> None:
        super().__init__()
        self.conv1 = CONV[rank](3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.bn = BN[rank](6)
        self.conv2 = CONV[rank](6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.bn(self.relu(self.conv1(x)))).flatten(2).mean(-1)


class SharedOutput(nn.Module):
    """The convolution's output feeds the batch norm and a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = torch.relu(self.bn(y)) + torch.relu(y)
        return self.head(z.mean((2, 3)))


class Reused(nn.Module):
    """One convolution called twice (shared weights), a batch norm after the second
    call; one batch norm called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.shared_bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.shared_bn(self.conv(x)))
        x = self.relu(self.shared_bn(self.bn(self.conv(x))))
        return self.head(x.mean((2, 3)))


class Mlp(nn.Module):
    """linear -> BatchNorm1d: mergeable."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3 * 8 * 8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.bn(self.fc1(x.flatten(1)))))


@pytest.fixture
def ready(randomise_batch_norms: Callable[..., nn.Module]) -> Ready:
    """``model -> model`` with randomised batch norms, in eval mode."""

    def prepare(model: nn.Module) -> nn.Module:
        torch.manual_seed(0)
        return randomise_batch_norms(model).eval()

    return prepare


@pytest.mark.parametrize("rank", [2, 3])
def test_batch_norm_after_an_activation_gets_the_epsilon_rule(
    rank: int, ready: Ready, inputs: Inputs, zennit_lrp: Reference
) -> None:
    torch.manual_seed(0)
    model = ready(PreActivation(rank))
    x = inputs(rank)
    e = explain(model, x, "zennit.lrp", target=TARGET, epsilon=1e-4)
    assert e.extras["merged_batch_norms"] == {}
    assert e.extras["epsilon_batch_norms"] == ["bn"]
    # zennit, told to give batch norms the epsilon rule (it would pass them through)
    composite = EpsilonPlusFlat(
        epsilon=1e-4,
        layer_map=[(BatchNorm, Epsilon(epsilon=1e-4))],
        canonizers=[SequentialMergeBatchNorm()],
    )
    theirs = zennit_lrp(model, x, TARGET, composite)
    assert max_diff(e.attributions, theirs) <= TOL * float(theirs.abs().max())


def test_convolution_output_used_twice_is_not_merged(ready: Ready, inputs: Inputs) -> None:
    model = ready(SharedOutput())
    e = explain(model, inputs(2), "zennit.lrp", target=TARGET)
    assert e.extras["merged_batch_norms"] == {}
    assert e.extras["epsilon_batch_norms"] == ["bn"]
    assert bool(torch.isfinite(e.attributions).all())


def test_shared_parameters_are_not_merged(ready: Ready, inputs: Inputs) -> None:
    model = ready(Reused())
    e = explain(model, inputs(2, size=8), "zennit.lrp", target=TARGET)
    assert e.extras["merged_batch_norms"] == {}
    assert sorted(e.extras["epsilon_batch_norms"]) == [
        "bn", "shared_bn.sites.0", "shared_bn.sites.1",
    ]  # fmt: skip
    assert e.extras["preparation"]["split_modules"] == {"conv": 2, "shared_bn": 2, "relu": 2}
    assert bool(torch.isfinite(e.attributions).all())


def test_linear_then_batch_norm_1d_is_merged(
    ready: Ready, inputs: Inputs, zennit_lrp: Reference
) -> None:
    model = ready(Mlp())
    x = inputs(2, size=8)
    e = explain(model, x, "zennit.lrp", target=TARGET)
    assert e.extras["merged_batch_norms"] == {"bn": "fc1"}
    theirs = zennit_lrp(model, x, TARGET, EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]))
    assert max_diff(e.attributions, theirs) <= TOL * float(theirs.abs().max())


def test_identity_and_dropout_between_convolution_and_batch_norm_keep_the_merge(
    ready: Ready, inputs: Inputs, zennit_lrp: Reference
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Identity(), nn.Dropout(), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(3),
    )  # fmt: skip
    x = inputs(2)
    model(x)
    model = ready(model)
    e = explain(model, x, "zennit.lrp", target=TARGET, composite="epsilon_plus")
    assert e.extras["merged_batch_norms"] == {"3": "0"}
    # zennit's SequentialMergeBatchNorm does not merge here (Identity in between): name it
    theirs = zennit_lrp(
        model, x, TARGET, EpsilonPlus(canonizers=[NamedMergeBatchNorm([(["0"], "3")])])
    )
    assert max_diff(e.attributions, theirs) <= TOL * float(theirs.abs().max())


def test_merging_can_be_switched_off(plain_cnn: Builder, inputs: Inputs) -> None:
    model = plain_cnn(2)
    x = inputs(2)
    merged = explain(model, x, "zennit.lrp", target=TARGET)
    kept = explain(model, x, "zennit.lrp", target=TARGET, merge_batch_norm=False)
    assert kept.extras["merged_batch_norms"] == {}
    assert kept.extras["epsilon_batch_norms"] == ["bn1", "bn2"]
    assert not torch.allclose(merged.attributions, kept.attributions)


def test_layer_lrp_at_a_batch_norm_keeps_the_merge_and_reads_input(
    plain_cnn: Builder, inputs: Inputs
) -> None:
    model = plain_cnn(2)
    x = inputs(2)
    out = explain(model, x, "zennit.layer_lrp", target=TARGET, layer="bn2")
    inp = explain(
        model, x, "zennit.layer_lrp", target=TARGET, layer="bn2", attribute_to_layer_input=True
    )
    assert out.extras["merged_batch_norms"] == {"bn1": "conv1", "bn2": "conv2"}
    assert out.attributions.shape == inp.attributions.shape == (2, 8, 8, 8)
    # a merged batch norm passes relevance through: its input and output relevance agree
    torch.testing.assert_close(out.attributions, inp.attributions)


def test_per_channel_box_bounds_and_ignored_biases_equal_zennit(
    plain_cnn: Builder, inputs: Inputs, zennit_lrp: Reference
) -> None:
    model = plain_cnn(2)
    x = inputs(2)
    low = torch.tensor([-2.0, -2.5, -3.0]).view(1, 3, 1, 1)
    high = torch.tensor([2.0, 2.5, 3.0]).view(1, 3, 1, 1)
    e = explain(
        model, x, "zennit.lrp", target=TARGET, composite="epsilon_gamma_box", low=low,
        high=high, ignore_bias=True,
    )  # fmt: skip
    composite = EpsilonGammaBox(
        low=low.expand_as(x), high=high.expand_as(x), zero_params=["bias"],
        canonizers=[SequentialMergeBatchNorm()],
    )  # fmt: skip
    theirs = zennit_lrp(model, x, TARGET, composite)
    assert max_diff(e.attributions, theirs) <= TOL * float(theirs.abs().max())


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"gamma": 0.5}, "gamma only applies with composite='epsilon_gamma_box'"),
        ({"composite": "epsilon_plus", "low": 0.0, "high": 1.0}, "high, low only apply"),
        ({"composite": "epsilon_gamma_box", "low": 1.0, "high": 1.0}, "smaller than high"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"stabilizer": -1.0}, "stabilizer"),
        ({"composite": "epsilon"}, "composite"),
        ({"composite": "epsilon_gamma_box", "low": torch.zeros(5)}, "does not broadcast"),
    ],
)
def test_bad_params_are_rejected(
    params: dict, words: str, plain_cnn: Builder, inputs: Inputs
) -> None:
    with pytest.raises(InvalidParamsError, match=words):
        explain(plain_cnn(2), inputs(2), "zennit.lrp", target=TARGET, **params)


class WithBilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Bilinear(4, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        return self.mix(h, h)


def test_layer_without_a_rule_is_refused(inputs: Inputs) -> None:
    with pytest.raises(NotApplicableError, match=r"Bilinear.*captum\.integrated_gradients"):
        explain(WithBilinear().eval(), inputs(2), "zennit.lrp", target=TARGET)


def test_merges_and_hooks_are_undone_when_the_backward_pass_fails(
    monkeypatch: pytest.MonkeyPatch, plain_cnn: Builder, inputs: Inputs
) -> None:
    """The plugin's own clean-up, without the core's restoration behind it."""
    from esegeta_zennit.lrp import relevance
    from esegeta_zennit.params import LRPParams
    from esegeta_zennit.plan import plan_rules
    from zennit.attribution import Gradient

    model = plain_cnn(2, bias=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = inputs(2)
    plan = plan_rules(model, x)
    assert len(plan.merges) == 2

    def broken(self, input, attr_output_fn):
        assert model.conv1.bias is not None, "merged while running"
        raise RuntimeError("boom")

    monkeypatch.setattr(Gradient, "grad", broken)
    with pytest.raises(RuntimeError, match="boom"):
        relevance(model, x, TARGET, LRPParams(), plan, "zennit.lrp")
    assert model.conv1.bias is None and model.conv2.bias is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks)


def test_import_is_light() -> None:
    code = "import sys, esegeta_zennit; print('zennit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_methods_command_lists_the_parameters() -> None:
    from esegeta_core.cli import main

    out = io.StringIO()
    assert main(["methods", "zennit.lrp"], out=out) == 0
    text = out.getvalue()
    for name in ("composite", "epsilon", "stabilizer", "gamma", "low", "high"):
        assert name in text
    assert "epsilon_gamma_box" in text

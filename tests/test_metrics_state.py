"""Every metric that calls the model runs it in eval mode and leaves it as it was found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esegeta_core import InvalidModelError, ScoreModel
from esegeta_core.evaluation import (
    aopc,
    cascading_randomisation,
    deletion,
    infidelity,
    insertion,
    max_sensitivity,
    method_explain_fn,
)
from esegeta_core.model_state import count_hooks
from esegeta_core.targets import MultiClassScores
from esegeta_core.testing import tiny_input, tiny_model


def gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    return g


METRICS = {  # name: (call, the per-item result field)
    "infidelity": (lambda m, x, t, a: infidelity(m, x, t, a, n_samples=2), "infidelity"),
    "max_sensitivity": (
        lambda m, x, t, a: max_sensitivity(m, x, t, gradient, n_samples=2),
        "sensitivity",
    ),
    "aopc": (lambda m, x, t, a: aopc(m, x, t, a, grid=4, steps=3), "aopc"),
    "deletion": (lambda m, x, t, a: deletion(m, x, t, a, steps=3), "auc"),
    "insertion": (lambda m, x, t, a: insertion(m, x, t, a, steps=3), "auc"),
    "cascading_randomisation": (
        lambda m, x, t, a: cascading_randomisation(m, x, t, gradient, layers="children"),
        "fails",
    ),
}


@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("rank", [2, 3])
def test_model_state_is_restored(name, rank):
    inner = tiny_model("segmentation", rank)
    model = ScoreModel(inner, MultiClassScores()).train()
    frozen = inner.encoder.conv1.bias
    frozen.requires_grad_(False)
    inner.head.weight.grad = torch.ones_like(inner.head.weight)
    grad = inner.head.weight.grad
    modes = []
    inner.register_forward_hook(lambda m, i, o: modes.append(m.training))
    hooks = count_hooks(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = tiny_input("segmentation", rank, batch=2)
    t = torch.tensor([0, 1])
    a = torch.rand_like(x)
    call, field = METRICS[name]
    out = call(model, x, t, a)
    assert modes and not any(modes)  # every forward ran in eval mode
    assert all(m.training for m in model.modules())
    assert count_hooks(model) == hooks
    assert not frozen.requires_grad and inner.head.weight.grad is grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # results are frozen dataclasses of CPU tensors with one value per item
    values = getattr(out, field)
    assert values.device.type == "cpu" and values.shape == (2,)
    with pytest.raises(AttributeError):
        out.foo = 1


def test_model_must_be_a_module_returning_class_scores():
    x = tiny_input("segmentation", 2, batch=2)
    a = torch.rand_like(x)
    with pytest.raises(InvalidModelError, match="torch.nn.Module"):
        deletion(lambda v: v, x, 0, a)
    with pytest.raises(InvalidModelError, match="ScoreModel"):
        deletion(tiny_model("segmentation", 2), x, 0, a)


def test_method_explain_fn_runs_an_installed_method(demo):
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2)
    fn = method_explain_fn("demo.grad_x_input", scale=2.0)
    out = max_sensitivity(model, x, 1, fn, n_samples=2)
    assert out.sensitivity.shape == (2,)
    t = torch.tensor([1, 1])
    assert torch.allclose(fn(model, x, t), 2 * gradient(model, x, t) * x, atol=1e-6)

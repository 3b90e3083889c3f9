"""The fast subset of the model zoo, every installed method on each model: no call may
fail (a backend exception, a bad map, a changed model), and at least 95% of the calls
that apply must succeed. ``nox -s zoo`` runs the full zoo."""

from __future__ import annotations

import warnings

import pytest
import torch

from esegeta_core.testing.zoo import ZOO, ZooResult, run_zoo, summarize

for _module in ("torchvision", "timm", "monai", "transformers"):
    pytest.importorskip(_module)

FAST = [m for m in ZOO if m.fast]
_RESULTS: dict[str, list[ZooResult]] = {}


@pytest.mark.parametrize("spec", FAST, ids=lambda m: m.name)
def test_every_method_on_a_real_architecture(spec) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_zoo([spec])
    _RESULTS[spec.name] = results
    failures = [f"{r.method}: {r.reason}" for r in results if r.status == "failed"]
    assert not failures, "\n".join(failures)
    refused = [f"{r.method}: {r.reason}" for r in results if r.status == "refused"]
    assert not refused, "\n".join(refused)
    # the neuron methods explain a neuron that is on (one that is off has a zero map)
    off = [r.method for r in results if "switches it off" in r.warning]
    assert not off, off


def test_the_subset_succeeds_on_95_percent_of_applicable_calls() -> None:
    if len(_RESULTS) < len(FAST):
        pytest.skip("runs after the per-model tests of this file")
    summary = summarize([r for rs in _RESULTS.values() for r in rs])
    assert summary.success_rate >= 0.95, summary
    assert summary.applicable >= 0.8 * summary.calls


def test_a_call_whose_maps_came_back_with_a_warning_is_counted() -> None:
    """An ok call keeps its map's warnings (an item's map zero or one value everywhere),
    so a zoo run shows how many maps say nothing, not only how many calls ran."""
    from torch import nn

    from esegeta_core.testing.zoo import ZooModel, run_zoo_case

    class Constant(nn.Module):
        """Scores that do not depend on the input: every gradient is zero."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.bias = nn.Parameter(torch.ones(4))

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.conv(x).mean((2, 3)).sum(1, keepdim=True) * 0 + self.bias

    spec = ZooModel("constant", "torchvision", "classification", (2, 3, 16, 16), Constant)
    model = Constant().eval()
    result = run_zoo_case(spec, "captum.saliency", model, spec.input())
    assert result.status == "ok" and "zero everywhere" in result.warning
    from esegeta_core.testing import tiny_input, tiny_model

    x = tiny_input()
    real = ZooModel("tiny", "torchvision", "classification", tuple(x.shape), tiny_model)
    plain = run_zoo_case(real, "captum.saliency", tiny_model(), x)
    assert plain.status == "ok" and plain.warning == ""
    summary = summarize([result, plain])
    assert summary.ok == 2 and summary.warned == 1


def test_the_zoo_explains_a_neuron_that_is_on() -> None:
    """With random weights many channels of ResNet-18's last block are 0 at the centre
    after their ReLU: the zoo picks one that is on for every item."""
    from esegeta_core.testing.zoo import active_neuron

    spec = next(m for m in ZOO if m.name == "torchvision.resnet18")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = spec.build().eval()
    x = spec.input()
    (channel,) = active_neuron(spec, model, x)  # type: ignore[misc]
    seen: list[torch.Tensor] = []
    handle = model.layer4.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert bool((seen[0][:, channel, 1, 1] > 0).all())
    assert bool((seen[0][:, 1, 1, 1] == 0).all())  # the zoo's old fixed choice was off


def test_a_neuron_the_caller_gives_is_kept_and_none_is_sought_without_neuron_methods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """run_zoo's own active neuron replaces only the zoo's default selector, and is
    looked for only when a neuron method runs."""
    import esegeta_core.testing.zoo as zoo

    seen: list[dict] = []
    sought: list[str] = []
    monkeypatch.setattr(zoo, "run_zoo_case", lambda spec, m, model, x, params: seen.append(params))
    real = zoo.active_neuron
    monkeypatch.setattr(
        zoo,
        "active_neuron",
        lambda spec, model, x: sought.append(spec.name) or real(spec, model, x),
    )
    spec = next(m for m in ZOO if m.name == "torchvision.resnet18")
    zoo.run_zoo([spec], ["captum.saliency"])
    assert sought == []
    given = {"captum.neuron_gradient": {"neuron_selector": (3,)}}
    zoo.run_zoo([spec], ["captum.neuron_gradient", "captum.neuron_deep_lift"], params=given)
    assert seen[-2]["neuron_selector"] == (3,)  # the caller's
    assert seen[-1]["neuron_selector"] != (1,)  # the zoo's active one
    assert sought == [spec.name]

"""explain(): targets, devices, segmentation wrappers, layer maps, seeds, extras."""

from __future__ import annotations

import warnings

import pytest
import torch

import esegeta_core as ec
from esegeta_core.testing import tiny_input, tiny_model


def _grad_x_input(model, x, target):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return g * x.detach()


def test_predicted_class_is_the_default_target(demo):
    model, x = tiny_model(), tiny_input()
    e = ec.explain(model, x, "demo.grad_x_input")
    assert torch.equal(e.target, model(x).argmax(1))
    assert torch.allclose(e.attributions, _grad_x_input(model, x, e.target))
    assert e.method == "demo.grad_x_input" and e.plugin == "demo"
    assert e.seconds >= 0 and e.params.scale == 1.0


@pytest.mark.parametrize("target", [2, [1, 3], torch.tensor([3, 0]), (0, 0)])
def test_targets_normalised_to_one_class_per_item(demo, target):
    model, x = tiny_model(), tiny_input()
    e = ec.explain(model, x, "demo.grad_x_input", target=target)
    expected = torch.as_tensor(target).long().expand(2)
    assert torch.equal(e.target, expected)
    assert torch.allclose(e.attributions, _grad_x_input(model, x, expected))


def test_explicit_targets_cost_no_extra_forward_pass(demo):
    model, x = tiny_model(), tiny_input()
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        ec.explain(model, x, "demo.grad_x_input", target=1)
        assert len(calls) == 1  # the method's own pass checks the target
        ec.explain(model, x, "demo.grad_x_input")
        assert len(calls) == 3  # None: one no-grad pass finds the predicted class
    finally:
        handle.remove()
    with pytest.raises(ec.InvalidTargetError, match="out of range"):
        ec.explain(model, x, "demo.grad_x_input", target=7)
    assert not model._forward_hooks and not model.training


@pytest.mark.parametrize("target", [None, 1])
def test_torchscript_models_are_explained(demo, target):
    model, x = tiny_model(), tiny_input()
    with warnings.catch_warnings():  # torch.jit.script is deprecated in recent torch
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    e = ec.explain(scripted, x, "demo.grad_x_input", target=target)
    expected = ec.explain(model, x, "demo.grad_x_input", target=target)
    assert torch.allclose(e.attributions, expected.attributions, atol=1e-6)
    with pytest.raises(ec.InvalidTargetError, match="out of range"):
        ec.explain(scripted, x, "demo.grad_x_input", target=9)


def test_params_are_validated_and_used(demo):
    model, x = tiny_model(), tiny_input()
    a = ec.explain(model, x, "demo.grad_x_input", target=1).attributions
    b = ec.explain(model, x, "demo.grad_x_input", target=1, scale=3.0).attributions
    assert torch.allclose(b, 3 * a)


def test_short_method_names_resolve_when_unique(demo):
    e = ec.explain(tiny_model(), tiny_input(), "grad_x_input")
    assert e.method == "demo.grad_x_input"


def test_layer_maps_are_upsampled_by_saliency(demo):
    model, x = tiny_model(rank=3), tiny_input(rank=3)
    e = ec.explain(model, x, "demo.layer_mean", layer="features.conv2")
    assert e.attributions.shape == (2, 1, 4, 4, 4)
    assert e.extras == {"layer": "features.conv2"}
    sal = e.saliency()
    assert sal.shape == (2, 1, 8, 8, 8)
    assert torch.allclose(sal.mean(), e.attributions.mean(), atol=1e-5)


def test_saliency_reductions(demo):
    model, x = tiny_model(), tiny_input()
    e = ec.explain(model, x, "demo.grad_x_input", target=0)
    a = e.attributions
    assert torch.allclose(e.saliency(), a.sum(1, keepdim=True))
    assert torch.allclose(e.saliency("abs"), a.abs().sum(1, keepdim=True))
    assert torch.allclose(e.saliency("l2"), a.norm(dim=1, keepdim=True))
    with pytest.raises(ec.InvalidInputError):
        e.saliency("bogus")


def test_seed_makes_random_methods_repeatable_without_touching_global_rng(demo):
    model, x = tiny_model(), tiny_input()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = ec.explain(model, x, "demo.noisy", seed=7).attributions
    assert torch.equal(torch.random.get_rng_state(), before)
    b = ec.explain(model, x, "demo.noisy", seed=7).attributions
    c = ec.explain(model, x, "demo.noisy", seed=8).attributions
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_model_state_restored_even_for_a_leaky_method(demo, caplog):
    model, x = tiny_model(), tiny_input()
    model.train()
    ec.explain(model, x, "demo.leaky")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert not model._forward_hooks and not model.features._forward_hooks
    assert any("left 1 hook" in r.getMessage() for r in caplog.records)


def test_model_runs_in_eval_mode_during_the_call(demo):
    model, x = tiny_model(), tiny_input()
    model.train()
    e = ec.explain(model, x, "demo.grad_x_input", target=0)
    model.eval()
    assert torch.allclose(e.attributions, _grad_x_input(model, x, e.target))


def test_method_failures_are_wrapped_with_method_and_plugin(demo):
    with pytest.raises(
        ec.MethodFailedError, match=r"demo\.broken.*plugin 'demo'.*exploded"
    ) as info:
        ec.explain(tiny_model(), tiny_input(), "demo.broken")
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_inputs_follow_the_model_device_and_are_not_modified(demo):
    model, x = tiny_model(), tiny_input()
    x0 = x.clone()
    e = ec.explain(model, x, "demo.grad_x_input")
    assert e.attributions.device == next(model.parameters()).device
    assert torch.equal(x, x0) and not x.requires_grad


# --- segmentation -----------------------------------------------------------------


@pytest.mark.parametrize("rank", [2, 3])
def test_multi_class_reduces_every_spatial_dim(demo, rank):
    model, x = tiny_model("segmentation", rank), tiny_input("segmentation", rank)
    out = model(x)
    win = out.argmax(1, keepdim=True)
    manual = torch.stack(
        [(out[:, c] * (win[:, 0] == c)).flatten(1).sum(1) for c in range(out.shape[1])], 1
    )
    scores = ec.MultiClassScores()(out)
    assert scores.shape == (2, 3)
    assert torch.allclose(scores, manual)
    present = int(win.flatten().mode().values)  # a class that wins somewhere
    e = ec.explain(model, x, "demo.grad_x_input", target=present, task="segmentation")
    wrapped = ec.ScoreModel(model, ec.MultiClassScores())
    assert torch.allclose(e.attributions, _grad_x_input(wrapped, x, e.target), atol=1e-6)
    assert e.attributions.abs().sum() > 0


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_one_class_score_equals_the_full_reduction_ties_and_nan_included(classes):
    """``target_scores`` reduces only the asked class per input (no gradients) and
    gives exactly the full reduction's entries: ties go to the first class, a NaN logit
    propagates to its own class's score as before."""
    torch.manual_seed(0)
    out = torch.randint(-2, 3, (6, classes, 4, 5, 3)).float()  # many ties
    out[5, classes - 1, 0, 0, 0] = float("nan")
    full = ec.MultiClassScores()(out)
    picked = torch.randint(0, classes, (6,))
    picked[5] = classes - 1
    one = ec.MultiClassScores().class_scores(out, picked)
    want = full.gather(1, picked[:, None]).squeeze(1)
    assert torch.equal(one[:5], want[:5]) and one[5].isnan() and want[5].isnan()

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    wrapped = ec.ScoreModel(Net(), ec.MultiClassScores())
    with torch.no_grad():
        assert torch.equal(wrapped.target_scores(out[:5], picked[:5]), want[:5])
        handle = wrapped.register_forward_hook(lambda m, a, o: seen.append(o))
        seen: list[torch.Tensor] = []
        wrapped.target_scores(out[:5], picked[:5])
        assert len(seen) == 1  # a hook on the scores sees them: the full path ran
        handle.remove()


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_class_scores_without_host_reads_equal_the_per_class_path(classes):
    """The path class_scores takes for targets on a GPU (every class's sum, then each
    item's; more classes: the classes read once) gives the per-class path's scores,
    ties and NaN included."""
    torch.manual_seed(1)
    out = torch.randint(-2, 3, (7, classes, 4, 5, 3)).float()
    out[6, classes - 1, 0, 0, 0] = float("nan")
    picked = torch.randint(0, classes, (7,))
    picked[6] = classes - 1
    reduce = ec.MultiClassScores()
    want = reduce.class_scores(out, picked)
    got = reduce.gathered_class_sums(out, picked)
    assert torch.equal(got[:6], want[:6]) and got[6].isnan() and want[6].isnan()


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("items", [1, 3, 1000])
def test_reductions_in_cache_blocks_equal_the_full_reduction(classes, items, monkeypatch):
    """The CPU sums take the items a cache block at a time, with the winners marked by
    comparisons written as 1.0 and 0.0: the same scores as the full reduction whatever
    the block (one item, a few, all), ties, NaN and infinite logits included."""
    from esegeta_core import targets

    monkeypatch.setattr(targets, "CACHE_BLOCK", items * classes * 60)  # items per block
    torch.manual_seed(2)
    out = torch.randint(-2, 3, (7, classes, 4, 5, 3)).float()
    out[5, classes - 1, 0, 0, 0] = float("nan")
    out[6, 0, 1, 1, 1] = float("inf")
    out[6, 1, 2, 2, 2] = -float("inf")
    reduce = ec.MultiClassScores()
    full = reduce(out)
    assert len(targets._cache_blocks(out.flatten(2))) == -(-7 // items)
    torch.testing.assert_close(reduce.class_sums(out), full, rtol=0, atol=0, equal_nan=True)
    picked = torch.tensor([0, 1, classes - 1, 0, 1, classes - 1, 1])
    want = full.gather(1, picked[:, None]).squeeze(1)
    got = reduce.class_scores(out, picked)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert got[5].isnan() and not got[:5].isnan().any()


def test_class_scores_with_gradients_keep_their_graph():
    """Called with logits that need a gradient, the one-class sums do not multiply in
    the reused scratch: every block's product is kept for the backward pass, which
    gives the full reduction's gradient."""
    from esegeta_core import targets

    torch.manual_seed(3)
    out = torch.randn(4, 2, 6, 6, requires_grad=True)
    picked = torch.tensor([1, 1, 0, 1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(targets, "CACHE_BLOCK", 2 * 36)  # one item per block: scratch reused
        got = ec.MultiClassScores().class_scores(out, picked)
        (grad,) = torch.autograd.grad(got.sum(), out)
    want = ec.MultiClassScores()(out).gather(1, picked[:, None]).squeeze(1)
    (expected,) = torch.autograd.grad(want.sum(), out)
    torch.testing.assert_close(got, want.detach())
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_class_sums_without_gradients_equal_the_full_reduction(classes):
    """Without gradients the wrapper sums each class's winning logits class by class
    (at most FEW_CLASSES classes) instead of building per-pixel scores: the same
    scores, ties and NaN included; a hook on the per-pixel sum, or gradients, take the
    full path."""
    torch.manual_seed(0)
    out = torch.randint(-2, 3, (6, classes, 4, 5, 3)).float()
    out[5, classes - 1, 0, 0, 0] = float("nan")
    full = ec.MultiClassScores()(out)
    sums = ec.MultiClassScores().class_sums(out)
    assert (sums is None) == (classes > 3)

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    wrapped = ec.ScoreModel(Net(), ec.MultiClassScores())
    calls: list[int] = []
    original = ec.MultiClassScores.pixel_scores

    def spy(self, o):
        calls.append(1)
        return original(self, o)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ec.MultiClassScores, "pixel_scores", spy)
        with torch.no_grad():
            got = wrapped(out)
        assert len(calls) == (0 if classes <= 3 else 1)
        assert torch.equal(got.nan_to_num(7.0), full.nan_to_num(7.0))
        assert got[5, classes - 1].isnan()
        handle = wrapped.total.register_forward_hook(lambda m, a, o: None)
        with torch.no_grad():
            assert torch.equal(wrapped(out).nan_to_num(7.0), full.nan_to_num(7.0))
        handle.remove()
        assert len(calls) == (1 if classes <= 3 else 2)  # the hooked sum ran
        leaf = out.clone().requires_grad_(True)
        assert torch.equal(wrapped(leaf).detach().nan_to_num(7.0), full.nan_to_num(7.0))
        assert len(calls) == (2 if classes <= 3 else 3)  # with gradients: the full path


def test_threshold_wrapper_keeps_the_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 6, 6, 6, requires_grad=True)
    scores = ec.ThresholdScores(0.5)(logits)
    above = (logits.detach() > 0).float()
    assert torch.allclose(scores[:, 1], (logits.detach() * above).flatten(1).sum(1))
    assert torch.allclose(scores[:, 0], (-logits.detach() * (1 - above)).flatten(1).sum(1))
    (grad,) = torch.autograd.grad(scores[:, 1].sum(), logits)
    assert torch.equal(grad, above)  # counting voxels would give zero gradient here


def test_threshold_wrapper_on_probabilities_and_otsu():
    probs = torch.tensor([[[0.1, 0.2, 0.8, 0.9]]])
    s = ec.ThresholdScores(0.5, logits=False)(probs)
    assert torch.allclose(s, torch.tensor([[0.9 + 0.8, 0.8 + 0.9]]))
    s_otsu = ec.ThresholdScores("otsu", logits=False)(probs)
    assert torch.allclose(s_otsu, s)
    with pytest.raises(ec.InvalidTargetError):
        ec.ThresholdScores(1.5)


def test_threshold_wrapper_through_explain(demo):
    class OneChannel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(0)
    model, x = OneChannel(), tiny_input("segmentation", 3)
    e = ec.explain(
        model, x, "demo.grad_x_input", target=1, task="segmentation", wrapper="threshold"
    )
    assert e.attributions.abs().sum() > 0
    with pytest.raises(ec.InvalidModelError, match="multi_class"):
        ec.explain(
            tiny_model("segmentation", 3),
            x,
            "demo.grad_x_input",
            task="segmentation",
            wrapper="threshold",
        )


def test_region_target_explains_only_inside_the_mask(demo):
    model, x = tiny_model("segmentation", 2), tiny_input("segmentation", 2)
    mask = torch.zeros(16, 16)
    mask[4:8, 4:8] = 1
    e = ec.explain(model, x, "demo.grad_x_input", target=ec.Region(2, mask), task="segmentation")
    assert torch.equal(e.target, torch.tensor([2, 2]))
    manual_model = ec.ScoreModel(model, lambda out: (out * mask).flatten(2).sum(-1))
    assert torch.allclose(e.attributions, _grad_x_input(manual_model, x, e.target), atol=1e-6)
    with pytest.raises(ec.InvalidTargetError, match="empty"):
        ec.explain(
            model, x, "demo.grad_x_input", target=ec.Region(2, mask * 0), task="segmentation"
        )
    with pytest.raises(ec.InvalidTargetError, match="does not match"):
        ec.explain(
            model,
            x,
            "demo.grad_x_input",
            target=ec.Region(2, torch.ones(5, 5)),
            task="segmentation",
        )


def test_callable_wrapper_and_layer_names_of_the_users_model(demo):
    model, x = tiny_model("segmentation", 2), tiny_input("segmentation", 2)
    e = ec.explain(
        model,
        x,
        "demo.layer_mean",
        task="segmentation",
        wrapper=lambda out: out.mean((2, 3)),
        layer="encoder.conv2",
    )
    assert e.attributions.shape == (2, 1, 8, 8)
    with pytest.raises(ec.LayerNotFoundError, match="encoder.conv2"):
        ec.explain(model, x, "demo.layer_mean", task="segmentation", layer="encoder.conv3")


def test_segmentation_output_without_task_gets_a_hint(demo):
    with pytest.raises(ec.InvalidModelError, match="task='segmentation'"):
        ec.explain(tiny_model("segmentation"), tiny_input("segmentation"), "demo.grad_x_input")

"""Captum's sampling methods on the core's coalition engine
(esegeta_core.runtime.coalitions): captum.shapley_value_sampling, captum.lime and
captum.kernel_shap give Captum's own maps for the same seed (Captum's class called
directly), on tiny 2D/3D CNNs and a ResNet, batches of one and three items with per-item
targets, for any pass size and through explain with fixed and planned passes; calls the
engine does not cover still go to Captum."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso
from captum.attr import KernelShap, Lime, ShapleyValueSampling
from esegeta_captum import primary
from torch import nn

import esegeta_core.runtime.coalitions as coalitions
from esegeta_core import explain
from esegeta_core.runtime.coalitions import shapley_value_sampling
from esegeta_core.testing import PassRecorder, tiny_input, tiny_model
from esegeta_core.testing.blas import blas_threads, spy_blas_threads

METHODS = {
    "captum.shapley_value_sampling": ShapleyValueSampling,
    "captum.lime": Lime,
    "captum.kernel_shap": KernelShap,
}


class Scaled(nn.Module):
    """A model whose scores are ``factor`` times the inner model's: LIME's Lasso then
    keeps coefficients on the tiny models (their scores barely move otherwise)."""

    def __init__(self, model: nn.Module, factor: float = 100.0) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.model(x)


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal within 1e-5 relative / 1e-6 absolute, and not a map of zeros."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert theirs.abs().max() > 1e-4


def other(x: torch.Tensor) -> torch.Tensor:
    """A per-item baseline that differs from every item."""
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(123))


def grid(x: torch.Tensor, cell: int) -> torch.Tensor:
    """Grid ids of ``cell`` over the spatial dimensions, written out independently of
    esegeta's grid mask: ``(1, 1, *spatial)``."""
    ids = torch.zeros((), dtype=torch.long)
    for n in x.shape[2:]:
        count = -(-n // cell)
        ids = ids.unsqueeze(-1) * count + torch.arange(n) // cell
    return ids[None, None].clone()


def random_mask(x: torch.Tensor, counts: list[int], seed: int = 0) -> torch.Tensor:
    """A ``(B, 1, *spatial)`` mask with ids ``0 .. counts[i] - 1`` for item ``i``."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in counts:
        ids = torch.randint(0, n, x.shape[2:], generator=gen)
        ids.view(-1)[:n] = torch.arange(n)
        rows.append(ids[None])
    return torch.stack(rows)


def seeded(fn: Callable[[], Any], seed: int = 7) -> tuple[Any, torch.Tensor]:
    """``fn()`` from torch seed ``seed``, and the next number torch's generator gives
    after it (equal draws leave equal states)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = fn()
        return out, torch.rand(4)


def as_explain(fn: Callable[[], Any], seed: int = 7) -> Any:
    """``fn()`` seeded as ``explain(seed=seed)`` seeds a stochastic Captum method
    (torch, then NumPy from torch)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(int(torch.randint(0, 2**31 - 1, ())))
        return fn()


def captum_class(method: str, model: Any, alpha: float = 1e-4) -> Any:
    """Captum's class for ``method`` as esegeta builds it (Lime with a Lasso of
    ``alpha``)."""
    if method == "captum.lime":
        return Lime(model, interpretable_model=SkLearnLasso(alpha=alpha))
    return METHODS[method](model)


def plugin_run(method: str, algorithm: Any, x: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    """The plugin's ``run`` of ``method`` on a Captum object, as explain calls it."""
    cls = {
        "captum.shapley_value_sampling": primary.ShapleyValueSampling,
        "captum.lime": primary.Lime,
        "captum.kernel_shap": primary.KernelShap,
    }[method]
    return cls().run(algorithm, x, dict(kwargs), None)  # type: ignore[arg-type]


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """``no_engine()``: the coalition engine's functions fail, so a test proves Captum
    ran."""

    def refuse() -> None:
        def fail(*args: object, **kwargs: object) -> None:
            raise AssertionError("the coalition engine ran instead of Captum")

        for name in ("shapley_value_sampling", "coalition_scores", "feature_values"):
            monkeypatch.setattr(primary, name, fail)

    return refuse


@pytest.fixture
def irregular(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """The coalition engine's planner replaced by one asking for irregular pass sizes
    and both layouts (one pass computed both ways, the contiguous one kept); returns
    the ``(size, channels_last)`` of each pass as they run."""
    calls: list[tuple[int, bool]] = []

    def plan(work, chunk, batch_size, sample, *, kind="forward", layouts=True, fits=None):
        sizes, out, start, i = [5, 1, 7, 7, 3, 16, 2, 9], [], 0, 0
        while start < work:
            stop = min(work, start + sizes[i % len(sizes)])
            layout = i % 3 == 1
            if i == 4:
                chunk(start, stop, True)
            out.append(chunk(start, stop, layout))
            calls.append((stop - start, layout))
            start, i = stop, i + 1
        return torch.cat(out)

    monkeypatch.setattr(coalitions, "method_passes", plan)
    return calls


# -- Shapley value sampling: the engine against Captum ----------------------------------


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapley_value_sampling_equals_captum(rank: int, batch: int) -> None:
    model = tiny_model("classification", rank)
    x = tiny_input("classification", rank, batch=batch, size=12 if rank == 2 else 6)
    target = torch.tensor([2, 0, 3][:batch])
    holes = random_mask(x, [7] * batch, seed=1)
    holes[-1].view(-1)[::5] = -1  # never added: stays at the baseline, gets 0
    holes[0][holes[0] == 3] = 4  # an id item 0 lacks: its steps change nothing
    per_channel = torch.randint(
        0, 6, (1, 3, *x.shape[2:]), generator=torch.Generator().manual_seed(9)
    )
    cases = [  # (mask, baselines, perturbations per item and pass)
        (grid(x, 4), 0, 1),
        (grid(x, 4), 0.25, 4),
        (random_mask(x, [9], seed=2), other(x), 32),
        (holes, other(x)[:1], 3),
        (per_channel, 0.5, 2),
    ]
    for mask, baselines, per_eval in cases:
        theirs, after = seeded(
            lambda mask=mask, baselines=baselines, per_eval=per_eval: ShapleyValueSampling(
                model
            ).attribute(
                x,
                baselines=baselines,
                target=target,
                feature_mask=mask,
                n_samples=4,
                perturbations_per_eval=per_eval,
            )
        )
        for size in (per_eval * batch, 1, 5, 64):
            ours, ours_after = seeded(
                lambda mask=mask, baselines=baselines, size=size: shapley_value_sampling(
                    model,
                    x,
                    target,
                    feature_mask=mask,
                    n_samples=4,
                    baselines=baselines,
                    batch_size=size,
                )
            )
            close(ours, theirs)
            assert torch.equal(ours_after, after)  # the same draws, no more


def test_shapley_value_sampling_builds_passes_in_any_order(
    irregular: list[tuple[int, bool]],
) -> None:
    """Whatever sizes and layouts the planner asks for, including a pass asked for twice
    in both layouts, slots that take a later step of their order and slots built anew
    give Captum's maps."""
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=2, size=16)
    target = torch.tensor([3, 1])
    mask = random_mask(x, [24, 20], seed=3)  # long orders: later steps add a few features
    theirs, _ = seeded(
        lambda: ShapleyValueSampling(model).attribute(
            x, baselines=other(x), target=target, feature_mask=mask, n_samples=3
        )
    )
    ours, _ = seeded(
        lambda: shapley_value_sampling(
            model, x, target, feature_mask=mask, n_samples=3, baselines=other(x), batch_size=4
        )
    )
    close(ours, theirs)
    assert len(irregular) > 10 and any(layout for _, layout in irregular)


def test_shapley_value_sampling_passes() -> None:
    """The baselines ride in the first pass, then one input per item, sample and feature
    the item has (Captum's count, less the steps of features an item lacks), in passes
    of the batch size built in one reused buffer."""
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=2, size=12)
    mask = random_mask(x, [6, 5], seed=4)
    shapley_value_sampling(model, x, 0, feature_mask=mask, n_samples=3, batch_size=8)
    work = 2 + 3 * (6 + 5)
    assert model.sizes == [8] * (work // 8) + [work % 8]
    assert len(set(model.pointers)) == 1


def test_shapley_value_sampling_reads_order_ends_from_initial() -> None:
    """Given the inputs' own scores, an order's last step (the item itself) is not run
    for an item without negative ids, and the map is the same; an item with negative
    ids (its last step keeps them at the baseline) still runs it; a wrong shape is
    refused."""
    from esegeta_core.errors import InvalidParamsError

    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=2, size=12)
    mask = random_mask(x, [6, 5], seed=4)
    mask[1, 0, 0, :3] = -1  # item 1 keeps three elements at the baseline throughout
    target = torch.tensor([1, 2])
    kwargs: dict[str, Any] = {"feature_mask": mask, "n_samples": 3, "batch_size": 64}
    torch.manual_seed(0)
    theirs = shapley_value_sampling(model, x, target, **kwargs)
    with torch.no_grad():
        initial = model.model(x)[torch.arange(2), target]
    model.sizes.clear()
    torch.manual_seed(0)
    ours = shapley_value_sampling(model, x, target, initial=initial, **kwargs)
    assert sum(model.sizes) == 2 + 3 * (6 + 5) - 3  # item 0's three order ends
    close(ours, theirs)
    with pytest.raises(InvalidParamsError, match="expected \\(2,\\)"):
        shapley_value_sampling(model, x, target, initial=initial[:1], **kwargs)


# -- LIME and KernelSHAP: the plugin against Captum -------------------------------------


@pytest.mark.parametrize("method", ["captum.lime", "captum.kernel_shap"])
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_surrogates_equal_captum(method: str, rank: int, batch: int) -> None:
    model = Scaled(tiny_model("classification", rank))
    x = tiny_input("classification", rank, batch=batch, size=12 if rank == 2 else 6)
    target = torch.tensor([2, 0, 3][:batch])
    gen = torch.Generator().manual_seed(10)
    cases = [  # (mask, baselines, perturbations per pass)
        (grid(x, 4), 0, 1),
        (random_mask(x, [7] * batch, seed=5) + 2, other(x), 5),  # ids from 2: shifted
        (random_mask(x, [9], seed=6), other(x)[:1], 64),
        (torch.randint(0, 6, x[:1].shape, generator=gen), 0.5, 7),  # ids per channel
    ]
    for mask, baselines, per_eval in cases:
        kwargs = {
            "baselines": baselines,
            "target": target,
            "feature_mask": mask,
            "n_samples": 40,
            "perturbations_per_eval": per_eval,
        }
        theirs, after = seeded(
            lambda kwargs=kwargs: captum_class(method, model).attribute(x, **kwargs)
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(METHODS[method], "attribute", _refused)
            ours, ours_after = seeded(
                lambda kwargs=kwargs: plugin_run(method, captum_class(method, model), x, kwargs)
            )
        close(ours, theirs)
        assert torch.equal(ours_after, after)


def _refused(*args: object, **kwargs: object) -> None:
    raise AssertionError("Captum's attribute ran instead of the engine")


def test_surrogate_passes() -> None:
    """Each item's samples in passes of perturbations_per_eval, built in one reused
    buffer per item; no pass over the whole batch."""
    model = PassRecorder(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=2, size=12)
    kwargs = {"target": torch.tensor([0, 1]), "feature_mask": grid(x, 4), "n_samples": 20}
    plugin_run("captum.kernel_shap", KernelShap(model), x, {**kwargs, "perturbations_per_eval": 8})
    assert model.sizes == [8, 8, 4] * 2
    assert len(set(model.pointers[:3])) == len(set(model.pointers[3:])) == 1


# -- through explain ----------------------------------------------------------------------


def _direct(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, **kw: Any):
    """Captum called directly with what explain passes (a zero baseline, a grid of 4,
    perturbations_per_eval 32), seeded as explain(seed=7)."""
    mask = grid(x, 4).expand(x.shape[0], *grid(x, 4).shape[1:]).contiguous()
    return as_explain(
        lambda: captum_class(method, model).attribute(
            x,
            baselines=torch.zeros_like(x),
            target=target,
            feature_mask=mask,
            perturbations_per_eval=32,
            **kw,
        )
    )


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("rank", [2, 3])
def test_explain_equals_captum_for_any_pass_size(
    method: str, rank: int, engine_only: Callable[..., None]
) -> None:
    model = Scaled(tiny_model("classification", rank))
    x = tiny_input("classification", rank, batch=3, size=12 if rank == 2 else 8)
    target = torch.tensor([2, 0, 1])
    n = 3 if method == "captum.shapley_value_sampling" else 30
    theirs = _direct(method, model, x, target, n_samples=n)
    engine_only(METHODS[method])
    params = {"grid_cell": 4, "n_samples": n, "seed": 7, "progress": False}
    if method == "captum.lime":
        params["alpha"] = 1e-4
    runs = [{}, {"auto_batch": True}] + [{"perturbations_per_eval": k} for k in (1, 5)]
    for extra in runs:
        ours = explain(model, x, method, target, **params, **extra)
        close(ours.attributions, theirs)


def test_explain_records_the_plan() -> None:
    """Under auto_batch the planner runs the engine's passes and the explanation
    records its plan."""
    model = tiny_model("classification", 2)
    x = tiny_input("classification", 2, batch=1, size=16)
    out = explain(
        model, x, "captum.kernel_shap", 0, grid_cell=4, n_samples=64, auto_batch=True, seed=1
    )
    assert out.extras.get("pass_plan")


def test_resnet18_equals_captum(engine_only: Callable[..., None]) -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None).eval()
    x = torch.rand(2, 3, 32, 32)
    target = torch.tensor([3, 7])
    mask = grid(x, 8).expand(2, 1, 32, 32).contiguous()
    cases = [
        ("captum.shapley_value_sampling", {"n_samples": 2}, {"grid_cell": 8, "n_samples": 2}),
        ("captum.kernel_shap", {"n_samples": 24}, {"grid_cell": 8, "n_samples": 24}),
        ("captum.lime", {"n_samples": 24}, {"grid_cell": 8, "n_samples": 24, "alpha": 1e-4}),
    ]
    theirs = {
        method: as_explain(
            lambda method=method, kw=kw: captum_class(method, model).attribute(
                x,
                baselines=torch.zeros_like(x),
                target=target,
                feature_mask=mask,
                perturbations_per_eval=32,
                **kw,
            )
        )
        for method, kw, _ in cases
    }
    engine_only(*METHODS.values())
    for method, _, params in cases:
        for extra in ({"auto_batch": True}, {"perturbations_per_eval": 3}):
            ours = explain(model, x, method, target, seed=7, progress=False, **params, **extra)
            close(ours.attributions, theirs[method])


# -- what the engine does not cover goes to Captum ------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_calls_the_engine_does_not_cover_go_to_captum(
    method: str, no_engine: Callable[[], None]
) -> None:
    model = Scaled(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=2, size=12)
    target = torch.tensor([1, 2])
    base = {"target": target, "feature_mask": grid(x, 4), "n_samples": 12}
    uncovered = [
        {**base, "additional_forward_args": None},  # an argument esegeta never passes
        {**base, "feature_mask": grid(x, 4)[0]},  # fewer dimensions than the inputs
        {**base, "target": [1, 2]},  # a list of classes
    ]
    if method == "captum.shapley_value_sampling":  # Captum's Lime takes integer ids only
        uncovered.append({**base, "feature_mask": grid(x, 4).float()})
    else:  # a baseline that is not input-shaped (Captum's Shapley sampling runs it alone)
        uncovered.append({**base, "baselines": torch.full((1, 3, 1, 1), 0.3)})
    no_engine()
    for kwargs in uncovered:
        theirs, _ = seeded(lambda kwargs=kwargs: captum_class(method, model).attribute(x, **kwargs))
        ours, _ = seeded(
            lambda kwargs=kwargs: plugin_run(method, captum_class(method, model), x, kwargs)
        )
        close(ours, theirs)


def test_another_similarity_or_sampling_goes_to_captum(no_engine: Callable[[], None]) -> None:
    model = Scaled(tiny_model("classification", 2))
    x = tiny_input("classification", 2, batch=1, size=12)
    kwargs = {"target": 1, "feature_mask": grid(x, 4), "n_samples": 16}

    def make() -> Lime:
        return Lime(
            model,
            interpretable_model=SkLearnLasso(alpha=1e-4),
            similarity_func=lambda a, b, c, **kw: 1.0,
        )

    no_engine()
    theirs, _ = seeded(lambda: make().attribute(x, **kwargs))
    ours, _ = seeded(lambda: plugin_run("captum.lime", make(), x, kwargs))
    close(ours, theirs)


class Noisy(nn.Module):
    """A model that draws random numbers in its forward pass (dropout in training)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.drop = model, nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 100 * self.model(self.drop(x))


@pytest.mark.parametrize("method", list(METHODS))
def test_a_model_drawing_random_numbers_goes_to_captum(method: str) -> None:
    """Its draws would interleave with the method's differently: Captum runs, from the
    random state the call started with."""
    model = Noisy(tiny_model("classification", 2)).train()
    x = tiny_input("classification", 2, batch=2, size=12)
    kwargs = {"target": torch.tensor([0, 3]), "feature_mask": grid(x, 4), "n_samples": 6}
    theirs, after = seeded(lambda: captum_class(method, model).attribute(x, **kwargs))
    ours, ours_after = seeded(lambda: plugin_run(method, captum_class(method, model), x, kwargs))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours_after, after)


@pytest.mark.parametrize("method", ["captum.lime", "captum.kernel_shap"])
def test_surrogate_fits_run_on_one_blas_thread(monkeypatch, method):
    """Each item's fit runs with numpy's BLAS on one thread, and the threads are as
    before after the call: a multi-threaded OpenBLAS call leaves its workers spinning
    against the next item's passes (esegeta_core.runtime.host_blas)."""
    pytest.importorskip("sklearn.linear_model")  # scipy's BLAS is loaded too
    from captum._utils.models.linear_model import SkLearnLinearModel

    seen = spy_blas_threads(monkeypatch, SkLearnLinearModel, "fit")
    before = blas_threads()
    x = tiny_input(batch=3, seed=1)
    grid = {"feature_mask": "grid", "grid_cell": 4}
    explain(tiny_model(seed=0), x, method, target=0, n_samples=20, progress=False, **grid)
    assert len(seen) == 3  # one surrogate per item
    assert all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before

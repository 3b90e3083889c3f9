"""The conformance suite every plugin runs in a few lines.

For each registered method, on every input rank it claims, on a classification and a
segmentation tiny model, :func:`run_conformance` checks: the parameter schema builds;
unknown parameters raise pydantic's ``ValidationError`` (and ``InvalidParamsError``
through ``explain``); output shapes; no hooks left behind by the method itself; the
model's mode, ``requires_grad`` flags, gradients, weights, submodules and pickled size
unchanged; every module's ``__dict__`` with exactly the keys it had and the same tensor
objects (parameters, buffers, tensor attributes): a method that leaves tensors on
modules, as Captum's DeepLift and LRP do, or swaps one for a copy, is caught;
determinism under a seed. :mod:`esegeta_core.testing.zoo` runs
the methods on real architectures too.

One convention for a plugin's tests: the parameters that keep its methods fast live in
its ``tests/conftest.py``, which generates the cases and offers them as a fixture::

    # tests/conftest.py
    from esegeta_core.testing import parametrize_conformance

    FAST_PARAMS = {"acme.slow": {"samples": 2}}

    def pytest_generate_tests(metafunc):
        parametrize_conformance(metafunc, plugin="acme", params=FAST_PARAMS)

    @pytest.fixture
    def fast_params():
        return FAST_PARAMS

    # tests/test_conformance.py
    from esegeta_core.testing import run_conformance

    def test_conformance(case):
        run_conformance(case)

Test modules never import ``conftest`` (pytest loads it; importing it by name breaks
as soon as two plugins' tests share a process).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic
import torch

from esegeta_core.api import explain
from esegeta_core.errors import InvalidParamsError
from esegeta_core.model_state import count_hooks
from esegeta_core.plugin.manager import get_registry
from esegeta_core.testing.models import tiny_input, tiny_model

TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class Case:
    """One method on one rank and task, with the parameters to use."""

    method: str
    rank: int
    task: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.method}-{self.rank}d-{self.task}"


def conformance_cases(
    plugin: str | None = None,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    tasks: tuple[str, ...] = TASKS,
) -> list[Case]:
    """One :class:`Case` per method x claimed rank (2D, 3D) x claimed task (of
    ``tasks``).

    ``params`` maps method names to parameters that keep the test fast (fewer samples,
    smaller windows). Layer parameters without a value are filled with the tiny
    model's ``conv_layer``.
    """
    registry = get_registry()
    params = params or {}
    cases = []
    for name, cls in sorted(registry.methods.items()):
        if plugin is not None and registry.plugin_of[name] != plugin:
            continue
        for rank in sorted(r for r in cls.ranks if r in (2, 3)):
            for task in (t for t in tasks if t in cls.tasks):
                cases.append(Case(name, rank, task, dict(params.get(name, {}))))
    return cases


def parametrize_conformance(
    metafunc: Any,
    *,
    plugin: str,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    argname: str = "case",
) -> None:
    """For a conftest's ``pytest_generate_tests``: every test that takes ``argname``
    runs once per :func:`conformance_cases` of ``plugin`` with ``params`` (a test that
    parametrizes ``argname`` itself keeps its own values)."""
    if argname in metafunc.fixturenames and argname not in _own_parameters(metafunc):
        metafunc.parametrize(argname, conformance_cases(plugin, params=params), ids=str)


def _own_parameters(metafunc: Any) -> set[str]:
    """The argument names a test's own ``parametrize`` marks set."""
    names: set[str] = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        given = mark.args[0]
        names.update(given.replace(" ", "").split(",") if isinstance(given, str) else given)
    return names


def check_coverage(plugin: str, params: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Fail unless ``plugin`` registers methods, its conformance cases cover each on
    every rank and task it claims, and ``params`` (its fast parameters) name only
    its registered methods and their fields: a plugin's tests call it once."""
    registry = get_registry()
    registered = {name for name, owner in registry.plugin_of.items() if owner == plugin}
    if not registered:
        raise AssertionError(f"plugin {plugin!r} registers no method here")
    stray = sorted(set(params or {}) - registered)
    if stray:
        raise AssertionError(f"fast parameters for methods {plugin!r} does not register: {stray}")
    for name, given in (params or {}).items():
        fields = set(registry.methods[name].Params.model_fields)
        unknown = sorted(set(given) - fields - set(registry.methods[name].Params.all_aliases()))
        if unknown:
            raise AssertionError(f"fast parameters of {name!r} name no field: {unknown}")
    want = {
        f"{name}-{rank}d-{task}"
        for name in registered
        for rank in registry.methods[name].ranks
        if rank in (2, 3)
        for task in registry.methods[name].tasks
    }
    got = {str(case) for case in conformance_cases(plugin, params=params)}
    if got != want:
        raise AssertionError(f"conformance cases differ: missing {sorted(want - got)}")


def _fill_layers(method: str, params: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    cls = get_registry().get(method)
    out = dict(params)
    for name in cls.Params.layer_fields():
        field_info = cls.Params.model_fields[name]
        if name in out or not field_info.is_required():
            continue
        is_list = "list" in str(field_info.annotation).lower()
        out[name] = [model.conv_layer] if is_list else model.conv_layer
    return out


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def model_snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """What a method must leave as it found: modes, ``requires_grad`` flags, gradients,
    weights and buffers, hooks, every module's attributes and tensor objects (compare two
    snapshots with ``==``)."""
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": count_hooks(model),
        "attributes": [sorted(m.__dict__) for m in model.modules()],
        "objects": [_tensors(m) for m in model.modules()],
        "children": [list(m._modules) for m in model.modules()],
        "pickled": len(pickle.dumps(model)),
    }


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of the tensors a module holds: its parameters, buffers and plain
    tensor attributes, compared by identity (a method that swaps one for an equal copy is
    caught too). The snapshot holds the objects themselves, not their ``id``: a freed
    tensor's id can be reused by its copy, which would hide the swap."""
    held = {f"param:{k}": v for k, v in module._parameters.items() if v is not None}
    held.update({f"buffer:{k}": v for k, v in module._buffers.items() if v is not None})
    held.update({k: v for k, v in vars(module).items() if isinstance(v, torch.Tensor)})
    return held


def run_conformance(case: Case) -> None:
    """Run every conformance check for one case; raises AssertionError on a failure."""
    cls = get_registry().get(case.method)
    schema = cls.Params.model_json_schema()
    assert schema.get("type") == "object", f"{case}: schema is not an object"
    try:
        cls.Params(**{"__no_such_parameter__": 1})
    except pydantic.ValidationError:
        pass
    else:
        raise AssertionError(f"{case}: unknown parameters must be rejected")

    model = tiny_model(case.task, case.rank)
    x = tiny_input(case.task, case.rank)
    params = _fill_layers(case.method, dict(case.params), model)
    # leave the model in an unusual state: train mode, one frozen parameter
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)
    before = model_snapshot(model)
    x_before = x.clone()

    try:
        explain(model, x, case.method, task=case.task, __no_such_parameter__=1, **params)
    except InvalidParamsError:
        pass
    else:
        raise AssertionError(f"{case}: explain() must reject unknown parameters")

    capture = _Capture()
    logger = logging.getLogger("esegeta_core")
    logger.addHandler(capture)
    try:
        first_run = explain(model, x, case.method, task=case.task, seed=0, **params)
        second_run = explain(model, x, case.method, task=case.task, seed=0, **params)
    finally:
        logger.removeHandler(capture)

    leaks = [m for m in capture.messages if "hook" in m]
    assert not leaks, f"{case}: the method left hooks on the model: {leaks}"
    after = model_snapshot(model)
    assert after["hooks"] == before["hooks"], f"{case}: hooks changed"
    assert after["modes"] == before["modes"], f"{case}: module modes changed"
    assert after["requires_grad"] == before["requires_grad"], f"{case}: requires_grad changed"
    assert after["grads"] == before["grads"], f"{case}: parameter gradients left behind"
    for module, keys, was in zip(model.modules(), after["attributes"], before["attributes"]):
        added, gone = sorted(set(keys) - set(was)), sorted(set(was) - set(keys))
        assert not added and not gone, (
            f"{case}: module attributes left behind or removed on {type(module).__name__}: "
            f"left {added}, removed {gone}"
        )
    for module, now, was in zip(model.modules(), after["objects"], before["objects"]):
        swapped = sorted(k for k in set(now) | set(was) if now.get(k) is not was.get(k))
        assert not swapped, (
            f"{case}: module {type(module).__name__} holds other tensor objects than before "
            f"for {swapped} (parameters, buffers and tensor attributes must be the same objects)"
        )
    assert after["children"] == before["children"], f"{case}: submodules changed"
    assert after["pickled"] == before["pickled"], f"{case}: the pickled model changed size"
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), f"{case}: {key} changed"
    assert torch.equal(x, x_before), f"{case}: the input tensor was modified"

    a = first_run.attributions
    assert isinstance(a, torch.Tensor), f"{case}: attributions are not a tensor"
    assert a.shape[0] == x.shape[0], f"{case}: batch size {a.shape[0]} != {x.shape[0]}"
    assert first_run.target.shape == (x.shape[0],), f"{case}: target shape"
    if cls.output == "input":
        assert tuple(a.shape) == tuple(x.shape), f"{case}: {tuple(a.shape)} != {tuple(x.shape)}"
    if cls.output in ("input", "layer"):
        assert bool(torch.isfinite(a).all()), f"{case}: non-finite attributions"
        sal = first_run.saliency()
        assert tuple(sal.shape) == (x.shape[0], 1, *x.shape[2:]), f"{case}: saliency shape"
    assert torch.allclose(
        first_run.attributions.float(), second_run.attributions.float(), rtol=1e-4, atol=1e-6
    ), f"{case}: not deterministic under a seed"

"""TF32 off by default on CUDA, on with ``amp="tf32"`` (runtime.precision): the flags
set for a call and restored after, also for calls that overlap in threads. The flags
are plain settings, so this runs without a GPU; tests/test_gpu.py checks a call on one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

import esegeta_core as ec
from esegeta_core.runtime import precision
from esegeta_core.testing import tiny_input, tiny_model

CUDA = torch.device("cuda")  # a device object only: nothing runs on it


def _flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.fixture(autouse=True)
def _process_allows_tf32() -> Iterator[None]:
    """PyTorch's default for convolutions, and TF32 matrix products allowed too."""
    saved = _flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_no_amp_on_cuda_computes_without_tf32_and_restores_the_flags() -> None:
    with precision.autocast(None, CUDA):
        assert _flags() == (False, False)
        assert not precision.reduced(CUDA)
    assert _flags() == (True, True)
    with pytest.raises(RuntimeError), precision.autocast(None, CUDA):
        raise RuntimeError("a failing method")
    assert _flags() == (True, True)


def test_amp_tf32_allows_it_and_the_cpu_is_left_alone() -> None:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    with precision.autocast("tf32", CUDA):
        assert _flags() == (True, True) and precision.reduced(CUDA)
    assert _flags() == (False, False)
    with precision.autocast(None, torch.device("cpu")):
        assert _flags() == (False, False)  # no TF32 on a CPU: nothing to change


def test_overlapping_calls_keep_tf32_off_while_one_wants_float32() -> None:
    """Calls in threads share the flags and end in any order: float32 wins while any
    float32 call runs, and the process's flags come back when the last one ends."""
    strict, fast = contextlib.ExitStack(), contextlib.ExitStack()
    fast.enter_context(precision.tf32(True))
    assert _flags() == (True, True)
    strict.enter_context(precision.tf32(False))
    assert _flags() == (False, False)
    fast.close()  # ends first: the float32 call still runs
    assert _flags() == (False, False)
    fast.enter_context(precision.tf32(True))
    strict.close()
    assert _flags() == (True, True)
    torch.backends.cudnn.allow_tf32 = False  # changed by someone meanwhile: not kept
    fast.close()
    assert _flags() == (True, True)  # the flags as they were before the first call


def test_every_pass_of_a_call_runs_in_the_calls_precision(demo, monkeypatch) -> None:
    """The job holds :func:`~esegeta_core.runtime.precision.float32_math` around all of
    its passes, the prediction pass included (a perturbation method subtracts its
    scores from the perturbed ones: both must be rounded alike)."""
    from esegeta_core.runtime import job

    held: list[tuple[object, str]] = []
    real = job.float32_math

    @contextlib.contextmanager
    def spy(amp: object, device: torch.device) -> Iterator[None]:
        held.append((amp, device.type))
        with real(amp, device):
            yield
        held.pop()

    monkeypatch.setattr(job, "float32_math", spy)
    model, x = tiny_model(), tiny_input()
    seen: list[list[tuple[object, str]]] = []
    model.register_forward_pre_hook(lambda m, a: seen.append(list(held)))
    ec.explain(model, x, "demo.grad_x_input", target=None, amp="tf32")
    assert len(seen) >= 2  # the prediction pass and the method's
    assert all(s == [("tf32", "cpu")] for s in seen)


def test_explain_takes_amp_tf32_and_on_the_cpu_it_changes_nothing(demo) -> None:
    model, x = tiny_model(), tiny_input()
    plain = ec.explain(model, x, "demo.grad_x_input", target=1).attributions
    tf32 = ec.explain(model, x, "demo.grad_x_input", target=1, amp="tf32").attributions
    assert torch.equal(plain, tf32)
    assert _flags() == (True, True)


@pytest.mark.parametrize("metric", ["deletion", "infidelity"])
def test_every_pass_of_a_metric_runs_in_its_precision(metric, monkeypatch) -> None:
    """Metrics hold :func:`~esegeta_core.runtime.precision.float32_math` too (through
    ``eval_mode``), with the curves' ``amp``."""
    from esegeta_core.evaluation import _common, deletion, infidelity

    held: list[object] = []
    real = _common.float32_math

    @contextlib.contextmanager
    def spy(amp: object, device: torch.device) -> Iterator[None]:
        held.append(amp)
        with real(amp, device):
            yield
        held.pop()

    monkeypatch.setattr(_common, "float32_math", spy)
    model = tiny_model()
    x = tiny_input(batch=2)
    a = torch.rand(2, 1, *x.shape[2:])
    seen: list[list[object]] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(list(held)))
    if metric == "deletion":
        deletion(model, x, 1, a, steps=4, amp="tf32")
        want = ["tf32"]
    else:
        infidelity(model, x, 1, a, n_samples=2)
        want = [None]
    assert seen and all(s == want for s in seen)

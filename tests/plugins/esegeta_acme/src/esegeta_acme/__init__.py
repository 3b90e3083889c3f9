"""A third-party esegeta plugin: gradient times input, scaled (the README's example)."""

from __future__ import annotations

import pickle
import time

import torch
from pydantic import BaseModel, ConfigDict, Field

from esegeta_core import Explainer, MethodParams, hookimpl
from esegeta_core.runtime.executor import Executor
from esegeta_core.runtime.scheduler import JobResult


class TimesInputParams(MethodParams):
    scale: float = Field(1.0, gt=0, description="Multiplier applied to the map.")


class TimesInput(Explainer[TimesInputParams]):
    """Gradient times input, scaled (https://arxiv.org/abs/1605.01713)."""

    name = "acme.times_input"
    family = "gradient"
    ranks = (2, 3)
    paper = "https://arxiv.org/abs/1605.01713"

    def attribute(self, model, inputs, target, params: TimesInputParams):
        x = inputs.clone().requires_grad_(True)
        score = model(x).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
        return grad * inputs * params.scale


@hookimpl
def esegeta_register_methods():
    return [TimesInput]


class InlineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reverse: bool = Field(False, description="Run the jobs last to first.")


class InlineExecutor(Executor):
    """A third-party executor: computes each job in this process as a remote worker
    would (``worker.compute``, the result pickled as if sent over a network) and writes
    it as a driver does (``worker.store``)."""

    name = "inline"
    summary = "each job computed apart from the run folder, then stored (a test executor)"
    Options = InlineOptions

    def run(self, submission):
        jobs = list(reversed(submission.jobs)) if self.options.reverse else submission.jobs
        for job_id, job in jobs:
            submission.on_start(job_id, "cpu")
            start = time.perf_counter()
            try:
                files = pickle.loads(pickle.dumps(submission.worker.compute(job, "cpu")))
                record = submission.worker.store(job, files)
                result = JobResult(job_id, "ok", "cpu", time.perf_counter() - start, record)
            except Exception as exc:  # noqa: BLE001
                result = JobResult(job_id, "error", "cpu", 0.0, error=f"{exc}")
            submission.on_result(result)


@hookimpl
def esegeta_register_executors():
    return [InlineExecutor]

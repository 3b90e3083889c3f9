"""Config-driven runs: every input x method x target as a job, resumable.

A run folder holds, per job, the map (NIfTI for 3D with the input's affine, ``.npz``
for 2D), a PNG figure and a JSON record (method, params, target, seconds, device,
status, error), plus a side-by-side figure per input, ``summary.csv`` /
``summary.json`` over all jobs, the config it ran and ``run.log``. The record is
written last and atomically, so a job counts as finished only when everything it
wrote is complete: running the same config again skips finished jobs, and a run
killed with SIGKILL halfway loses nothing that had finished.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esegeta_core.api import explain, takes_reshape
from esegeta_core.config import RegionSpec, RunConfig
from esegeta_core.data_io import (
    Loaded,
    atomic_path,
    expand_paths,
    load_input,
    load_mask,
    write_json,
    write_map,
)
from esegeta_core.errors import EsegetaError, InvalidModelError, InvalidParamsError
from esegeta_core.plugin.manager import get_registry
from esegeta_core.runtime.scheduler import JobResult, default_devices, run_jobs
from esegeta_core.targets import MultiClassScores, Region, ThresholdScores

log = logging.getLogger(__name__)

RECORD = "record.json"


@dataclass(frozen=True)
class Job:
    """One unit of work: one item of one input, one method, one target."""

    job_id: str
    input_path: str
    item: int
    method_index: int
    target: int | RegionSpec | None


def build_model(config: RunConfig, base: Path) -> nn.Module:
    """Call the factory and load the checkpoint (``torch.load(weights_only=True)``)."""
    spec = config.model
    module_name, _, func_name = spec.factory.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            path = path if path.is_absolute() else base / path
            loader = importlib.util.spec_from_file_location(path.stem, path)
            if loader is None or loader.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        factory = getattr(module, func_name)
    except (ImportError, AttributeError, FileNotFoundError) as exc:
        raise InvalidModelError(
            f"Cannot import the model factory {spec.factory!r}: {exc}. Use "
            "'package.module:function' (importable) or 'file.py:function'."
        ) from exc
    model = factory(**spec.kwargs)
    if not isinstance(model, nn.Module):
        raise InvalidModelError(f"{spec.factory} returned {type(model).__name__}, not a Module.")
    if spec.checkpoint is not None:
        path = spec.checkpoint if spec.checkpoint.is_absolute() else base / spec.checkpoint
        state = torch.load(path, map_location="cpu", weights_only=True)
        if spec.checkpoint_key is not None:
            state = state[spec.checkpoint_key]
        model.load_state_dict(state, strict=spec.strict)
    return model.eval()


def _wrapper(config: RunConfig) -> Any:
    if config.task != "segmentation":
        return None
    if config.wrapper.name == "threshold":
        return ThresholdScores(config.wrapper.threshold, logits=config.wrapper.logits)
    return MultiClassScores()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _target_label(target: int | RegionSpec | None) -> str:
    if target is None:
        return "pred"
    if isinstance(target, RegionSpec):
        return f"r{target.label}-{_slug(Path(target.mask).name.split('.')[0])}"
    return f"c{target}"


def _method_label(config: RunConfig, index: int) -> str:
    """The method's name, plus a digest of its parameters when it has any, plus its
    position when the very same spec appears twice (ids must be unique and stable)."""
    spec = config.methods[index]
    label = _slug(spec.method)
    key = json.dumps([spec.params, spec.patches], sort_keys=True, default=str)
    if spec.params:
        label += "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
    same = [i for i, m in enumerate(config.methods) if m == spec]
    if len(same) > 1:
        label += f"-{same.index(index) + 1}"
    return label


class RunWorker:
    """The picklable job runner: builds the model once per process and device, loads
    each input once, explains, writes the map, the figure and the record."""

    def __init__(self, config: RunConfig, base: Path, run_dir: Path) -> None:
        self.config, self.base, self.run_dir = config, base, run_dir
        self._models: dict[str, nn.Module] = {}
        self._inputs: dict[str, Loaded] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "base": self.base, "run_dir": self.run_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], state["base"], state["run_dir"])  # type: ignore[misc]

    def model(self, device: str) -> nn.Module:
        if device not in self._models:
            self._models[device] = build_model(self.config, self.base).to(device)
        return self._models[device]

    def loaded(self, path: str) -> Loaded:
        if path not in self._inputs:
            self._inputs[path] = load_input(Path(path), self.config.inputs)
        return self._inputs[path]

    def _target(self, job: Job) -> int | Region | None:
        if isinstance(job.target, RegionSpec):
            mask_path = Path(job.target.mask)
            mask_path = mask_path if mask_path.is_absolute() else self.base / mask_path
            return Region(job.target.label, load_mask(mask_path, self.config.inputs))
        return job.target

    def __call__(self, job: Job, device: str) -> dict[str, Any]:
        config = self.config
        spec = config.methods[job.method_index]
        loaded = self.loaded(job.input_path)
        x = loaded.tensor[job.item : job.item + 1]
        folder = self.run_dir / "jobs" / job.job_id
        started = time.time()
        target = self._target(job)
        e = explain(
            self.model(device),
            x,
            spec.method,
            target,
            task=config.task,
            wrapper=None if isinstance(target, Region) else _wrapper(config),
            output=config.model.output,
            # the run's layout is for the methods that read layers or tokens
            reshape=config.reshape if takes_reshape(get_registry().get(spec.method)) else None,
            seed=config.seed,
            amp=config.amp,
            patches=config.patches if spec.patches else None,
            auto_batch=config.auto_batch,
            progress=False,
            force=spec.force,
            **spec.params,
        )
        files: dict[str, str] = {}
        if e.output == "image":
            data = e.attributions[0]
            saliency = None
        else:
            saliency = e.saliency()[0]
            data = e.attributions[0] if e.output == "input" else saliency
        if config.outputs.attributions:
            files["attribution"] = str(write_map(folder, "attribution", data, loaded, job.item))
        if config.outputs.figures and saliency is not None:
            from esegeta_core.report.figures import job_figure

            title = f"{spec.title or spec.method} - class {int(e.target[0])}"
            figure = job_figure(
                x[0].cpu(),
                saliency.cpu(),
                folder / "figure.png",
                title=title,
                sign=spec.sign,
                colorbar=config.outputs.colorbar,
            )
            files["figure"] = str(figure)
        record = {
            "job_id": job.job_id,
            "status": "ok",
            "input": job.input_path,
            "item": job.item,
            "method": e.method,
            "plugin": e.plugin,
            "title": spec.title or spec.method,
            "params": e.params.public_dict(),
            "target_requested": _target_label(job.target),
            "target": int(e.target[0]),
            "seconds": round(e.seconds, 4),
            "wall_seconds": round(time.time() - started, 4),
            "device": device,
            "error": "",
            "files": {k: str(Path(v).relative_to(self.run_dir)) for k, v in files.items()},
            "notes": {k: e.extras[k] for k in NOTED_EXTRAS if k in e.extras},
        }
        write_json(folder / RECORD, record)
        return record


NOTED_EXTRAS = ("layer_auto", "layouts", "preparation", "warnings", "output")
"""What ``explain()`` decided for a job and reports in ``Explanation.extras`` (layers
chosen by ``layer="auto"``, layer layouts, the model preparation of rule-based
methods, warnings such as an all-zero map), kept in the job's record."""


@dataclass
class RunSummary:
    """What a run did: its folder, every job's record, and how many were skipped."""

    run_dir: Path
    records: list[dict[str, Any]]
    skipped: int

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] != "ok"]


def plan_jobs(config: RunConfig, base: Path) -> list[Job]:
    """Every input item x method x target of the config, with stable readable ids."""
    jobs = []
    targets = config.targets if config.targets else [None]
    for path in expand_paths(config.inputs.paths, base):
        loaded = load_input(path, config.inputs)
        stem = _slug(path.name)
        for item in range(loaded.tensor.shape[0]):
            for m in range(len(config.methods)):
                for target in targets:
                    job_id = f"{stem}-{item}__{_method_label(config, m)}__{_target_label(target)}"
                    jobs.append(Job(job_id, str(path), item, m, target))
    ids = [job.job_id for job in jobs]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    if clashes:
        raise InvalidParamsError(
            f"Two jobs would share the id {clashes[0]!r} (inputs with the same file name in "
            "different folders, or the same target twice). Rename the files or dedupe targets."
        )
    return jobs


def _finished(run_dir: Path, job: Job) -> dict[str, Any] | None:
    path = run_dir / "jobs" / job.job_id / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("status") == "ok" else None


def _slots(config: RunConfig) -> list[str] | None:
    """Worker slots, or None to run in this process."""
    if config.devices == "auto":
        slots = default_devices(config.cpu_workers, config.jobs_per_gpu)
        if slots == ["cpu"] * len(slots) and config.cpu_workers == 0:
            return None if config.time_limit is None else ["cpu"]
        return slots
    slots = [d for d in config.devices for _ in range(config.jobs_per_gpu if "cuda" in d else 1)]
    if slots == ["cpu"] and config.cpu_workers == 0 and config.time_limit is None:
        return None
    return slots


def _failure_record(job: Job, config: RunConfig, result: JobResult) -> dict[str, Any]:
    spec = config.methods[job.method_index]
    return {
        "job_id": job.job_id,
        "status": result.status,
        "input": job.input_path,
        "item": job.item,
        "method": spec.method,
        "plugin": "",
        "title": spec.title or spec.method,
        "params": spec.params,
        "target_requested": _target_label(job.target),
        "target": None,
        "seconds": round(result.seconds, 4),
        "wall_seconds": round(result.seconds, 4),
        "device": result.device,
        "error": result.error,
        "files": {},
    }


SUMMARY_FIELDS = (
    "job_id",
    "status",
    "input",
    "item",
    "method",
    "plugin",
    "title",
    "target_requested",
    "target",
    "seconds",
    "wall_seconds",
    "device",
    "error",
)


def write_summary(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """``summary.csv`` and ``summary.json`` over all jobs, atomically."""
    write_json(run_dir / "summary.json", records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = dict(record)
        row["error"] = (row.get("error") or "").splitlines()[0] if row.get("error") else ""
        writer.writerow(row)
    with atomic_path(run_dir / "summary.csv") as tmp:
        tmp.write_text(buffer.getvalue())


def _grid_figures(config: RunConfig, run_dir: Path, records: list[dict[str, Any]]) -> None:
    from esegeta_core.report.figures import grid_figure

    worker = RunWorker(config, Path("."), run_dir)
    by_item: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok" and "attribution" in r["files"]:
            by_item.setdefault((r["input"], r["item"]), []).append(r)
    signs = {(m.title or m.method): m.sign for m in config.methods}
    for (path, item), group in by_item.items():
        loaded = worker.loaded(path)
        maps = {}
        for r in group:
            saliency = _read_map(run_dir / r["files"]["attribution"], loaded)
            if saliency is not None:
                requested = str(r.get("target_requested", ""))
                row = f"class {r['target']}"
                if requested.startswith("r") and "-" in requested:  # a region target
                    row += f" in {requested.split('-', 1)[1]}"
                maps[(r["title"], row)] = saliency
        if maps:
            name = f"{_slug(loaded.path.name)}-{item}.png"
            grid_figure(
                loaded.tensor[item],
                maps,
                run_dir / "figures" / name,
                signs=signs,
                colorbar=config.outputs.colorbar,
                title=f"{loaded.path.name} #{item}",
            )


def _read_map(path: Path, loaded: Loaded) -> torch.Tensor | None:
    """A written map as a ``(1, *spatial)`` saliency in the model's layout."""
    import numpy as np

    if path.suffix == ".npz":
        data = torch.from_numpy(np.load(path)["attribution"]).float()
    else:
        import nibabel as nib

        volume = torch.from_numpy(np.asarray(nib.load(path).dataobj)).float()
        volume = volume.permute(3, 0, 1, 2) if volume.ndim == 4 else volume.unsqueeze(0)
        if loaded.nifti and loaded.depth_first:
            volume = volume.permute(0, 3, 2, 1)
        elif not loaded.depth_first:
            volume = volume.permute(0, 3, 1, 2)
        data = volume
    if tuple(data.shape[1:]) != tuple(loaded.tensor.shape[2:]):
        return None  # visualizations: images of another size
    return data.sum(0, keepdim=True)


def run(config: RunConfig, base: Path | None = None) -> RunSummary:
    """Run every job of ``config`` that has not finished yet; return the summary."""
    base = base or Path.cwd()
    run_dir = config.run_dir(base)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setLevel(config.log_level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("esegeta_core")
    previous = root.level
    root.addHandler(handler)
    root.setLevel(min(previous or logging.WARNING, logging.getLevelName(config.log_level)))
    try:
        write_json(run_dir / "config.json", config.model_dump(mode="json"))
        jobs = plan_jobs(config, base)
        records: dict[str, dict[str, Any]] = {}
        todo = []
        for job in jobs:
            done = _finished(run_dir, job)
            if done is not None:
                records[job.job_id] = done
            else:
                todo.append(job)
        skipped = len(jobs) - len(todo)
        log.info("run %s: %d jobs, %d already finished", run_dir, len(jobs), skipped)
        worker = RunWorker(config, base, run_dir)
        by_id = {job.job_id: job for job in todo}

        def record_result(result: JobResult) -> None:
            job = by_id[result.job_id]
            if result.status == "ok":
                records[job.job_id] = result.result
            else:
                record = _failure_record(job, config, result)
                write_json(run_dir / "jobs" / job.job_id / RECORD, record)
                records[job.job_id] = record

        slots = _slots(config)
        if slots is None:
            _run_in_process(todo, worker, config, record_result)
        else:
            run_jobs(
                [(job.job_id, job) for job in todo],
                worker,
                devices=slots,
                time_limit=config.time_limit,
                progress=config.progress,
                on_result=record_result,
            )
        ordered = [records[job.job_id] for job in jobs]
        write_summary(run_dir, ordered)
        if config.outputs.figures:
            _grid_figures(config, run_dir, ordered)
        if config.outputs.report:
            _write_report(run_dir)
        failed = sum(1 for r in ordered if r["status"] != "ok")
        log.info("run %s finished: %d ok, %d failed", run_dir, len(ordered) - failed, failed)
        return RunSummary(run_dir, ordered, skipped)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def _write_report(run_dir: Path) -> None:
    """``report.html``; a failure is logged, not raised: every job is already saved."""
    from esegeta_core.report.html import REPORT_NAME, report_from_run, write_html_report

    try:
        write_html_report(report_from_run(run_dir), run_dir / REPORT_NAME)
    except (EsegetaError, OSError, ValueError) as exc:
        log.warning("no report.html (%s); retry with `esegeta report %s`", exc, run_dir)


def _run_in_process(todo: list[Job], worker: RunWorker, config: RunConfig, record) -> None:
    from esegeta_core.progress import progress_bar

    bar = progress_bar(len(todo), "jobs", enabled=config.progress)
    try:
        for job in todo:
            start = time.perf_counter()
            try:
                out = worker(job, "cpu")
                record(JobResult(job.job_id, "ok", "cpu", time.perf_counter() - start, out))
            except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the run
                detail = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, EsegetaError):
                    import traceback

                    detail += "\n" + traceback.format_exc()
                log.warning("job %s failed: %s", job.job_id, detail.splitlines()[0])
                record(
                    JobResult(job.job_id, "error", "cpu", time.perf_counter() - start, error=detail)
                )
            bar.update(1)
    finally:
        bar.close()

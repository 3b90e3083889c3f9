"""Config-driven runs: every input x method x target as a job, resumable.

A run folder holds, per job, the map (NIfTI for 3D with the input's affine, ``.npz``
for 2D), a PNG figure and a JSON record (method, params, target, seconds, device,
status, error), plus a side-by-side figure per input, ``summary.csv`` /
``summary.json`` over all jobs, the config it ran and ``run.log``. The record is
written last and atomically, so a job counts as finished only when everything it
wrote is complete: running the same config again skips finished jobs, and a run
killed with SIGKILL halfway loses nothing that had finished.

Resuming never reuses a stale result: each record carries the job's
:func:`job_fingerprint` (model, checkpoint bytes, input bytes, preprocessing, method,
target, runtime settings, versions), and a job counts as finished only when its record
is ok and its fingerprint matches. A run folder whose ``config.json`` differs from the
config now run in anything that changes results is refused (:class:`RunConflictError`)
unless ``force=True``; the old one is then kept as ``config.previous.json``. A file that
cannot be read (missing, truncated, corrupt) fails only its own jobs, and a job whose
files cannot be written fails alone: the run goes on and the summary lists both.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from esegeta_core.api import explain, takes_reshape
from esegeta_core.config import RegionSpec, RunConfig
from esegeta_core.data_io import Loaded, expand_paths, load_input, load_mask, write_map
from esegeta_core.errors import (
    EsegetaError,
    InvalidInputError,
    InvalidModelError,
    InvalidParamsError,
    RunConflictError,
    RunWriteError,
)
from esegeta_core.files import atomic_path, inside, write_json
from esegeta_core.plugin import PROJECT
from esegeta_core.plugin.executors import get_executor
from esegeta_core.plugin.manager import get_registry
from esegeta_core.runtime.executor import JobFiles, Submission
from esegeta_core.runtime.scheduler import JobResult, default_devices
from esegeta_core.targets import Region, score_wrapper

log = logging.getLogger(__name__)

RECORD = "record.json"
PREVIOUS_CONFIG = "config.previous.json"


@dataclass(frozen=True)
class Job:
    """One unit of work: one item of one input, one method, one target.

    ``error`` is set by :func:`plan_jobs` when the input file cannot be read (the job
    fails without running); ``fingerprint`` is set by :func:`run` from
    :func:`job_fingerprint` and written into the job's record."""

    job_id: str
    input_path: str
    item: int
    method_index: int
    target: int | RegionSpec | None
    error: str = ""
    fingerprint: str = ""


def build_model(config: RunConfig, base: Path) -> nn.Module:
    """Call the factory and load the checkpoint (``torch.load(weights_only=True)``)."""
    from esegeta_core.config_checks import import_factory

    spec = config.model
    try:
        factory = import_factory(spec.factory, base)
    except InvalidModelError as exc:
        raise InvalidModelError(f"Cannot import the model factory {spec.factory!r}: {exc}") from exc
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
    w = config.wrapper
    return score_wrapper(config.task, w.name, w.threshold, w.logits)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _target_label(target: int | RegionSpec | None) -> str:
    if target is None:
        return "pred"
    if isinstance(target, RegionSpec):
        return f"r{target.label}-{_slug(Path(target.mask).name.split('.')[0])}"
    return f"c{target}"


def method_label(config: RunConfig, index: int) -> str:
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
    each input once (keeping the last :attr:`KEEP_INPUTS`: jobs come input by input),
    explains, writes the map, the figure and the record."""

    KEEP_INPUTS = 4

    def __init__(self, config: RunConfig, base: Path, run_dir: Path) -> None:
        self.config, self.base, self.run_dir = config, base, run_dir
        self._models: dict[str, nn.Module] = {}
        self._inputs: OrderedDict[str, Loaded] = OrderedDict()
        self._masks: OrderedDict[Path, torch.Tensor] = OrderedDict()

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
            self.provide("input", path, load_input(Path(path), self.config.inputs))
        self._inputs.move_to_end(path)
        return self._inputs[path]

    def files_of(self, job: Job) -> list[tuple[str, str]]:
        """The files the job reads, as ``(kind, key)``: its input, and its region mask."""
        files = [("input", job.input_path)]
        if isinstance(job.target, RegionSpec):
            files.append(("mask", str(_mask_path(job.target, self.base))))
        return files

    def read(self, kind: str, key: str) -> Loaded | torch.Tensor:
        """Read one file :meth:`files_of` names, as the job will use it (for executors
        that ship data to workers instead of letting them read it)."""
        if kind == "input":
            return load_input(Path(key), self.config.inputs)
        return load_mask(Path(key), self.config.inputs)

    def has(self, kind: str, key: str) -> bool:
        """Whether the file is loaded in this worker already."""
        return (key in self._inputs) if kind == "input" else (Path(key) in self._masks)

    def provide(self, kind: str, key: str, data: Any) -> None:
        """Hand this worker a file :meth:`read` read elsewhere (it is not read again)."""
        cache: OrderedDict[Any, Any] = self._inputs if kind == "input" else self._masks
        name = key if kind == "input" else Path(key)
        cache[name] = data
        cache.move_to_end(name)
        while len(cache) > self.KEEP_INPUTS:
            cache.popitem(last=False)

    def _target(self, job: Job) -> int | Region | None:
        if isinstance(job.target, RegionSpec):
            mask_path = _mask_path(job.target, self.base)
            if mask_path not in self._masks:
                self.provide("mask", str(mask_path), load_mask(mask_path, self.config.inputs))
            self._masks.move_to_end(mask_path)
            return Region(job.target.label, self._masks[mask_path])
        return job.target

    def __call__(self, job: Job, device: str) -> dict[str, Any]:
        """Compute the job and write its files and record into the run folder."""
        folder = self.run_dir / "jobs" / job.job_id
        try:
            # a recomputed job: never an old record beside new files
            (folder / RECORD).unlink(missing_ok=True)
        except OSError as exc:
            raise _write_error(job, folder, exc) from exc
        record = self._explain(job, device, folder)
        try:
            write_json(folder / RECORD, record)
        except OSError as exc:
            raise _write_error(job, folder, exc) from exc
        return record

    def compute(self, job: Job, device: str) -> JobFiles:
        """Compute the job where this worker runs and return its record and its files'
        bytes, writing nothing in the run folder (for executors whose workers do not
        share the driver's file system; the driver writes them with :meth:`store`)."""
        with tempfile.TemporaryDirectory(prefix="esegeta-job-") as scratch:
            record = self._explain(job, device, Path(scratch))
            files = {path.name: path.read_bytes() for path in Path(scratch).iterdir()}
        return JobFiles(record, files)

    def store(self, job: Job, files: JobFiles) -> dict[str, Any]:
        """Write what :meth:`compute` returned, exactly as :meth:`__call__` would have:
        each file atomically, stale files of an earlier config removed, the record last."""
        folder = self.run_dir / "jobs" / job.job_id
        unknown = sorted(set(files.files) - set(JOB_OUTPUTS))
        if unknown:
            raise RunWriteError(f"job {job.job_id}: unexpected files {unknown} from the worker")
        try:
            (folder / RECORD).unlink(missing_ok=True)
            for name, data in files.files.items():
                with atomic_path(folder / name) as tmp:
                    tmp.write_bytes(data)
            for stale in JOB_OUTPUTS:
                if stale not in files.files:
                    (folder / stale).unlink(missing_ok=True)
            write_json(folder / RECORD, files.record)
        except OSError as exc:
            raise _write_error(job, folder, exc) from exc
        return files.record

    def _explain(self, job: Job, device: str, folder: Path) -> dict[str, Any]:
        """Explain the job, write its map and figure into ``folder``; return the record."""
        config = self.config
        spec = config.methods[job.method_index]
        loaded = self.loaded(job.input_path)
        x = loaded.tensor[job.item : job.item + 1]
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
        if e.output == "image":
            data = e.attributions[0]
            saliency = None
        else:
            saliency = e.saliency()[0]
            data = e.attributions[0] if e.output == "input" else saliency
        try:
            files = self._write_files(job, e, x, data, saliency, loaded, folder)
        except OSError as exc:
            raise _write_error(job, folder, exc) from exc
        return {
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
            "files": {k: f"jobs/{job.job_id}/{Path(v).name}" for k, v in files.items()},
            "notes": {k: e.extras[k] for k in NOTED_EXTRAS if k in e.extras},
            "fingerprint": job.fingerprint,
        }

    def _write_files(
        self,
        job: Job,
        e: Any,
        x: torch.Tensor,
        data: torch.Tensor,
        saliency: torch.Tensor | None,
        loaded: Loaded,
        folder: Path,
    ) -> dict[str, str]:
        """Write the job's map and figure; remove those an earlier config left and this
        one does not write (so the folder holds only this job's result)."""
        config, spec = self.config, self.config.methods[job.method_index]
        files: dict[str, str] = {}
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
        written = {Path(f).name for f in files.values()}
        for stale in JOB_OUTPUTS:
            if stale not in written:
                (folder / stale).unlink(missing_ok=True)
        return files


JOB_OUTPUTS = ("attribution.npz", "attribution.nii.gz", "figure.png")
"""The files a job may write besides its record."""


def _write_error(job: Job, folder: Path, exc: OSError) -> RunWriteError:
    """The job's write failure, naming its folder and the OS error (with its path)."""
    return RunWriteError(
        f"job {job.job_id}: cannot write its files in {folder}: {exc}. Make the folder "
        "writable (or remove the file in its way, or free disk space) and run again."
    )


def _mask_path(target: RegionSpec, base: Path) -> Path:
    path = Path(target.mask)
    return path if path.is_absolute() else base / path


NOTED_EXTRAS = ("layer_auto", "layouts", "preparation", "warnings", "output", "pass_plan")
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
    """Every input item x method x target of the config, with stable readable ids.

    An input file that cannot be read (missing, truncated, corrupt) does not stop the
    plan: it gets one job per method x target for item 0 (the id its first item would
    have), each with ``error`` set to the problem naming the file."""
    jobs = []
    targets = config.targets if config.targets else [None]
    for path in expand_paths(config.inputs.paths, base):
        error = ""
        try:
            items = load_input(path, config.inputs).tensor.shape[0]
        except (InvalidInputError, OSError) as exc:
            error, items = f"{type(exc).__name__}: {exc}", 1
            log.warning("input %s cannot be read; its jobs fail: %s", path, exc)
        stem = _slug(path.name)
        for item in range(items):
            for m in range(len(config.methods)):
                for target in targets:
                    job_id = f"{stem}-{item}__{method_label(config, m)}__{_target_label(target)}"
                    jobs.append(Job(job_id, str(path), item, m, target, error=error))
    ids = [job.job_id for job in jobs]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    if clashes:
        raise InvalidParamsError(
            f"Two jobs would share the id {clashes[0]!r} (inputs with the same file name in "
            "different folders, or the same target twice). Rename the files or dedupe targets."
        )
    return jobs


def _finished(run_dir: Path, job: Job) -> dict[str, Any] | None:
    """The job's record when it finished ok with the job's current fingerprint."""
    path = run_dir / "jobs" / job.job_id / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "ok":
        return None
    if not job.fingerprint or record.get("fingerprint") != job.fingerprint:
        return None
    return record


class FingerprintCache:
    """What :func:`job_fingerprint` computes once per run: the sha256 of each file's
    bytes (keyed by path, modification time and size, so a rewritten file is hashed
    again), the version of esegeta_core and that of the plugin of each method."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, int, int], str] = {}
        self._plugins: dict[str, str] = {}
        self._core = ""

    def file(self, path: Path) -> str:
        """The sha256 hex of the file's bytes, or a marker when it cannot be read (the
        job fails on it anyway)."""
        try:
            stat = path.stat()
        except OSError as exc:
            return f"unreadable: {type(exc).__name__}"
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in self._files:
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError as exc:
                return f"unreadable: {type(exc).__name__}"
            self._files[key] = digest.hexdigest()
        return self._files[key]

    def core_version(self) -> str:
        """The installed version of esegeta_core."""
        if not self._core:
            self._core = _distribution_version("esegeta-core")
        return self._core

    def plugin_version(self, method: str) -> str:
        """``"<distribution> <version>"`` of the plugin that provides ``method``."""
        if method not in self._plugins:
            self._plugins[method] = _plugin_version(method)
        return self._plugins[method]


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _plugin_version(method: str) -> str:
    """The installed distribution (and version) of the plugin that registers ``method``:
    from its entry point, else from the explainer class's top-level package."""
    registry = get_registry()
    try:
        cls = registry.get(method)
    except EsegetaError:
        return "unknown method"  # the job fails on it; nothing to reuse
    plugin = registry.plugin_of.get(cls.name, "")
    for ep in metadata.entry_points(group=PROJECT):
        if ep.name == plugin and ep.dist is not None:
            return f"{ep.dist.name} {ep.dist.version}"
    top = cls.__module__.split(".")[0]
    for dist in metadata.packages_distributions().get(top, []):
        return f"{dist} {_distribution_version(dist)}"
    module = sys.modules.get(top)
    return f"{top} {getattr(module, '__version__', 'unknown')}"


def job_fingerprint(
    config: RunConfig, job: Job, base: Path, *, cache: FingerprintCache | None = None
) -> str:
    """The sha256 hex of everything the job's result depends on.

    The model (factory, its file's bytes for a ``file.py:function`` factory, kwargs,
    output adapter, checkpoint bytes, key and strictness), the input file's bytes and
    item and the whole ``inputs`` section but its paths, task and wrapper, the method
    (name, params, ``patches`` flag, title and sign, which the figure shows), the
    target (a region's mask file bytes too), seed, amp, patches, reshape, auto_batch,
    what is written (maps, figures, colour bars), and the versions of esegeta_core and
    of the method's plugin. Resume reuses a record only when this matches. Pass one
    ``cache`` for all jobs of a run so each file is hashed once.
    """
    cache = cache or FingerprintCache()
    data = config.model_dump(mode="json")
    spec = config.methods[job.method_index]
    model = dict(data["model"])
    module_name = config.model.factory.rpartition(":")[0]
    if module_name.endswith(".py"):
        model["factory_file"] = cache.file(_resolve(Path(module_name), base))
    if config.model.checkpoint is not None:
        model["checkpoint"] = cache.file(_resolve(config.model.checkpoint, base))
    target: Any = job.target
    if isinstance(job.target, RegionSpec):
        target = {
            "label": job.target.label,
            "mask": job.target.mask,
            "mask_file": cache.file(_mask_path(job.target, base)),
        }
    inputs = {k: v for k, v in data["inputs"].items() if k != "paths"}
    payload = {
        "model": model,
        "input": {"file": cache.file(Path(job.input_path)), "item": job.item, "read": inputs},
        "task": data["task"],
        "wrapper": data["wrapper"] if config.task == "segmentation" else None,
        "method": {
            "name": spec.method,
            "params": spec.params,
            "patches": spec.patches,
            "title": spec.title,
            "sign": spec.sign,
        },
        "target": target,
        "runtime": {k: data[k] for k in ("seed", "amp", "patches", "reshape", "auto_batch")},
        "outputs": {k: data["outputs"][k] for k in ("attributions", "figures", "colorbar")},
        "versions": {
            "esegeta_core": cache.core_version(),
            "plugin": cache.plugin_version(spec.method),
        },
    }
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


IGNORED_CONFIG_FIELDS = (
    "name",
    "output_dir",
    "progress",
    "log_level",
    "evaluation",
    "devices",
    "cpu_workers",
    "jobs_per_gpu",
    "time_limit",
    "executor",
    "outputs.report",
    "methods.*.force",
)
"""Config fields that do not change any job's result (where the run goes, how it is
shown and scheduled, what `esegeta evaluate` computes): a run folder accepts a config
that differs only in these."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaf values (list items by index; empty containers are leaves)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    return {prefix: value}


def _ignored(path: str) -> bool:
    parts = path.split(".")
    for pattern in IGNORED_CONFIG_FIELDS:
        wanted = pattern.split(".")
        if len(parts) >= len(wanted) and all(
            w in ("*", p) for w, p in zip(wanted, parts, strict=False)
        ):
            return True
    return False


def _normalised(data: Any) -> dict[str, Any]:
    """A stored config as :class:`RunConfig` would dump it (defaults filled in), or as
    stored when it no longer validates."""
    if not isinstance(data, dict):
        return {"(config.json)": data}
    try:
        return RunConfig.model_validate(data).model_dump(mode="json")
    except ValidationError:
        return data


def config_changes(old: Any, new: dict[str, Any]) -> list[str]:
    """``"field.path: old -> new"`` for every field that changes results (not those in
    :data:`IGNORED_CONFIG_FIELDS`), between a stored config and the one now run."""
    before = {k: v for k, v in _flatten(_normalised(old)).items() if not _ignored(k)}
    after = {k: v for k, v in _flatten(_normalised(new)).items() if not _ignored(k)}
    missing = object()

    def show(value: Any) -> str:
        if value is missing:
            return "(absent)"
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    changes = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, missing), after.get(key, missing)
        if a != b:
            changes.append(f"{key}: {show(a)} -> {show(b)}")
    return changes


def _check_previous_config(
    run_dir: Path, current: dict[str, Any], force: bool
) -> tuple[str, list[str]] | None:
    """Refuse a run folder holding another config's results; with ``force``, return the
    stored config's text (to keep as ``config.previous.json``) and the changes, else
    None (no config there, or one that gives the same results)."""
    path = run_dir / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        changes = [f"config.json cannot be read ({exc})"]
        text = ""
    else:
        try:
            changes = config_changes(json.loads(text), current)
        except ValueError as exc:
            changes = [f"config.json is not valid JSON ({exc})"]
    if not changes:
        return None
    if force:
        return text, changes
    shown = changes[:10]
    if len(changes) > len(shown):
        shown.append(f"... and {len(changes) - len(shown)} more")
    raise RunConflictError(
        f"Run folder {run_dir} holds results of a different config; its config.json differs "
        "in what changes results:\n  "
        + "\n  ".join(shown)
        + "\nUse another `name` or `output_dir` for a new run, or rerun with --force (CLI) / "
        f"force=True (API) to recompute the changed jobs in this folder (the old config is "
        f"kept as {PREVIOUS_CONFIG})."
    )


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
    """The record of a job that did not finish (error, timeout, crash, unreadable input)."""
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
        "fingerprint": job.fingerprint,
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
    """One overview figure per input item; one that cannot be drawn or written is
    logged and left out (every job is already saved)."""
    worker = RunWorker(config, Path("."), run_dir)
    by_item: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok" and "attribution" in r["files"]:
            by_item.setdefault((r["input"], r["item"]), []).append(r)
    for (path, item), group in by_item.items():
        try:
            _grid_figure(config, run_dir, worker.loaded(path), item, group)
        except (OSError, ValueError, EsegetaError) as exc:
            log.warning("no overview figure for %s #%d: %s", path, item, exc)


def _grid_figure(
    config: RunConfig, run_dir: Path, loaded: Loaded, item: int, group: list[dict[str, Any]]
) -> None:
    from esegeta_core.report.figures import grid_figure

    maps = {}
    for r in group:
        try:
            map_path = inside(run_dir, r["files"]["attribution"], f"job {r['job_id']}: the map")
        except InvalidInputError as exc:
            log.warning("%s; left out (nothing outside the run folder is read)", exc)
            continue
        saliency = _read_map(map_path, loaded)
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
            signs={(m.title or m.method): m.sign for m in config.methods},
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


PROGRESS = "progress.json"
"""The run's live progress, rewritten atomically as jobs start and finish."""


class LiveProgress:
    """Writes ``progress.json`` in the run folder: job counts, the state (running,
    finished, interrupted) and the job each worker slot is running with its device, so a
    viewer (``esegeta serve``) follows a run by reading one small file, never by listing
    thousands of records. Every change is written (a small atomic write per job start
    and end), so the file is never behind the run."""

    def __init__(self, run_dir: Path, total: int) -> None:
        self.path = run_dir / PROGRESS
        self.data: dict[str, Any] = {
            "total": total,
            "ok": 0,
            "failed": 0,
            "running": {},
            "state": "running",
            "pid": os.getpid(),
            "updated": 0.0,
        }

    def started(self, job_id: str, device: str) -> None:
        self.data["running"][job_id] = device
        self._write()

    def finished(self, job_id: str, ok: bool) -> None:
        self.data["running"].pop(job_id, None)
        self.data["ok" if ok else "failed"] += 1
        self._write()

    def set_state(self, state: str) -> None:
        self.data["state"], self.data["running"] = state, {}
        self._write()

    def _write(self) -> None:
        self.data["updated"] = time.time()
        try:
            write_json(self.path, self.data)
        except OSError as exc:  # progress is a courtesy: never fail a run for it
            log.warning("cannot write %s: %s", self.path, exc)


LOCK = ".lock"
"""The run folder's lock file: one ``esegeta run`` per folder at a time."""


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (``flock``: the kernel releases it when the process
    dies, even by SIGKILL); a second run of the same folder is refused, not interleaved."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(run_dir / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunConflictError(
                f"Run folder {run_dir} is in use by {holder}: two runs of one folder would "
                "overwrite each other's files. Wait for it to finish (or stop it), or use "
                "another name/output_dir."
            ) from exc
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"esegeta run, pid {os.getpid()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sweep_temporary_files(run_dir: Path) -> int:
    """Remove the temporary files of atomic writes (``.NAME.XXXX.tmp``, and nibabel's
    ``.NAME.XXXX.tmp.nii.gz``) that a killed run left in ``run_dir``; return how many.
    Only called while holding the folder's lock, so no live writer owns them."""
    removed = 0
    for path in run_dir.rglob(".*.tmp*"):
        if path.is_file() and (path.name.endswith(".tmp") or ".tmp." in path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def run(config: RunConfig, base: Path | None = None, *, force: bool = False) -> RunSummary:
    """Run every job of ``config`` that has not finished yet; return the summary.

    A job counts as finished when its record is ok and carries the job's current
    :func:`job_fingerprint`; any other job is (re)computed. When the run folder holds a
    ``config.json`` that differs in what changes results (see :func:`config_changes`),
    the run is refused with :class:`RunConflictError` unless ``force`` is true: then the
    changed jobs are recomputed and the old config is kept as ``config.previous.json``.
    Unreadable inputs or masks and unwritable job folders fail only their own jobs.
    """
    from esegeta_core.config_checks import require_valid

    base = base or Path.cwd()
    # unknown methods, bad params, an unusable run folder: one error listing all, no job
    require_valid(config, base)
    run_dir = config.run_dir(base)
    current = config.model_dump(mode="json")
    forced = _check_previous_config(run_dir, current, force)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir):
        return _run_locked(config, base, run_dir, current, forced)


def _run_locked(
    config: RunConfig,
    base: Path,
    run_dir: Path,
    current: dict[str, Any],
    forced: tuple[str, list[str]] | None,
) -> RunSummary:
    """:func:`run` once this process holds the run folder's lock."""
    swept = sweep_temporary_files(run_dir)
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setLevel(config.log_level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    executor = get_executor(config.executor.name, config.executor.options)
    # the core's log and the executor's (a plugin's package) both go to run.log
    names = dict.fromkeys(["esegeta_core", type(executor).__module__.partition(".")[0]])
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger, level in zip(loggers, levels, strict=True):
        logger.addHandler(handler)
        logger.setLevel(min(level or logging.WARNING, logging.getLevelName(config.log_level)))
    try:
        if swept:
            log.info("run %s: removed %d temporary files a killed run left", run_dir, swept)
        if forced is not None:
            with atomic_path(run_dir / PREVIOUS_CONFIG) as tmp:
                tmp.write_text(forced[0])
            log.warning(
                "run %s: config changed (%s); forced: config.json replaced (the old one is %s), "
                "changed jobs are recomputed",
                run_dir,
                "; ".join(forced[1][:10]),
                PREVIOUS_CONFIG,
            )
        write_json(run_dir / "config.json", current)
        cache = FingerprintCache()
        jobs = [
            dataclasses.replace(job, fingerprint=job_fingerprint(config, job, base, cache=cache))
            for job in plan_jobs(config, base)
        ]
        records: dict[str, dict[str, Any]] = {}

        def save_failure(job: Job, result: JobResult) -> None:
            record = _failure_record(job, config, result)
            path = run_dir / "jobs" / job.job_id / RECORD
            try:
                write_json(path, record)
            except OSError as exc:
                note = (
                    f"its record could not be written either: {_write_error(job, path.parent, exc)}"
                )
                record["error"] = f"{record['error']}\n{note}" if record["error"] else note
                log.error("job %s: %s", job.job_id, note)
            records[job.job_id] = record

        todo = []
        unreadable = 0
        for job in jobs:
            if job.error:
                unreadable += 1
                save_failure(job, JobResult(job.job_id, "error", "", 0.0, error=job.error))
                continue
            done = _finished(run_dir, job)
            if done is not None:
                records[job.job_id] = done
            else:
                todo.append(job)
        skipped = len(jobs) - len(todo) - unreadable
        log.info(
            "run %s: %d jobs, %d already finished, %d on unreadable inputs",
            run_dir,
            len(jobs),
            skipped,
            unreadable,
        )
        worker = RunWorker(config, base, run_dir)
        by_id = {job.job_id: job for job in todo}
        live = LiveProgress(run_dir, len(jobs))
        live.data["ok"] = sum(1 for r in records.values() if r["status"] == "ok")
        live.data["failed"] = len(records) - live.data["ok"]
        live.set_state("running")

        def record_result(result: JobResult) -> None:
            job = by_id[result.job_id]
            if result.status == "ok":
                records[job.job_id] = result.result
            else:
                save_failure(job, result)
            live.finished(job.job_id, result.status == "ok")

        submission = Submission(
            jobs=[(job.job_id, job) for job in todo],
            worker=worker,
            config=config,
            slots=_slots(config),
            on_result=record_result,
            on_start=live.started,
            time_limit=config.time_limit,
            progress=config.progress,
        )
        if todo:
            log.info("run %s: %d jobs on the %s executor", run_dir, len(todo), executor.name)
        try:
            if todo:
                executor.run(submission)
        except KeyboardInterrupt:
            live.set_state("interrupted")
            log.warning(
                "run %s interrupted: %d of %d jobs have a record; run again to resume",
                run_dir,
                len(records),
                len(jobs),
            )
            raise
        ordered = [records[job.job_id] for job in jobs]
        write_summary(run_dir, ordered)
        if config.outputs.figures:
            _grid_figures(config, run_dir, ordered)
        if config.outputs.report:
            _write_report(run_dir)
        live.set_state("finished")
        failed = sum(1 for r in ordered if r["status"] != "ok")
        log.info("run %s finished: %d ok, %d failed", run_dir, len(ordered) - failed, failed)
        return RunSummary(run_dir, ordered, skipped)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.close()


def _write_report(run_dir: Path) -> None:
    """``report.html``; a failure is logged, not raised: every job is already saved."""
    from esegeta_core.report.html import REPORT_NAME, report_from_run, write_html_report

    try:
        write_html_report(report_from_run(run_dir), run_dir / REPORT_NAME)
    except (EsegetaError, OSError, ValueError) as exc:
        log.warning("no report.html (%s); retry with `esegeta report %s`", exc, run_dir)

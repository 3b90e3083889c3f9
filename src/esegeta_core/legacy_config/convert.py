"""Converting a whole TorchEsegeta config: run name, model, inputs, task, methods,
scheduling, patches, precision, time limit, outputs and log level.

:func:`convert_legacy` calls one function per part of the run config, in the order
of the config's keys, and collects their warnings in that order.
"""

from __future__ import annotations

import re
from typing import Any

from esegeta_core.legacy_config.methods import convert_methods, method_entries
from esegeta_core.legacy_config.values import (
    MODEL_PLACEHOLDER,
    REPLACE_ME,
    Warn,
    floats,
    norm,
    off,
    truthy,
    unset,
)

__all__ = ["convert_legacy"]

_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}
_TOP_KEYS = {
    "model_nature",
    "model_name",
    "dataset",
    "test_run",
    "is_3d",
    "isDepthFirst",
    "batch_dim_present",
    "batch_present",
    "default",
    "resize",
    "centre_crop",
    "mean_vec",
    "std_vec",
    "patch_size",
    "patch_overlap",
    "amp_enbled",
    "amp_enabled",
    "share_gpu_threads",
    "timeout_enabled",
    "timeout_time",
    "log_level",
    "methods",
    "explain_methods",
}


def convert_legacy(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Convert a TorchEsegeta config dict into a ``RunConfig`` dict plus warnings.

    The result validates as :class:`esegeta_core.config.RunConfig` whenever at least
    one method carries over; the model factory and input paths are ``REPLACE_ME``
    placeholders (the original had neither) and a warning says to set them.
    """
    warnings: list[str] = []
    warn = warnings.append
    rank = 3 if truthy(data.get("is_3d", False)) else 2
    out: dict[str, Any] = {
        "name": _run_name(data, warn),
        "model": _model(data, warn),
        "inputs": _inputs(data, rank, warn),
        "task": _task(data, warn),
    }
    entries = method_entries(data)
    out["methods"] = convert_methods(entries, rank, warn)
    used = [e for e in entries if truthy(e.get("use", 1))]
    devices = _devices(used, warn)
    out.update(_scheduling(data, devices, warn))
    out.update(_patches(data, used, warn))
    out.update(_amp(data, devices, warn))
    out.update(_time_limit(data, warn))
    out["outputs"] = _outputs(used, warn)
    out.update(_log_level(data.get("log_level"), warn))
    for key in sorted(set(data) - _TOP_KEYS):
        warn(f"unknown top-level key {key!r} dropped.")
    return out, warnings


def _run_name(data: dict[str, Any], warn: Warn) -> str:
    """``model_dataset_testrun``, made a single folder name."""
    keys = ("model_name", "dataset", "test_run")
    parts = [str(data[k]) for k in keys if data.get(k) not in (None, "")]
    name = "_".join(parts) or "run"
    safe = re.sub(r"[/\\\0]", "_", name) if name not in (".", "..") else "run"
    if safe != name:
        warn(f"run name {name!r} became {safe!r} (a run name is one folder name).")
    return safe


def _model(data: dict[str, Any], warn: Warn) -> dict[str, Any]:
    """A placeholder factory: the original named none."""
    warn(
        "model.factory is a placeholder: the original config named no model factory; set it "
        "to 'package.module:function' (or 'file.py:function') and add a checkpoint if needed."
    )
    if truthy(data.get("default", False)):
        warn(
            "`default` (bundled demo models) not carried over: esegeta ships no demo models; "
            "point model.factory at your model."
        )
    return {"factory": MODEL_PLACEHOLDER}


def _inputs(data: dict[str, Any], rank: int, warn: Warn) -> dict[str, Any]:
    """Placeholder paths, the rank, layout flags, normalisation and resizing."""
    inputs: dict[str, Any] = {"paths": [REPLACE_ME], "rank": rank}
    warn("inputs.paths is a placeholder: the original config named no input files; set it.")
    if "isDepthFirst" in data:
        inputs["depth_first"] = truthy(data["isDepthFirst"])
    batch = data.get("batch_dim_present", data.get("batch_present"))
    if batch is not None:
        inputs["batch_dim"] = truthy(batch)
    inputs.update(_normalise(data.get("mean_vec"), data.get("std_vec"), warn))
    resize = data.get("resize")
    if not off(resize):
        sizes = resize if isinstance(resize, (list, tuple)) else [resize] * rank
        inputs["resize"] = [int(s) for s in sizes]
    if not off(data.get("centre_crop")):
        warn(f"centre_crop={data['centre_crop']!r} not carried over: esegeta has no centre crop.")
    return inputs


def _normalise(mean: Any, std: Any, warn: Warn) -> dict[str, Any]:
    """``{"normalise": ...}`` when both vectors are set; a warning when only one is."""
    if not unset(mean) and not unset(std):
        return {"normalise": {"mean": floats(mean), "std": floats(std)}}
    if not (unset(mean) and unset(std)):
        warn("mean_vec/std_vec: only one of them is set; normalisation not carried over.")
    return {}


def _task(data: dict[str, Any], warn: Warn) -> str:
    """Segmentation or classification, from ``model_nature``."""
    nature = norm(data.get("model_nature", "classification"))
    if nature.startswith("seg"):
        return "segmentation"
    if not nature.startswith("class"):
        warn(f"model_nature {data.get('model_nature')!r} unknown; using 'classification'.")
    return "classification"


def _devices(entries: list[dict[str, Any]], warn: Warn) -> list[str]:
    """The distinct devices of the entries, in esegeta's form; unknown ones dropped."""
    from esegeta_core.runtime.scheduler import DEVICE_FORMS, DEVICE_PATTERN

    found: list[str] = []
    for device in _device_ids(entries):
        text = _device_name(device)
        if not DEVICE_PATTERN.fullmatch(text):
            warn(
                f"device_id {device!r} is not a device esegeta knows "
                f"({', '.join(map(repr, DEVICE_FORMS))}); dropped."
            )
        elif text not in found:
            found.append(text)
    return found


def _device_ids(entries: list[dict[str, Any]]) -> list[Any]:
    """Every ``device_id`` the entries give (one or a list each), blanks left out."""
    values = [entry.get("device_id") for entry in entries]
    ids = [d for v in values for d in (v if isinstance(v, (list, tuple)) else [v])]
    return [d for d in ids if d is not None and d != ""]


def _device_name(device: Any) -> str:
    """One original device id in esegeta's form: 2 -> 'cuda:2', -1 -> 'cpu', 'gpu1' ->
    'cuda:1', 'cuda' -> 'cuda:0'; anything else lower-cased as is."""
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        return "cpu" if int(device) < 0 else f"cuda:{int(device)}"
    text = str(device).strip().lower()
    text = "cuda:0" if text in ("cuda", "gpu") else text
    return re.sub(r"^(?:gpu|cuda):?([0-9]+)$", r"cuda:\1", text)


def _scheduling(data: dict[str, Any], devices: list[str], warn: Warn) -> dict[str, Any]:
    """``devices`` and ``jobs_per_gpu``; per-method devices are not carried over."""
    out: dict[str, Any] = {}
    if devices:
        out["devices"] = devices
    if len(devices) > 1:
        warn(
            f"device_id per method not carried over: esegeta schedules every job on any of "
            f"{devices} (set `devices` to restrict)."
        )
    threads = data.get("share_gpu_threads")
    if isinstance(threads, (int, float)) and threads >= 1:
        out["jobs_per_gpu"] = int(threads)
    return out


def _patches(data: dict[str, Any], used: list[dict[str, Any]], warn: Warn) -> dict[str, Any]:
    """``{"patches": ...}`` when ``patch_size`` is set (overlap made even)."""
    size = data.get("patch_size")
    if off(size):
        if any(truthy(e.get("patch_required", 0)) for e in used):
            warn("Some methods set patch_required but patch_size is off: no patches.")
        return {}
    overlap = _even_overlap(data.get("patch_overlap", 0), warn)
    sizes = [int(s) for s in size] if isinstance(size, (list, tuple)) else int(size)
    return {"patches": {"size": sizes, "overlap": overlap, "mode": "average"}}


def _even_overlap(value: Any, warn: Warn) -> int | list[int]:
    """The patch overlap rounded down to even numbers (esegeta needs even), 0 when off."""
    overlap = 0 if off(value) else value
    overlaps = overlap if isinstance(overlap, (list, tuple)) else [overlap]
    even = [int(o) - int(o) % 2 for o in overlaps]
    if even != [int(o) for o in overlaps] or any(o != int(o) for o in overlaps):
        warn(f"patch_overlap {overlap!r} rounded down to even {even} (esegeta needs even).")
    return even if isinstance(overlap, (list, tuple)) else even[0]


def _amp(data: dict[str, Any], devices: list[str], warn: Warn) -> dict[str, Any]:
    """Mixed precision: fp16 with a CUDA device, bf16 (with a warning) without."""
    if not truthy(data.get("amp_enbled", data.get("amp_enabled", False))):
        return {}
    if any(d.startswith("cuda") for d in devices):
        return {"amp": "fp16"}
    warn(
        "amp_enbled: no CUDA device in the config, so amp is 'bf16' (fp16 mixed "
        "precision is a CUDA feature); set 'fp16' if the run will use a GPU."
    )
    return {"amp": "bf16"}


def _time_limit(data: dict[str, Any], warn: Warn) -> dict[str, Any]:
    """``{"time_limit": seconds}`` when the original's timeout is on and positive."""
    if not truthy(data.get("timeout_enabled", False)):
        return {}
    limit = data.get("timeout_time")
    if isinstance(limit, (int, float)) and limit > 0:
        return {"time_limit": float(limit)}
    warn(f"timeout_enabled but timeout_time={limit!r} is not a positive number: no limit.")
    return {}


def _outputs(used: list[dict[str, Any]], warn: Warn) -> dict[str, Any]:
    """Colour bars on unless every method turned them off (esegeta has one setting)."""
    colorbars = {truthy(e.get("show_colorbar", True)) for e in used}
    if len(colorbars) > 1:
        warn("show_colorbar differs between methods; esegeta has one setting: colour bars on.")
    return {"colorbar": True in colorbars or not colorbars}


def _log_level(level: Any, warn: Warn) -> dict[str, Any]:
    """``{"log_level": name}`` from a level name or number; INFO (with a warning) when
    unknown."""
    if level is None:
        return {}
    name = str(level).upper()
    name = {"WARN": "WARNING", "CRITICAL": "ERROR", "FATAL": "ERROR"}.get(name, name)
    if name.isdigit():
        name = {10: "DEBUG", 20: "INFO", 30: "WARNING"}.get(int(name), "ERROR")
    if name in _LOG_LEVELS:
        return {"log_level": name}
    warn(f"log_level {level!r} unknown; using INFO.")
    return {}

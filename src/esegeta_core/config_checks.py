"""Checks of a run config against what is installed and on this host, before any job.

:func:`check_config` returns every problem it finds as one line each (field, what is
wrong, the fix) instead of stopping at the first, so ``esegeta validate`` and
``esegeta run`` report them all at once. Without ``plan`` it checks only what every
job needs and costs nothing: each method is installed and its ``params`` validate, and
the run folder can be created. With ``plan`` (``esegeta validate --plan``) it also
checks the files and the host without building the model: the model factory's module
imports and defines the function (the factory is not called), the checkpoint, region
masks, evaluation masks and input files exist, and the devices exist here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from esegeta_core.config import ModelSpec, RegionSpec, RunConfig
from esegeta_core.data_io import expand_paths
from esegeta_core.errors import EsegetaError, InvalidModelError, InvalidParamsError

__all__ = [
    "check_config",
    "device_problems",
    "import_factory",
    "method_problems",
    "model_problems",
    "output_dir_problems",
    "require_valid",
]


def check_config(config: RunConfig, base: Path | None = None, *, plan: bool = False) -> list[str]:
    """Every problem of ``config`` (paths relative to ``base``, default the current
    folder), one line each; empty when it is fine. ``plan`` adds the checks of files,
    the model factory and devices (see the module docstring)."""
    base = Path.cwd() if base is None else Path(base)
    problems = method_problems(config) + output_dir_problems(config, base)
    problems += executor_problems(config)
    if plan:
        problems += model_problems(config.model, base, "model")
        problems += _evaluation_model_problems(config, base)
        problems += _file_problems(config, base)
        problems += _local_device_problems(config)
    return problems


def require_valid(
    config: RunConfig, base: Path | None = None, *, plan: bool = False, source: Any = None
) -> None:
    """Raise one :class:`InvalidParamsError` listing every problem :func:`check_config`
    finds, and the devices this host lacks (a run is about to use them); ``source``
    (the config file) names the config in the message."""
    problems = check_config(config, base, plan=plan)
    if not plan:
        problems += _local_device_problems(config)
    if problems:
        what = f"Config {source}" if source is not None else f"Run {config.name!r}"
        listed = "\n".join(f"  - {p}" for p in problems)
        raise InvalidParamsError(
            f"{what} has {len(problems)} problem(s); nothing was run:\n{listed}"
        )


def executor_problems(config: RunConfig) -> list[str]:
    """An executor that is not installed, or options it refuses."""
    from esegeta_core.plugin.executors import get_executor

    try:
        get_executor(config.executor.name, config.executor.options)
    except EsegetaError as exc:
        return [str(exc)]
    return []


def _local_device_problems(config: RunConfig) -> list[str]:
    """The devices this host lacks, when the jobs run on this host: a cluster executor
    maps ``devices`` onto the cluster's resources instead (and checks them itself)."""
    return device_problems(config.devices) if config.executor.name == "local" else []


def method_problems(config: RunConfig) -> list[str]:
    """Methods that are not installed, and parameters their method refuses."""
    from esegeta_core.api import validate_params
    from esegeta_core.plugin.manager import get_registry

    problems = []
    for i, spec in enumerate(config.methods):
        try:
            validate_params(get_registry().get(spec.method), spec.params)
        except EsegetaError as exc:
            problems.append(f"methods.{i} ({spec.method}): {exc}")
    return problems


def output_dir_problems(config: RunConfig, base: Path) -> list[str]:
    """Why the run folder ``output_dir/name`` cannot be created or written, if so.

    Read-only: nothing is created. Walks up to the first path that exists, which must
    be a writable folder (a regular file there, e.g. given as ``output_dir``, fails)."""
    try:
        run_dir = config.run_dir(base)
    except EsegetaError as exc:
        return [f"name: {exc}"]
    fix = "choose another output_dir (or --output-dir), or move what is in the way"
    probe = run_dir
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        kind = "a file" if probe.exists() else "a broken link"
        return [
            f"output_dir: cannot create the run folder {run_dir}: {probe} is {kind}, not a "
            f"folder; {fix}."
        ]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [
            f"output_dir: cannot create the run folder {run_dir}: {probe} is not writable; {fix}."
        ]
    return []


class _MissingError(Exception):
    """The factory's file, module or function is not there (not a failing import)."""


def import_factory(factory: str, base: Path) -> Callable[..., Any]:
    """The function a ``'package.module:function'`` or ``'path/file.py:function'``
    factory names (a relative file is relative to ``base``), imported but not called.
    Raises :class:`InvalidModelError` saying whether it is missing or its import failed."""
    module_name, _, func = factory.rpartition(":")
    fix = "use 'package.module:function' (importable here) or 'path/to/file.py:function'"
    try:
        if module_name.endswith(".py"):
            path = _under(base, module_name)
            if not path.is_file():
                raise _MissingError(f"the file {path} does not exist")
            found = importlib.util.spec_from_file_location(path.stem, path)
            if found is None or found.loader is None:
                raise _MissingError(f"{path} cannot be loaded as a Python module")
            module = importlib.util.module_from_spec(found)
            found.loader.exec_module(module)
        else:
            if not module_name or _find_spec(module_name) is None:
                raise _MissingError(f"no module named {module_name!r} is installed")
            module = importlib.import_module(module_name)
        function = getattr(module, func, None)
        if not callable(function):
            raise _MissingError(f"{module_name} defines no function {func!r}")
    except _MissingError as exc:
        raise InvalidModelError(f"{exc}; {fix}.") from None
    except (Exception, SystemExit) as exc:
        raise InvalidModelError(
            f"importing {module_name} failed: {type(exc).__name__}: {exc}; fix the module "
            "or the factory path."
        ) from exc
    return function


def model_problems(spec: ModelSpec, base: Path, where: str = "model") -> list[str]:
    """The factory's module cannot be imported or lacks the function, or the checkpoint
    file is missing. The module is imported (that runs its top-level code); the factory
    is not called."""
    problems = []
    try:
        import_factory(spec.factory, base)
    except InvalidModelError as exc:
        problems.append(f"{where}.factory {spec.factory!r}: {exc}")
    if spec.checkpoint is not None:
        path = _under(base, spec.checkpoint)
        if not path.is_file():
            problems.append(
                f"{where}.checkpoint: {path} does not exist or is not a file; fix the path "
                "(relative paths are relative to the config file's folder)."
            )
    return problems


def _find_spec(name: str) -> Any:
    """``importlib.util.find_spec``, None also when a parent package is missing."""
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise


def device_problems(devices: Any) -> list[str]:
    """Requested devices that this host lacks (``auto`` always fits), one line each.

    Each device is checked with the scheduler's :func:`check_devices`, which raises for
    a device this host lacks; every such device gets its line."""
    from esegeta_core.runtime.scheduler import check_devices

    if devices == "auto":
        return []
    problems = []
    for device in dict.fromkeys(devices):
        try:
            check_devices([device])
        except EsegetaError as exc:
            text = str(exc)
            problems.append(text if text.startswith("devices") else f"devices: {text}")
    return problems


def _evaluation_model_problems(config: RunConfig, base: Path) -> list[str]:
    if config.evaluation is None:
        return []
    problems = []
    for name, section in config.evaluation.models.items():
        where = f"evaluation.models.{name}"
        try:
            spec = ModelSpec.model_validate(section)
        except ValueError as exc:
            problems.append(f"{where}: not a model section ({exc.__class__.__name__}: {exc})")
            continue
        problems += model_problems(spec, base, where)
    return problems


def _file_problems(config: RunConfig, base: Path) -> list[str]:
    """Input patterns that match nothing, missing region and evaluation masks."""
    problems = []
    inputs = _matches(config.inputs.paths, base, "inputs.paths", problems)
    for i, target in enumerate(config.targets or []):
        if isinstance(target, RegionSpec):
            path = _under(base, target.mask)
            if not path.is_file():
                problems.append(f"targets.{i}.mask: {path} does not exist; fix the path.")
    masks = config.evaluation.masks if config.evaluation is not None else None
    if masks:
        found = _matches(masks, base, "evaluation.masks", problems)
        if found is not None and inputs is not None and len(found) != len(inputs):
            problems.append(
                f"evaluation.masks: {len(found)} mask file(s) for {len(inputs)} input file(s); "
                "give one mask per input file, in the order of inputs.paths."
            )
    return problems


def _matches(patterns: list[str], base: Path, where: str, problems: list[str]) -> list[Path] | None:
    """The files the patterns match; a pattern matching nothing is a problem (None)."""
    files: list[Path] | None = []
    for j, pattern in enumerate(patterns):
        try:
            found = expand_paths([pattern], base)
        except EsegetaError:
            problems.append(
                f"{where}.{j}: no file matches {pattern!r} (relative to {base}); fix the path."
            )
            files = None
            continue
        if files is not None:
            files.extend(p for p in found if p not in files)
    return files


def _under(base: Path, path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else base / path

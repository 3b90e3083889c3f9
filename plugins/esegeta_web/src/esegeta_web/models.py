"""The models a web user may run, and the check that a submitted config stays within them
and within the workspace.

A run config names Python factories, which is code. Whoever starts ``esegeta serve``
declares the models users may choose in ``--models FILE`` (YAML or JSON)::

    shapes:
      factory: esegeta_core.synthetic.models:shapes_classifier
      kwargs: {}
      checkpoint: models/shapes.pt      # relative to the models file
      task: classification
      description: The synthetic shapes classifier.
    unet:
      factory: nets/unet.py:make        # a file relative to the models file

A submitted config then names a model by its name (``model: shapes``, or
``model: {name: shapes, checkpoint: other.pt}``), or repeats a declared factory with its
declared kwargs; any other factory is refused, and so is every path (inputs, masks,
checkpoints, output_dir) outside the workspace.

A relative factory file (``nets/unet.py:make``) and a relative checkpoint of the models
file are relative to the models file's folder; they are stored absolute, so the configs
the app writes (under ``.esegeta-web/configs/``, which ``esegeta run`` takes as the base
of relative paths) name the same files. A submitted config may name such a factory by
its resolved path or by its text in the models file.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from esegeta_core.config import ModelSpec, parse_config_text, read_config_file
from esegeta_core.errors import InvalidParamsError
from esegeta_web.security import confine

RUN_LEVEL_KEYS = ("task", "wrapper")
"""Keys of a declared model that set run-level fields (when the config does not)."""
USER_OVERRIDES = ("checkpoint", "checkpoint_key", "strict", "output")
"""Model fields a user may change for a declared model (weights, not code)."""


class ModelNotAllowedError(InvalidParamsError):
    """A submitted config names a model or factory the server's owner did not declare."""


@dataclass(frozen=True)
class DeclaredModel:
    """One model of the ``--models`` file: its model section and run-level defaults."""

    name: str
    spec: dict[str, Any]
    run_defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    factory_text: str = ""
    """The factory as the models file writes it (a relative file before resolving)."""

    def names_factory(self, factory: Any) -> bool:
        """Whether ``factory`` (a submitted config's) is this model's factory."""
        return factory in (self.spec["factory"], self.factory_text or self.spec["factory"])


def load_models(path: Path | None) -> dict[str, DeclaredModel]:
    """The models declared in ``path`` by name (none when ``path`` is None).

    Each entry is a model section (``factory``, ``kwargs``, ``checkpoint``...) plus
    optional ``task``, ``wrapper`` and ``description``; a relative checkpoint or factory
    file (``nets/unet.py:make``) is relative to the models file's folder and stored
    absolute. Raises :class:`InvalidParamsError` naming the file and entry (also for a
    factory file that does not exist)."""
    if path is None:
        return {}
    path = Path(path)
    data = parse_config_text(read_config_file(path, "Models file"), path.suffix.lower(), path)
    models = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise InvalidParamsError(
                f"Models file {path}: {name!r} must be a mapping with at least 'factory'."
            )
        entry = dict(entry)
        description = str(entry.pop("description", ""))
        run_defaults = {k: entry.pop(k) for k in RUN_LEVEL_KEYS if k in entry}
        try:
            spec = ModelSpec.model_validate(entry).model_dump(mode="json", exclude_none=True)
        except ValidationError as exc:
            raise InvalidParamsError(
                f"Models file {path}: model {name!r} is invalid: {exc}"
            ) from exc
        if spec.get("checkpoint"):
            spec["checkpoint"] = str((path.parent / spec["checkpoint"]).resolve())
        factory_text = spec["factory"]
        module, _, function = factory_text.rpartition(":")
        if module.endswith(".py"):
            file = (path.parent / module).resolve()
            if not file.is_file():
                raise InvalidParamsError(
                    f"Models file {path}: model {name!r}: the factory file {file} does not "
                    "exist (a relative factory file is relative to the models file's folder)."
                )
            spec["factory"] = f"{file}:{function}"
        models[str(name)] = DeclaredModel(str(name), spec, run_defaults, description, factory_text)
    return models


def _resolve_model(
    value: Any, models: dict[str, DeclaredModel], workspace: Path, where: str
) -> tuple[dict[str, Any], DeclaredModel]:
    """The full model section a submitted ``value`` stands for, and its declaration."""
    names = ", ".join(sorted(models)) or "none: start the server with --models FILE"
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ModelNotAllowedError(f"{where}: give a declared model's name ({names}).")
    value = dict(value)
    if "name" in value:
        declared = models.get(str(value.pop("name")))
        if declared is None:
            raise ModelNotAllowedError(f"{where}: unknown model; declared models: {names}.")
        extra = sorted(set(value) - set(USER_OVERRIDES))
        if extra:
            raise ModelNotAllowedError(
                f"{where}: a declared model may only change {', '.join(USER_OVERRIDES)}, "
                f"not {', '.join(extra)}."
            )
    else:
        factory, kwargs = value.get("factory"), value.get("kwargs", {})
        matching = [
            m
            for m in models.values()
            if m.names_factory(factory) and m.spec.get("kwargs", {}) == kwargs
        ]
        if not matching:
            raise ModelNotAllowedError(
                f"{where}: the factory {factory!r} (with these kwargs) is not among the models "
                f"this server allows ({names}); pick one of them by name."
            )
        declared = matching[0]
        value = {k: v for k, v in value.items() if k not in ("factory", "kwargs")}
        extra = sorted(set(value) - set(USER_OVERRIDES))
        if extra:
            raise ModelNotAllowedError(f"{where}: unknown model fields {', '.join(extra)}.")
    spec = dict(declared.spec)
    for key, override in value.items():
        if key == "checkpoint" and override is not None:
            override = str(confine(workspace, override, what=f"{where}.checkpoint"))
        spec[key] = override
    return spec, declared


def check_models(data: dict[str, Any], models: dict[str, DeclaredModel], workspace: Path) -> None:
    """Refuse (:class:`ModelNotAllowedError`) a config whose ``model`` or
    ``evaluation.models`` are not declared, before anything else of it is looked at."""
    if "model" in data:
        _resolve_model(data["model"], models, workspace, "model")
    evaluation = data.get("evaluation")
    extra = evaluation.get("models") if isinstance(evaluation, dict) else None
    for name, value in (extra or {}).items() if isinstance(extra, dict) else ():
        _resolve_model(value, models, workspace, f"evaluation.models.{name}")


def _confined_paths(patterns: Any, workspace: Path, where: str) -> list[str]:
    """Every file a list of paths or glob patterns names, each confined, as absolute
    paths (a pattern that matches nothing stays, confined, for the run to report)."""
    if not isinstance(patterns, list):
        raise InvalidParamsError(f"{where} must be a list of paths relative to the workspace.")
    out = []
    for pattern in patterns:
        base = confine(workspace, str(pattern), what=where)
        matches = sorted(glob.glob(str(base))) if glob.has_magic(str(pattern)) else [str(base)]
        for match in matches or [str(base)]:
            rel = Path(match).relative_to(workspace) if Path(match).is_absolute() else match
            out.append(str(confine(workspace, rel, what=where)))
    return out


def sanitise_config(
    data: dict[str, Any], models: dict[str, DeclaredModel], workspace: Path
) -> dict[str, Any]:
    """``data`` (a parsed run config) with its models resolved to declared ones and its
    paths made absolute inside ``workspace``; refuses anything else.

    Raises :class:`ModelNotAllowedError` for a model not declared and
    :class:`~esegeta_web.security.PathOutsideWorkspaceError` for a path outside."""
    data = dict(data)
    if "model" not in data:
        raise InvalidParamsError("The config has no 'model': name one of the declared models.")
    data["model"], declared = _resolve_model(data["model"], models, workspace, "model")
    for key, default in declared.run_defaults.items():
        data.setdefault(key, default)
    inputs = dict(data.get("inputs") or {})
    inputs["paths"] = _confined_paths(inputs.get("paths", []), workspace, "inputs.paths")
    data["inputs"] = inputs
    targets = data.get("targets")
    if isinstance(targets, list):
        data["targets"] = [
            {**t, "mask": str(confine(workspace, t["mask"], what=f"targets[{i}].mask"))}
            if isinstance(t, dict) and "mask" in t
            else t
            for i, t in enumerate(targets)
        ]
    output_dir = data.get("output_dir", "esegeta-out")
    data["output_dir"] = str(confine(workspace, str(output_dir), what="output_dir"))
    evaluation = data.get("evaluation")
    if isinstance(evaluation, dict):
        evaluation = dict(evaluation)
        if evaluation.get("masks") is not None:
            evaluation["masks"] = _confined_paths(
                evaluation["masks"], workspace, "evaluation.masks"
            )
        extra_models = evaluation.get("models") or {}
        if not isinstance(extra_models, dict):
            raise InvalidParamsError("evaluation.models must map names to declared models.")
        evaluation["models"] = {
            name: _resolve_model(value, models, workspace, f"evaluation.models.{name}")[0]
            for name, value in extra_models.items()
        }
        data["evaluation"] = evaluation
    return data

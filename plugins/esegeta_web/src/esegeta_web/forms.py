"""The new-run form, generated from JSON Schemas, and what its buttons do.

The run config's schema (:class:`esegeta_core.config.RunConfig`) and each method's
``Params`` schema give every field: its widget, type, default and description. Form
field names are the pydantic locations joined by dots (``inputs.rank``,
``methods.0.params.n_steps``), so a validation error's ``loc`` names its field.

The form's state is a plain config dict in which ``model`` is a declared model's name
(``{name, checkpoint}`` with a checkpoint override): rendering reads it, parsing the
posted form writes it, and an imported TorchEsegeta config is converted into it.
:func:`cli_config` turns it into the config ``esegeta run`` reads (the declared
model's factory and kwargs written out, paths kept relative to the workspace).

Nested sections get one field per sub-field, not a JSON box: a section that may be null
(``patches``, ``evaluation``, ``inputs.normalise``) is a ``section`` checkbox followed by
its fields (``patches.size``...); it is set when the box is ticked or any of its fields
is filled. Lists of numbers or strings (``inputs.resize``, ``patches.size``,
``evaluation.metrics``) are typed comma-separated (one value where a single number is
allowed). Only free-form mappings (``evaluation.models``, dict-valued method
parameters) stay JSON.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from esegeta_core.config import MethodSpec, RunConfig
from esegeta_core.errors import EsegetaError, InvalidParamsError
from esegeta_web.models import (
    USER_OVERRIDES,
    DeclaredModel,
    ModelNotAllowedError,
    sanitise_config,
)
from esegeta_web.security import confine

INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".pt", ".nii")
"""Workspace files offered as inputs (``.nii.gz`` too)."""
MAX_LISTED_FILES = 500
"""At most this many workspace files are offered as inputs (the rest by glob)."""
SPECIAL = ("model", "inputs.paths", "methods", "targets")
"""Run-config fields with widgets of their own (not generated one by one)."""
GENERAL = "(general)"
"""Error key of problems that name no form field."""
CHECKBOXES = "shown_checkbox"
"""Form field listing the checkboxes a page showed (an unchecked box sends nothing)."""


@dataclass
class FormField:
    """One generated input: its dotted ``name`` (the pydantic location), the widget
    (``text``, ``checkbox``, ``select``, ``list``, ``json``, or ``section``: the box of
    an optional section), the shown value and what the schema says (type, default,
    description, choices); ``section``: the optional section it belongs to."""

    name: str
    label: str
    widget: str
    value: str
    type_text: str
    default: str
    description: str
    required: bool = False
    choices: list[str] = field(default_factory=list)
    error: str = ""
    checked: bool = False
    section: str = ""
    item_type: str = ""
    """For ``list``: the items' JSON type (integer, number, string)."""
    scalar: bool = False
    """For ``list``: one value (not a list) is allowed too."""
    scalar_only: list[str] = field(default_factory=list)
    """For ``list``: when set, the only values allowed alone (``devices``: "auto")."""


# -- schemas -----------------------------------------------------------------------------


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``prop`` with a ``$ref`` (also as the only ``allOf`` item) replaced by its target."""
    if "$ref" in prop:
        return {
            **defs[prop["$ref"].rsplit("/", 1)[-1]],
            **{k: v for k, v in prop.items() if k != "$ref"},
        }
    if len(prop.get("allOf", [])) == 1:
        return _resolve(
            {**prop["allOf"][0], **{k: v for k, v in prop.items() if k != "allOf"}}, defs
        )
    return prop


def _type_text(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """The type in words, as ``esegeta methods NAME`` shows it."""
    from esegeta_core.cli import schema_type

    return str(schema_type(prop, defs))


def _variants(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return list(prop.get("anyOf", [prop]))


def _is_string(prop: dict[str, Any]) -> bool:
    """Whether every non-null variant is a plain string (the text is the value)."""
    kinds = [v for v in _variants(prop) if v.get("type") != "null"]
    return bool(kinds) and all(v.get("type") == "string" for v in kinds)


def _choices(prop: dict[str, Any]) -> list[str]:
    """The allowed strings of an enum (plus "" when null is allowed), else []."""
    out: list[str] = []
    nullable = False
    for v in _variants(prop):
        if v.get("type") == "null":
            nullable = True
        elif "enum" in v and all(isinstance(e, str) for e in v["enum"]):
            out += v["enum"]
        elif "const" in v and isinstance(v["const"], str):
            out.append(v["const"])
        else:
            return []
    return ([""] if nullable else []) + out if out else []


def _show(value: Any, widget: str = "text") -> str:
    if value is None:
        return ""
    if widget == "list" and isinstance(value, list):
        return ", ".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


SCALARS = ("integer", "number", "string")


def _list_kind(prop: dict[str, Any]) -> tuple[str, bool, list[str]] | None:
    """(item type, whether one bare value is allowed, the only bare values allowed
    if constants) when ``prop`` is a list of one scalar type, optionally also that
    scalar alone or null (``int | list[int]``, ``'auto' | list[str]``); else None."""
    items, scalar, consts = set(), False, []
    for v in _variants(prop):
        kind = v.get("type")
        if kind == "null":
            continue
        if kind == "array" and v.get("items", {}).get("type") in SCALARS:
            items.add(v["items"]["type"])
        elif kind in SCALARS and "enum" not in v:
            items.add(kind)
            scalar = True
            if "const" in v:
                consts.append(str(v["const"]))
        else:
            return None
    if len(items) != 1 or not any(v.get("type") == "array" for v in _variants(prop)):
        return None
    return items.pop(), scalar, consts


def _section(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema of a nullable section (``X | None`` where X has properties)."""
    kinds = _variants(prop)
    if not any(v.get("type") == "null" for v in kinds):
        return None
    objects = [_resolve(v, defs) for v in kinds if v.get("type") != "null"]
    if len(objects) == 1 and objects[0].get("type") == "object" and objects[0].get("properties"):
        return objects[0]
    return None


def _error(errors: Mapping[str, str], name: str, leaf: bool) -> str:
    """The error at ``name``; a leaf field also shows an error deeper in its value
    (``patches.size.0``, or a union's ``patches.size.int``)."""
    if name in errors:
        return errors[name]
    if leaf:
        return next((v for k, v in errors.items() if k.startswith(f"{name}.")), "")
    return ""


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path of nested dicts/lists, or a missing marker."""
    node: Any = data
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


_MISSING = object()


def schema_fields(
    schema: dict[str, Any],
    prefix: str,
    values: Mapping[str, Any],
    errors: Mapping[str, str],
    *,
    skip: tuple[str, ...] = (),
    defs: dict[str, Any] | None = None,
    section: str = "",
) -> list[FormField]:
    """One :class:`FormField` per property of ``schema`` (object properties without a
    default of their own are expanded into their fields, a nullable section into its
    ``section`` box and its fields), valued from ``values``."""
    defs = {**schema.get("$defs", {}), **(defs or {})}
    required = set(schema.get("required", []))
    out = []
    for key, raw in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        if name in skip:
            continue
        prop = _resolve(raw, defs)
        if prop.get("type") == "object" and "properties" in prop:
            out += schema_fields(
                prop, f"{name}.", values, errors, skip=skip, defs=defs, section=section
            )
            continue
        inner = _section(prop, defs)
        if inner is not None:
            value = _get(values, name)
            out.append(
                FormField(
                    name=name,
                    label=key,
                    widget="section",
                    value="",
                    type_text=_type_text(raw, defs),
                    default="null",
                    description=f"{prop.get('description', '')} Tick to use this section "
                    "(filling any of its fields also does); unticked and empty: null.",
                    error=_error(errors, name, leaf=False),
                    checked=isinstance(value, dict),
                    section=section,
                )
            )
            out += schema_fields(
                inner, f"{name}.", values, errors, skip=skip, defs=defs, section=name
            )
            continue
        default = prop.get("default", _MISSING)
        value = _get(values, name)
        if value is _MISSING:
            value = None if default is _MISSING else default
        choices = _choices(prop)
        widget = "select" if choices else "text"
        kinds = {v.get("type") for v in _variants(prop)} - {"null"}
        listed = _list_kind(prop)
        if kinds == {"boolean"}:
            widget = "checkbox"
        elif not choices and listed is not None:
            widget = "list"
        elif not choices and not _is_string(prop) and kinds & {"object", "array", None}:
            widget = "json"
        description = prop.get("description", "")
        if prop.get("aliases"):
            description += f" Also accepted as: {', '.join(prop['aliases'])}."
        if section and key in required:
            description += f" Required when {section} is used."
        out.append(
            FormField(
                name=name,
                label=key,
                widget=widget,
                value=_show(value, widget),
                type_text=_type_text(raw, defs),
                default="(required)" if key in required else json.dumps(prop.get("default")),
                description=description,
                required=key in required and not section,
                choices=choices,
                error=_error(errors, name, leaf=True),
                checked=value is True,
                section=section,
                item_type=listed[0] if listed else "",
                scalar=bool(listed and listed[1]),
                scalar_only=listed[2] if listed else [],
            )
        )
    return out


# -- method catalogue ----------------------------------------------------------------------


def method_choices() -> list[dict[str, Any]]:
    """Every installed method with what the list filters on (plugin, family, ranks)."""
    from esegeta_core.catalog import list_methods

    return [
        {
            "name": m.name,
            "plugin": m.plugin,
            "family": m.family,
            "ranks": " ".join(map(str, m.ranks)),
            "cost": m.cost,
            "description": m.description,
        }
        for m in list_methods()
    ]


def params_fields(
    method: str, index: int, values: Mapping[str, Any], errors: Mapping[str, str]
) -> list[FormField]:
    """The fields of method ``index``'s parameters ([] for an unknown method)."""
    from esegeta_core.plugin.manager import get_registry

    try:
        cls = get_registry().get(method)
    except (LookupError, EsegetaError):
        return []
    return schema_fields(cls.Params.model_json_schema(), f"methods.{index}.params.", values, errors)


def method_slots(state: Mapping[str, Any], errors: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per method entry of ``state``: its name field, options and parameters."""
    slots = []
    spec_schema = MethodSpec.model_json_schema()
    for i, entry in enumerate(state.get("methods") or [{}]):
        name = str(entry.get("method", "")) if isinstance(entry, dict) else ""
        skip = (f"methods.{i}.method", f"methods.{i}.params")
        slots.append(
            {
                "index": i,
                "method": name,
                "error": errors.get(f"methods.{i}.method", "") or errors.get(f"methods.{i}", ""),
                "options": schema_fields(spec_schema, f"methods.{i}.", state, errors, skip=skip),
                "params": params_fields(name, i, state, errors) if name else [],
            }
        )
    return slots


# -- workspace files -------------------------------------------------------------------------


def workspace_inputs(workspace: Path) -> list[str]:
    """Input files of the workspace (relative paths, sorted; hidden folders and run
    folders skipped), at most :data:`MAX_LISTED_FILES`."""
    found: list[str] = []
    for root, dirs, files in os.walk(workspace):
        if "config.json" in files and Path(root) != workspace:
            dirs[:] = []  # a run folder: its maps are outputs, not inputs
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(INPUT_SUFFIXES) or name.lower().endswith(".nii.gz"):
                found.append((Path(root) / name).relative_to(workspace).as_posix())
                if len(found) >= MAX_LISTED_FILES:
                    return found
    return found


# -- the posted form -> state ---------------------------------------------------------------


def _parse(text: str, f: FormField) -> Any:
    """The value a field's text stands for: strings stay text, the rest is read as
    JSON (text that is not JSON is kept, for validation to report at the field)."""
    if f.widget == "select" or (f.widget == "text" and f.type_text.startswith("str")):
        return text if text != "" else None
    if f.widget == "list":
        return _parse_list(text, f)
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_list(text: str, f: FormField) -> Any:
    """A ``list`` field's text: comma-separated values (numbers also space-separated)
    of the item type, or one bare value where the schema allows it; JSON (``[1, 2]``)
    is read too. An item that is not of the type is kept as text, for validation to
    report at the field."""
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            return text
    if f.item_type == "string":
        items: list[Any] = [t.strip() for t in text.split(",") if t.strip()]
    else:
        convert = int if f.item_type == "integer" else float
        items = []
        for token in text.replace(",", " ").split():
            try:
                items.append(convert(token))
            except ValueError:
                items.append(token)
    alone = f.scalar and len(items) == 1
    if alone and f.scalar_only and str(items[0]) not in f.scalar_only:
        alone = False
    return items[0] if alone else items


def _put(data: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = data
    parts = dotted.split(".")
    for part, nxt in pairwise(parts):
        key: Any = int(part) if isinstance(node, list) else part
        if isinstance(node, list):
            while len(node) <= key:
                node.append({})
            node = node[key]
            continue
        if key not in node:
            node[key] = [] if nxt.isdigit() else {}
        node = node[key]
    last = parts[-1]
    if isinstance(node, list):
        while len(node) <= int(last):
            node.append({})
        node[int(last)] = value
    else:
        node[last] = value


def _targets(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            return text
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        return text


def _fill(
    data: dict[str, Any], fields: list[FormField], form: Mapping[str, Any], shown: set[str]
) -> None:
    """Put every field that differs from its default into ``data``. A checkbox counts
    only when the page showed it (``shown``): an unchecked box sends nothing, and a
    method chosen without its parameters on the page must keep their defaults."""
    for f in fields:
        if f.widget == "section":
            ticked = form.get(f.name) not in (None, "", "false", "off")
            if f.name in shown and ticked and _get(data, f.name) is _MISSING:
                _put(data, f.name, {})
            continue
        if f.widget == "checkbox":
            if f.name not in shown:
                continue
            value: Any = f.name in form and form[f.name] not in ("", "false", "off")
            if json.dumps(value) != f.default:
                _put(data, f.name, value)
            continue
        text = str(form.get(f.name, "")).strip()
        if text == "" and not f.required:
            continue
        value = _parse(text, f)
        if json.dumps(value) == f.default:
            continue
        _put(data, f.name, value)


def state_from_form(form: Mapping[str, Any], paths: list[str]) -> dict[str, Any]:
    """The form state (a config dict, ``model`` by name) of a posted form; ``paths``:
    the posted ``inputs.paths`` (chosen files and typed lines); ``form[CHECKBOXES]``:
    the names of the checkboxes the page showed (one name or a list)."""
    data: dict[str, Any] = {}
    listed = form.get(CHECKBOXES) or []
    shown = {listed} if isinstance(listed, str) else set(listed)
    model = str(form.get("model", "")).strip()
    checkpoint = str(form.get("model.checkpoint", "")).strip()
    if model:
        data["model"] = {"name": model, "checkpoint": checkpoint} if checkpoint else model
    _fill(data, run_fields({}, {}), form, shown)
    data.setdefault("inputs", {})["paths"] = paths
    targets = _targets(str(form.get("targets", "")))
    if targets is not None:
        data["targets"] = targets
    count = int(form["method_count"]) if str(form.get("method_count", "")).isdigit() else 0
    methods = []
    for i in range(count):
        name = str(form.get(f"methods.{i}.method", "")).strip()
        entry: dict[str, Any] = {"method": name}
        sub: dict[str, Any] = {"methods": [entry]}
        renamed = {k.replace(f"methods.{i}.", "methods.0.", 1): v for k, v in form.items()}
        ours = {n.replace(f"methods.{i}.", "methods.0.", 1) for n in shown}
        _fill(sub, method_slots({"methods": [entry]}, {})[0]["options"], renamed, ours)
        _fill(sub, params_fields(name, 0, {}, {}) if name else [], renamed, ours)
        methods.append(sub["methods"][0])
    data["methods"] = methods
    return data


def run_fields(state: Mapping[str, Any], errors: Mapping[str, str]) -> list[FormField]:
    """The generated fields of the run config (all but :data:`SPECIAL`)."""
    return schema_fields(RunConfig.model_json_schema(), "", state, errors, skip=SPECIAL)


def remove_method(state: dict[str, Any], index: int) -> None:
    """Drop method ``index`` of ``state`` (the Remove button)."""
    methods = state.get("methods") or []
    if 0 <= index < len(methods):
        methods.pop(index)


# -- state -> the config of `esegeta run`, validation, plan ---------------------------------


@dataclass
class Checked:
    """What validating a form state found: errors by field, the CLI config and,
    when it is valid, the job plan and the cost estimate."""

    errors: dict[str, str]
    config: dict[str, Any]
    plan: dict[str, Any] | None = None


def cli_config(
    state: Mapping[str, Any], models: Mapping[str, DeclaredModel], errors: dict[str, str]
) -> dict[str, Any]:
    """The config ``esegeta run`` reads for ``state``: the declared model's section
    written out (with the user's overrides) and its run-level defaults; an unknown
    model is reported in ``errors`` and left as it is."""
    data = json.loads(json.dumps(dict(state)))
    model = data.get("model")
    name = model.get("name") if isinstance(model, dict) else model
    declared = models.get(str(name)) if name is not None else None
    if declared is None:
        names = ", ".join(sorted(models)) or "none: restart the server with --models FILE"
        errors["model"] = f"choose one of the models this server allows ({names})."
        return data
    spec = dict(declared.spec)
    if isinstance(model, dict):
        spec.update({k: v for k, v in model.items() if k in USER_OVERRIDES})
    data["model"] = spec
    for key, value in declared.run_defaults.items():
        data.setdefault(key, value)
    return data


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def validate(
    state: Mapping[str, Any], models: Mapping[str, DeclaredModel], workspace: Path
) -> Checked:
    """Check ``state`` with the same models ``esegeta run`` uses (RunConfig, each
    method's Params, check_config with the plan checks), each error at its field;
    when valid, add the job plan and the cost estimate."""
    from esegeta_core.config_checks import check_config
    from esegeta_core.plugin.manager import get_registry

    errors: dict[str, str] = {}
    data = cli_config(state, models, errors)
    model = state.get("model")
    if isinstance(model, dict) and model.get("checkpoint"):
        try:
            data["model"]["checkpoint"] = str(
                confine(workspace, model["checkpoint"], what="checkpoint")
            )
        except EsegetaError as exc:
            errors["model.checkpoint"] = str(exc)
    for i, path in enumerate(_get(data, "inputs.paths") or []):
        try:
            confine(workspace, str(path), what="input")
        except EsegetaError as exc:
            errors.setdefault("inputs.paths", str(exc))
        del i
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            errors.setdefault(_loc(e["loc"]) or GENERAL, e["msg"])
        config = None
    for i, entry in enumerate(data.get("methods") or []):
        if not isinstance(entry, dict) or not entry.get("method"):
            errors.setdefault(f"methods.{i}.method", "choose a method.")
            continue
        try:
            cls = get_registry().get(str(entry["method"]))
        except (LookupError, EsegetaError) as exc:
            errors.setdefault(f"methods.{i}.method", str(exc))
            continue
        try:
            cls.Params.model_validate(entry.get("params") or {})
        except ValidationError as exc:
            for e in exc.errors():
                errors.setdefault(f"methods.{i}.params.{_loc(e['loc'])}", e["msg"])
    if config is None or errors:
        return Checked(errors, data)
    for problem in check_config(config, workspace, plan=True):
        key = problem.split(":", 1)[0].split(" ", 1)[0]
        errors.setdefault(key if key else GENERAL, problem)
    if errors:
        return Checked(errors, data)
    try:
        plan = job_plan(config, workspace)
    except EsegetaError as exc:
        errors[GENERAL] = str(exc)
        return Checked(errors, data)
    return Checked(errors, data, plan)


def job_plan(config: RunConfig, workspace: Path) -> dict[str, Any]:
    """The jobs ``esegeta run`` would run, counted per input, method and target, and
    the cost estimate per method: forward-pass equivalents per item (the method's
    :meth:`~esegeta_core.explainer.Explainer.passes` for the first input's shape)
    times its jobs (one item each). No seconds estimate: that needs a timed pass."""
    from esegeta_core.data_io import load_input
    from esegeta_core.plugin.manager import get_registry
    from esegeta_core.runs import method_label, plan_jobs

    jobs = plan_jobs(config, workspace)
    per: dict[str, dict[str, int]] = {"input": {}, "method": {}, "target": {}}
    labels = [method_label(config, m) for m in range(len(config.methods))]
    for job in jobs:
        for key, value in (
            (
                "input",
                Path(job.input_path).relative_to(workspace).as_posix()
                if Path(job.input_path).is_relative_to(workspace)
                else job.input_path,
            ),
            ("method", labels[job.method_index]),
            ("target", "prediction" if job.target is None else str(job.target)),
        ):
            per[key][value] = per[key].get(value, 0) + 1
    shape: tuple[int, ...] | None = None
    good = [job for job in jobs if not job.error]
    if good:
        try:
            tensor = load_input(Path(good[0].input_path), config.inputs).tensor
            shape = (1, *tensor.shape[1:])
        except (EsegetaError, OSError):
            shape = None
    costs = []
    for m, spec in enumerate(config.methods):
        cls = get_registry().get(spec.method)
        passes = None
        if shape is not None:
            try:
                passes = cls().passes(cls.Params(**spec.params), shape)
            except Exception:  # noqa: BLE001 - an estimate only; the run checks for real
                passes = None
        count = per["method"].get(labels[m], 0)
        costs.append(
            {
                "method": labels[m],
                "cost": cls.cost,
                "jobs": count,
                "passes_per_item": passes,
                "total_passes": None if passes is None else passes * count,
            }
        )
    return {"total": len(jobs), "per": per, "costs": costs, "shape": shape}


# -- routes ----------------------------------------------------------------------------------

router = APIRouter()


def _page(
    request: Request,
    state: Mapping[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    plan: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
    status_code: int = 200,
) -> Response:
    errors = dict(errors or {})
    workspace: Path = request.app.state.workspace
    models: dict[str, DeclaredModel] = request.app.state.models
    files = workspace_inputs(workspace)
    listed = _get(state, "inputs.paths")
    paths = [str(p) for p in listed] if isinstance(listed, list) else []
    model = state.get("model")
    name = model.get("name") if isinstance(model, dict) else model
    declared = models.get(str(name)) if name else None
    known = {f.name: f.widget for f in run_fields({}, {})}
    general = [f"{k}: {v}" for k, v in errors.items() if not _shown(k, known)]
    context = {
        "csrf": request.state.csrf,
        "models": list(models.values()),
        "model": model.get("name") if isinstance(model, dict) else model,
        "checkpoint": model.get("checkpoint", "") if isinstance(model, dict) else "",
        "model_ranks": {m.name: m.spec.get("kwargs", {}).get("rank", "") for m in models.values()},
        "fields": run_fields(state, errors),
        "files": files,
        "chosen": [p for p in paths if p in files],
        "typed": "\n".join(p for p in paths if p not in files),
        "targets": _show(state.get("targets")),
        "catalogue": method_choices(),
        # methods that do not fit the chosen model, with why (greyed, reason as title)
        "unfit": request.app.state.fits.unfit(declared) if declared is not None else {},
        "slots": method_slots(state, errors),
        "errors": errors,
        "general": general,
        "plan": plan,
        "warnings": warnings or [],
    }
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "new_run.html", context, status_code=status_code
    )


def _shown(key: str, run_field_names: Mapping[str, str]) -> bool:
    """Whether the error of ``key`` is shown at a field of the page (``run_field_names``:
    the run fields' widgets by name)."""
    if key in run_field_names or key in ("model", "model.checkpoint", "inputs.paths", "targets"):
        return True
    if any(key.startswith(f"{n}.") for n, w in run_field_names.items() if w != "section"):
        return True  # deeper in a field's value (patches.size.0), shown at that field
    parts = key.split(".")
    return len(parts) >= 3 and parts[0] == "methods" and parts[1].isdigit()


@router.get("/runs/new")
async def new_run_page(request: Request) -> Response:
    """The new-run form: one method slot, every run field at its default."""
    models = request.app.state.models
    first = next(iter(models), None)
    state: dict[str, Any] = {"methods": [{}]}
    if first is not None:
        state["model"] = first
    return _page(request, state)


@router.get("/runs/new/fits")
async def fits_of_model(request: Request, model: str) -> JSONResponse:
    """The methods that do not fit a declared model, with the reason (see
    :mod:`esegeta_web.fits` for what is checked): ``{"model": ..., "unfit": {...}}``."""
    declared = request.app.state.models.get(model)
    if declared is None:
        names = ", ".join(sorted(request.app.state.models)) or "none"
        raise ModelNotAllowedError(f"model {model!r} is not declared (declared: {names}).")
    unfit = await run_in_threadpool(request.app.state.fits.unfit, declared)
    return JSONResponse({"model": model, "unfit": unfit})


@router.get("/runs/new/params")
async def params_fragment(request: Request, index: int = 0) -> Response:
    """The parameters of slot ``index`` for the method in ``methods.INDEX.method`` (htmx
    swaps them in when a method is chosen)."""
    method = request.query_params.get(f"methods.{index}.method", "")
    state = {"methods": [{"method": method}] * (index + 1)}
    slot = method_slots(state, {})[index]
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "new_run_params.html", {"slot": slot}
    )


@router.post("/runs/new")
async def new_run_action(request: Request) -> Response:
    """The form's buttons: ``action`` is validate, run, yaml, add or remove:N."""
    form = await request.form()
    values: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    values[CHECKBOXES] = [v for v in form.getlist(CHECKBOXES) if isinstance(v, str)]
    paths = [p for p in form.getlist("inputs.paths") if isinstance(p, str) and p.strip()]
    typed = str(form.get("inputs.paths.typed", ""))
    paths += [line.strip() for line in typed.splitlines() if line.strip()]
    state = state_from_form(values, paths)
    action = str(form.get("action", "validate"))
    if action == "add":
        state["methods"].append({})
        return _page(request, state)
    if action.startswith("remove:") and action[7:].isdigit():
        remove_method(state, int(action[7:]))
        return _page(request, state)
    workspace: Path = request.app.state.workspace
    models: dict[str, DeclaredModel] = request.app.state.models
    if action == "yaml":
        data = cli_config(state, models, {})
        name = re.sub(r"[^A-Za-z0-9._-]", "_", str(data.get("name") or "run")) or "run"
        return Response(
            yaml.safe_dump(data, sort_keys=False),
            media_type="application/x-yaml",
            headers={"Content-Disposition": f'attachment; filename="{name}.yaml"'},
        )
    checked = await run_in_threadpool(validate, state, models, workspace)
    if checked.errors:
        return _page(request, state, errors=checked.errors, status_code=422)
    if action == "run":
        data = sanitise_config(dict(state), models, workspace)
        run_dir = await run_in_threadpool(request.app.state.jobs.launch, data)
        return RedirectResponse(f"/runs/{run_dir.relative_to(workspace).as_posix()}", 303)
    return _page(request, state, plan=checked.plan)


@router.post("/runs/new/import")
async def import_legacy(request: Request, file: UploadFile) -> Response:
    """Convert an uploaded TorchEsegeta JSON config and fill the form with it (the
    converter's warnings shown above the form)."""
    from esegeta_core.legacy_config import convert_legacy

    raw = await file.read()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidParamsError(
            f"Import: {file.filename!r} is not a JSON file ({exc}); choose a TorchEsegeta "
            "JSON config."
        ) from exc
    if not isinstance(data, dict):
        raise InvalidParamsError(
            f"Import: {file.filename!r} is not a TorchEsegeta config (a JSON object)."
        )
    state, warnings = convert_legacy(data)
    models: dict[str, DeclaredModel] = request.app.state.models
    warnings.append(
        "Choose the model among those this server allows"
        + (f" ({', '.join(sorted(models))})" if models else "")
        + " and the inputs among the workspace files."
    )
    state.pop("model", None)
    return _page(request, state, warnings=warnings)

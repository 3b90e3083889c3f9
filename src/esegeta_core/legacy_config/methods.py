"""Converting the original's method entries into esegeta method specs.

An entry names a library and a method (looked up in :data:`~.table.METHODS`), its
keyword arguments and display switches; each becomes one ``methods`` item of the run
config, and whatever has no counterpart becomes a warning.
"""

from __future__ import annotations

import re
from typing import Any

from esegeta_core.legacy_config.table import (
    LIBRARY_RENAMES,
    METHODS,
    NO_COUNTERPART,
    NOISE_TUNNEL,
    Target,
)
from esegeta_core.legacy_config.values import REPLACE_ME, Warn, norm, truthy

__all__ = ["convert_methods", "method_entries"]

_ENTRY_KEYS = {
    "method_name",
    "library",
    "device_id",
    "use",
    "patch_required",
    "visualize_method",
    "sign",
    "show_colorbar",
    "title",
    "uncertainity_metrics",
    "uncertainity_cascading",
    "keywords",
}
_SIGNS = {
    "all": "all",
    "positive": "positive",
    "absolute": "absolute",
    "absolutevalue": "absolute",
    "abs": "absolute",
}
_LAYER_PARAMS = frozenset({"layer", "saliency_layer", "contrast_layer", "classifier_layer"})


def method_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method entry; LIME ``explain_methods`` become lime entries (keys = keywords)."""
    entries = [dict(e) for e in data.get("methods") or [] if isinstance(e, dict)]
    for raw in data.get("explain_methods") or []:
        if not isinstance(raw, dict):
            continue
        entry = {k: v for k, v in raw.items() if k in _ENTRY_KEYS}
        keywords = dict(entry.get("keywords") or {})
        keywords.update({k: v for k, v in raw.items() if k not in _ENTRY_KEYS})
        entry.update(keywords=keywords, library="lime")
        entry.setdefault("method_name", "lime")
        entries.append(entry)
    return entries


def convert_methods(entries: list[dict[str, Any]], rank: int, warn: Warn) -> list[dict[str, Any]]:
    """The method specs of the entries that carry over (a warning when none does)."""
    methods = [
        spec
        for i, entry in enumerate(entries)
        if (spec := _convert_method(entry, i, rank, warn)) is not None
    ]
    if not methods:
        warn("No method carried over: add at least one to `methods` before running.")
    return methods


def _library(name: str) -> str | None:
    """The table's library for the original's library name ("pytorch-cnn-vis": cnnvis)."""
    key = norm(name)
    if key.startswith(("cnn", "pytorchcnn")):
        return "cnnvis"
    for lib in ("captum", "torchray", "lucent", "lime"):
        if key.startswith(lib):
            return lib
    return None


def _lookup(library: str, method_name: str) -> Target | None:
    """The table entry answering to an original method name, if any."""
    key = norm(method_name)
    for target in METHODS[library]:
        suffix = target.name.split(".", 1)[1]
        if key in (norm(suffix), norm(target.name), *target.aliases):
            return target
    return None


def _target(
    entry: dict[str, Any], original: str, where: str, warn: Warn
) -> tuple[str, Target] | None:
    """The library and table entry of a method entry; None (with a warning) when the
    entry is disabled or names an unknown library or method."""
    if not truthy(entry.get("use", 1)):
        warn(f"{where}: dropped because `use` is 0 (disabled in the original).")
        return None
    library = _library(str(entry.get("library", "")))
    if library is None:
        warn(f"{where}: unknown library {entry.get('library')!r}; method dropped.")
        return None
    target = _lookup(library, original)
    if target is None:
        known = ", ".join(dict.fromkeys(t.name for t in METHODS[library]))
        warn(f"{where}: unknown method {original!r}; dropped (esegeta {library}: {known}).")
        return None
    return library, target


def _convert_method(
    entry: dict[str, Any], index: int, rank: int, warn: Warn
) -> dict[str, Any] | None:
    """One entry as a method spec, or None when it does not carry over."""
    original = str(entry.get("method_name", ""))
    where = f"method {index} ({entry.get('library', '?')}/{original})"
    found = _target(entry, original, where, warn)
    if found is None:
        return None
    library, target = found
    spec: dict[str, Any] = {"method": target.name}
    keywords = dict(entry.get("keywords") or {})
    params = _convert_params(target, library, keywords, rank, where, warn)
    if params:
        spec["params"] = params
    if entry.get("title"):
        spec["title"] = str(entry["title"])
    if "patch_required" in entry:
        spec["patches"] = truthy(entry["patch_required"])
    spec["sign"] = _sign(entry, where, warn)
    _warn_not_carried(entry, where, warn)
    return spec


def _sign(entry: dict[str, Any], where: str, warn: Warn) -> str:
    """The entry's sign in esegeta's words ('all' with a warning when unknown)."""
    sign = _SIGNS.get(norm(entry.get("sign", "all")))
    if sign is None:
        warn(f"{where}: sign {entry.get('sign')!r} has no counterpart; showing 'all'.")
        return "all"
    return sign


def _warn_not_carried(entry: dict[str, Any], where: str, warn: Warn) -> None:
    """Warn about the entry's display and evaluation switches esegeta's run lacks."""
    visual = entry.get("visualize_method")
    if visual and norm(visual) != "heatmap":
        warn(
            f"{where}: visualize_method {visual!r} not carried over (esegeta figures show "
            "the input next to the map, and an overlay for 3D)."
        )
    if truthy(entry.get("uncertainity_metrics", False)):
        warn(
            f"{where}: uncertainity_metrics not carried over: metrics (infidelity, "
            "sensitivity) belong to evaluation, not to `esegeta run`."
        )
    if truthy(entry.get("uncertainity_cascading", 0)):
        warn(
            f"{where}: uncertainity_cascading={entry['uncertainity_cascading']!r} not carried "
            "over: cascading randomisation belongs to evaluation, not to `esegeta run`."
        )
    for key in sorted(set(entry) - _ENTRY_KEYS):
        warn(f"{where}: unknown entry key {key!r} dropped.")


def _convert_params(
    target: Target,
    library: str,
    keywords: dict[str, Any],
    rank: int,
    where: str,
    warn: Warn,
) -> dict[str, Any]:
    """The entry's keywords as the target's parameters: renamed, values converted,
    unknown ones dropped with a warning, required ones filled with placeholders."""
    params = dict(target.preset)
    renames = {**LIBRARY_RENAMES.get(library, {}), **target.renames}
    for key, value in keywords.items():
        name = renames.get(key, key)
        if name in target.params:
            params[name] = _convert_value(name, value, rank, where, warn)
        else:
            reason = NO_COUNTERPART.get(key, f"{target.name} has no such parameter")
            warn(f"{where}: keyword {key!r}={value!r} dropped ({reason}).")
    _drop_orphan_noise(target, params, where, warn)
    if "objective" in params and library == "lucent":
        warn(
            f"{where}: Lucent objective {params['objective']!r} kept as is; esegeta objectives "
            "name layers by module path ('features.conv2:3'), not Lucent's underscore names."
        )
    _fill_required(target, params, where, warn)
    return params


def _fill_required(target: Target, params: dict[str, Any], where: str, warn: Warn) -> None:
    """A placeholder (and a warning) for each required parameter the entry lacks."""
    for name in target.required:
        if name not in params:
            params[name] = REPLACE_ME
            warn(f"{where}: {target.name} needs `{name}` (a module path): set it.")


def _convert_value(name: str, value: Any, rank: int, where: str, warn: Warn) -> Any:
    """An original keyword value in esegeta's form (module paths, spatial shapes, ...)."""
    if name in _LAYER_PARAMS:
        return _layer_path(value, where, warn)
    if name in ("window", "strides"):
        return _spatial(value, rank)
    if name == "steps" and isinstance(value, (list, tuple)):
        return max(value)  # Lucent's thresholds: the last one is the step count
    if name == "areas" and not isinstance(value, (list, tuple)):
        return [value]
    return value


def _drop_orphan_noise(target: Target, params: dict[str, Any], where: str, warn: Warn) -> None:
    """Drop noise-tunnel settings given without ``nt_type``: with no tunnel they mean nothing."""
    orphans = sorted(k for k in NOISE_TUNNEL - {"noise_tunnel"} if k in params)
    if "noise_tunnel" in target.params and "noise_tunnel" not in params and orphans:
        for key in orphans:
            warn(f"{where}: {key}={params.pop(key)!r} dropped (no nt_type: no noise tunnel).")


def _layer_path(value: Any, where: str, warn: Warn) -> Any:
    """The original's layer reference -> an esegeta module path ('features.3')."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return value
    if isinstance(value, int):
        path = f"features.{value}"
        warn(
            f"{where}: layer index {value} became the module path {path!r} (the original "
            "indexed model.features); check it against your model."
        )
        return path
    path = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", value.strip())
    path = re.sub(r"^(self\.)?model\.", "", path)
    if path != value:
        warn(f"{where}: layer {value!r} became the module path {path!r}; check it.")
    return path


def _spatial(value: Any, rank: int) -> Any:
    """Captum's window/stride shapes include the channel dimension; esegeta's do not."""
    if isinstance(value, (list, tuple)) and len(value) == rank + 1:
        return list(value[1:])
    return list(value) if isinstance(value, (list, tuple)) else value

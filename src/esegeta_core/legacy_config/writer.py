"""Reading a TorchEsegeta JSON file and writing the converted config as YAML."""

from __future__ import annotations

import json
import os
from pathlib import Path

from esegeta_core.legacy_config.convert import convert_legacy

__all__ = ["write_converted"]


def write_converted(
    src: Path, dst: Path | None = None, *, force: bool = False
) -> tuple[Path, list[str]]:
    """Read a TorchEsegeta JSON config, convert it and write YAML (default: beside it).

    Returns the written path and the warnings; the YAML starts with the warnings as
    comments so they travel with the file. An existing ``dst`` is replaced only with
    ``force``, the source never (not even with ``force``); the YAML is written to a
    temporary file in the same folder and moved into place, so a failure leaves no
    half-written file.
    """
    import yaml

    from esegeta_core.config import read_config_file
    from esegeta_core.errors import InvalidParamsError
    from esegeta_core.files import atomic_path

    src = Path(src)
    text = read_config_file(src, "TorchEsegeta config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParamsError(
            f"TorchEsegeta config {src} is not valid JSON at line {exc.lineno}, column "
            f"{exc.colno}: {exc.msg}."
        ) from exc
    except RecursionError as exc:
        raise InvalidParamsError(f"TorchEsegeta config {src} is nested too deeply.") from exc
    if not isinstance(data, dict):
        raise InvalidParamsError(f"{src}: a TorchEsegeta config is a JSON object at the top level.")
    dst = src.with_suffix(".yaml") if dst is None else Path(dst)
    _check_destination(src, dst, force)
    converted, warnings = convert_legacy(data)
    header = [f"# Converted from {src.name} (TorchEsegeta) by esegeta."]
    header += [f"# WARNING: {w}" for w in warnings]
    body = yaml.safe_dump(converted, sort_keys=False)
    try:
        with atomic_path(dst) as tmp:
            tmp.write_text("\n".join(header) + "\n" + body)
    except OSError as exc:
        raise InvalidParamsError(
            f"Cannot write the converted config {dst}: {exc.strerror or exc}; choose another "
            "path with -o."
        ) from exc
    return dst, warnings


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    """Refuse to write over ``src`` (ever) or over an existing ``dst`` (without force)."""
    from esegeta_core.errors import InvalidParamsError

    if _same_file(src, dst):
        raise InvalidParamsError(
            f"convert-config would write over its own source {src}; choose another output "
            "file with -o (e.g. -o converted.yaml)."
        )
    if dst.is_dir():
        raise InvalidParamsError(f"{dst} is a folder; give a file name with -o (e.g. -o run.yaml).")
    if dst.exists() and not force:
        raise InvalidParamsError(
            f"{dst} already exists; pass --force to replace it (force=True from Python), or "
            "choose another file with -o."
        )


def _same_file(src: Path, dst: Path) -> bool:
    """Whether ``dst`` is ``src``: the same resolved path, or the same file (a link)."""
    if src.resolve() == dst.resolve():
        return True
    if not dst.exists():
        return False
    try:
        return os.path.samefile(src, dst)
    except OSError:
        return False

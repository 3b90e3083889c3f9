"""The map viewers' data for the server: pure functions, no web framework.

The server renders a ``<div class="esegeta-viewer" data-kind=... data-input=URL
data-map=URL>`` per job (:func:`viewer_div`, or the ``viewer.html`` template) and serves
the two URLs with :func:`input_payload` and :func:`map_payload`; the page loads
``esegeta-viewer.js`` (and ``niivue.umd.js`` for 3D), served from the core's package
data with :func:`static_asset` (one copy of NiiVue in the repository). The payload
formats and the 3D down-sampling are documented in :mod:`esegeta_core.report.payloads`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from esegeta_core.errors import InvalidInputError
from esegeta_core.report import payloads

__all__ = [
    "MAX_VOXELS_PER_AXIS",
    "STATIC_ASSETS",
    "input_payload",
    "map_payload",
    "static_asset",
    "viewer_div",
    "viewer_spec",
]

MAX_VOXELS_PER_AXIS = payloads.MAX_VOXELS_PER_AXIS

STATIC_ASSETS = {
    "esegeta-viewer.js": "text/javascript; charset=utf-8",
    "niivue.umd.js": "text/javascript; charset=utf-8",
}
"""Files of ``esegeta_core/report/assets`` the server may serve, with their media types."""


def viewer_spec(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """What the page needs to know of a job's map: kind, names, formats, 3D sampling."""
    return payloads.viewer_spec(Path(run_dir), record)


def input_payload(
    run_dir: Path, record: dict[str, Any], *, root: Path | None = None
) -> tuple[bytes, str]:
    """The job's input (PNG for 2D, uint8 NIfTI for 3D) and its media type; the input
    file must lie inside ``root`` (pass the workspace; default the run folder's parent)."""
    return payloads.input_payload(Path(run_dir), record, root=root)


def map_payload(run_dir: Path, record: dict[str, Any]) -> tuple[bytes, str]:
    """The job's map (EGM1 float16 for 2D, uint8 NIfTI for 3D) and its media type."""
    return payloads.map_payload(Path(run_dir), record)


def static_asset(name: str) -> tuple[bytes, str]:
    """The bytes and media type of a viewer asset (``esegeta-viewer.js``,
    ``niivue.umd.js``); any other name is refused."""
    if name not in STATIC_ASSETS:
        raise InvalidInputError(
            f"{name!r} is not a viewer asset; choose one of {sorted(STATIC_ASSETS)}."
        )
    from esegeta_core.report.assets import asset_bytes

    return asset_bytes(name), STATIC_ASSETS[name]


def viewer_div(spec: Mapping[str, Any], input_url: str, map_url: str) -> str:
    """The HTML of one viewer (escaped): the element esegeta-viewer.js upgrades, with the
    3D sampling stated under it."""
    kind = "3d" if spec.get("kind") == "3d" else "2d"
    label = f"{spec.get('title') or spec.get('method') or 'map'}, target {spec.get('target')}"
    e = html.escape
    note = ""
    if kind == "3d" and isinstance(spec.get("sampling"), Mapping):
        note = f'<p class="esegeta-sampling">{e(str(spec["sampling"].get("text", "")))}</p>'
    return (
        f'<div class="esegeta-viewer" data-kind="{kind}" data-input="{e(input_url)}" '
        f'data-map="{e(map_url)}" data-label="{e(label)}"></div>{note}'
    )

"""The report's input sections: per input, its maps as cards grouped by target.

A card shows one map's figure (a zoomable PNG), its interactive viewer when it has one,
or the failure in its place, with the method's parameters and links to its leaderboard
row. Viewer data is stored once per distinct payload (:class:`Payloads`), so maps that
share an input do not repeat it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from esegeta_core.report.anchors import UniqueIds
from esegeta_core.report.markup import escape, json_block, seconds_text
from esegeta_core.report.model import InputSection, MapEntry, Viewer

__all__ = ["Payloads", "input_section", "zoomable_image"]

_STATUS_TEXT = {"ok": "ok", "error": "error", "crashed": "crashed", "timeout": "timed out"}


class Payloads:
    """Viewer payloads stored once each in the page, as base64 in non-executed
    ``<script type="application/octet-stream">`` elements the viewer reads by id;
    ``blocks`` are those elements, in the order they were first referenced."""

    def __init__(self, ids: UniqueIds) -> None:
        self.ids = ids
        self.by_digest: dict[bytes, str] = {}
        self.blocks: list[str] = []

    def ref(self, data: bytes) -> str:
        """The id of the element holding ``data`` (added on first use)."""
        digest = hashlib.sha256(bytes(data)).digest()
        if digest not in self.by_digest:
            pid = self.ids.take(f"payload-{len(self.by_digest) + 1}")
            self.by_digest[digest] = pid
            text = base64.b64encode(bytes(data)).decode("ascii")
            self.blocks.append(
                f'<script type="application/octet-stream" id="{pid}">{text}</script>'
            )
        return self.by_digest[digest]


def zoomable_image(png: bytes, alt: str) -> str:
    """A PNG inlined as a ``data:`` URI, in a button that opens it enlarged."""
    uri = "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")
    return (
        f'<button type="button" class="zoom" aria-label="{escape("Enlarge: " + alt)}">'
        f'<img src="{uri}" alt="{escape(alt)}"></button>'
    )


def _status_badge(status: str) -> str:
    kind = status if status in _STATUS_TEXT else "error"
    return f'<span class="badge badge-{kind}">{escape(_STATUS_TEXT.get(status, status))}</span>'


def _viewer(viewer: Viewer, alt: str, payloads: Payloads) -> str:
    """The element esegeta-viewer.js upgrades; a 3D one starts on request (each WebGL
    viewer costs a browser context, of which a page gets few)."""
    start = ' data-autostart="false"' if viewer.kind == "3d" else ""
    out = (
        f'<div class="esegeta-viewer" data-kind="{viewer.kind}" '
        f'data-input="#{payloads.ref(viewer.input)}" data-map="#{payloads.ref(viewer.map)}" '
        f'data-label="{escape(alt)}"{start}></div>'
    )
    if viewer.sampling:
        out += f'<p class="sampling">{escape(viewer.sampling)}</p>'
    return out


def _card_meta(entry: MapEntry) -> str:
    """The card's line of facts: model, target, method name, time, details."""
    meta = []
    if entry.model:
        meta.append(f"model {escape(entry.model)}")
    if entry.target:
        meta.append(escape(entry.target))
    if entry.title and entry.title != entry.method:
        meta.append(f"<code>{escape(entry.method)}</code>")
    if entry.seconds is not None and seconds_text(entry.seconds):
        meta.append(
            f'<span title="the method\'s time">{escape(seconds_text(entry.seconds))}</span>'
        )
    meta += [f"{escape(k)} {escape(v)}" for k, v in entry.details.items()]
    if not meta:
        return ""
    return f'<div class="meta">{"".join(f"<span>{m}</span>" for m in meta)}</div>'


def _card_content(entry: MapEntry, alt: str, payloads: Payloads) -> str:
    """The figure and the viewer, or the error of a failed job."""
    parts = []
    if entry.png is not None:
        parts.append(zoomable_image(entry.png, alt))
    if entry.viewer is not None and entry.ok:
        parts.append(_viewer(entry.viewer, alt, payloads))
    if not entry.ok:
        lines = entry.error.strip().splitlines() or ["(no error message)"]
        parts.append(f'<p class="error-msg">{escape(lines[0])}</p>')
        if len(lines) > 1:
            parts.append(
                "<details><summary>full message</summary>"
                f"<pre>{escape(entry.error)}</pre></details>"
            )
    elif entry.png is None:
        parts.append('<p class="empty">no figure</p>')
    return "".join(parts)


def _card_links(entry_id: str, back: str | None, lb_id: str) -> str:
    """The permalink, and the link to the map's leaderboard row (or the leaderboard)."""
    links = [f'<a href="#{escape(entry_id)}" title="a link to this map">permalink</a>']
    if back is not None:
        links.append(f'<a href="#{escape(back)}">↑ leaderboard row</a>')
    elif lb_id:
        links.append(f'<a href="#{escape(lb_id)}">↑ leaderboard</a>')
    return f'<div class="links">{"".join(links)}</div>'


def _card(
    entry: MapEntry,
    section: InputSection,
    entry_id: str,
    back: str | None,
    lb_id: str,
    payloads: Payloads,
) -> str:
    """One map's card (``back``: its leaderboard row's id; ``lb_id``: the leaderboard's)."""
    alt = f"{entry.label} on {section.name}" + (f", {entry.target}" if entry.target else "")
    params = (
        f"<details><summary>parameters</summary><pre>{json_block(entry.params)}</pre></details>"
        if entry.params
        else ""
    )
    return (
        f'<article class="card{"" if entry.ok else " failed"}" id="{escape(entry_id)}">'
        '<div class="head">'
        f'<span class="name">{escape(entry.label)}</span>{_status_badge(entry.status)}</div>'
        f"{_card_meta(entry)}{_card_content(entry, alt, payloads)}{params}"
        f"{_card_links(entry_id, back, lb_id)}</article>"
    )


def _overview(section: InputSection) -> str:
    """The input's overview figure with its caption, or nothing."""
    if section.overview_png is None:
        return ""
    caption = section.overview_caption or "overview"
    picture = zoomable_image(section.overview_png, f"{section.name}: {caption}")
    return f'<figure class="overview">{picture}<figcaption>{escape(caption)}</figcaption></figure>'


def _by_target(section: InputSection) -> dict[str, list[int]]:
    """The indices of the section's maps per target, targets in first-seen order; one
    empty group when there are no maps but an input picture to show."""
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(section.maps):
        groups.setdefault(entry.target, []).append(i)
    if not groups and section.input_png is not None:
        groups[""] = []
    return groups


def input_section(
    section: InputSection,
    section_id: str,
    entry_ids: Sequence[str],
    backs: Sequence[str | None],
    lb_id: str,
    payloads: Payloads,
) -> str:
    """One input's ``<section>``: its overview figure, then per target the input and the
    maps' cards. ``entry_ids`` and ``backs`` are per map, as in ``section.maps``."""
    n_failed = sum(1 for m in section.maps if not m.ok)
    count = f"{len(section.maps)} map{'s' if len(section.maps) != 1 else ''}"
    if n_failed:
        count += f", {n_failed} failed"
    out = [
        f'<section class="block input-section" id="{escape(section_id)}">',
        f'<h2>{escape(section.name)} <span class="count">{escape(count)}</span></h2>',
        _overview(section),
    ]
    input_card = (
        '<figure class="card input-card"><div class="head"><span class="name">input</span>'
        f"</div>{zoomable_image(section.input_png, 'input ' + section.name)}</figure>"
        if section.input_png is not None
        else ""
    )
    for target, indices in _by_target(section).items():
        if target:
            out.append(f"<h3>{escape(target)}</h3>")
        out.append(f'<div class="grid">{input_card}')
        for i in indices:
            out.append(_card(section.maps[i], section, entry_ids[i], backs[i], lb_id, payloads))
        out.append("</div>")
    if not section.maps:
        out.append('<p class="empty">No maps for this input.</p>')
    out.append("</section>")
    return "".join(out)

"""PNG figures of attribution maps: one job (input + map) or a grid of methods x targets.

Figures are drawn on a private :class:`matplotlib.figure.Figure` rendered by the Agg
canvas, never through pyplot's global state, so they are safe in threads and worker
processes and need no display. Files are written atomically (a temporary file in the
same folder, then ``os.replace``): a failed render never leaves a half-written PNG and
never destroys the previous one.

Signs follow ``MethodSpec.sign``: ``"all"`` shows the signed map with a diverging
colormap centred at 0, ``"positive"`` the positive part and ``"absolute"`` the magnitude,
both with a sequential colormap starting at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from esegeta_core.errors import InvalidInputError

Sign = Literal["all", "positive", "absolute"]
SIGNS: tuple[str, ...] = ("all", "positive", "absolute")
DIVERGING_CMAP = "RdBu_r"
SEQUENTIAL_CMAP = "inferno"
OVERLAY_ALPHA = 0.5
_DPI = 100
_CELL = 3.2  # inches per panel

__all__ = [
    "DIVERGING_CMAP",
    "SEQUENTIAL_CMAP",
    "grid_figure",
    "job_figure",
    "map_style",
    "orthogonal_slices",
    "peak_index",
    "projection",
    "signed_values",
]


# -- array preparation -------------------------------------------------------------


def _check_sign(sign: str) -> None:
    if sign not in SIGNS:
        raise InvalidInputError(f"sign must be one of {SIGNS}, got {sign!r}.")


def _as_image(image: torch.Tensor) -> np.ndarray:
    """(C, *spatial) tensor -> float array for display: spatial (grey) or spatial + (3,)."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise InvalidInputError(
            "image must be a (C, H, W) or (C, D, H, W) tensor, got "
            f"{getattr(image, 'shape', type(image).__name__)}."
        )
    arr = np.nan_to_num(image.detach().float().cpu().numpy())
    arr = np.moveaxis(arr, 0, -1) if arr.shape[0] == 3 else arr[0]  # RGB or first channel
    low, high = float(arr.min()), float(arr.max())
    return (arr - low) / (high - low) if high > low else np.zeros_like(arr)


def _as_map(saliency: torch.Tensor, spatial: Sequence[int]) -> np.ndarray:
    """(1, *spatial) or (*spatial) tensor -> float array of the image's spatial shape."""
    if not isinstance(saliency, torch.Tensor):
        raise InvalidInputError(f"saliency must be a tensor, got {type(saliency).__name__}.")
    arr = saliency.detach().float().cpu()
    if arr.ndim == len(spatial) + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != tuple(spatial):
        raise InvalidInputError(
            f"saliency of shape {tuple(saliency.shape)} does not match the input's spatial "
            f"shape {tuple(spatial)} (expected (1, *spatial) or (*spatial))."
        )
    return np.nan_to_num(arr.numpy())


def signed_values(values: np.ndarray, sign: str) -> np.ndarray:
    """The values a figure shows: signed (``all``), positive part or magnitude."""
    _check_sign(sign)
    if sign == "positive":
        return np.clip(values, 0.0, None)
    if sign == "absolute":
        return np.abs(values)
    return values


def map_style(values: np.ndarray, sign: str) -> tuple[str, float, float]:
    """Colormap and limits: diverging and symmetric about 0 for ``all``, else 0..max."""
    _check_sign(sign)
    peak = float(np.abs(values).max()) if values.size else 0.0
    peak = peak if peak > 0 else 1.0
    if sign == "all":
        return DIVERGING_CMAP, -peak, peak
    return SEQUENTIAL_CMAP, 0.0, peak


def peak_index(values: np.ndarray, sign: str = "all") -> tuple[int, ...]:
    """Index of the map's maximum: of ``|map|`` for signed maps, of the map otherwise."""
    score = np.abs(values) if sign == "all" else values
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), values.shape))


def projection(values: np.ndarray, axis: int, sign: str) -> np.ndarray:
    """Maximum-intensity projection along ``axis``.

    For signed maps (``all``) the projection keeps, per ray, the value of largest
    magnitude with its sign (a signed MIP), so the diverging colormap still applies;
    for ``positive``/``absolute`` maps (non-negative) it is the plain maximum.
    """
    if sign != "all":
        return values.max(axis=axis)
    pick = np.expand_dims(np.abs(values).argmax(axis=axis), axis)
    return np.take_along_axis(values, pick, axis=axis).squeeze(axis)


def orthogonal_slices(volume: np.ndarray, index: Sequence[int]) -> list[tuple[str, np.ndarray]]:
    """Axial (z), coronal (y) and sagittal (x) slices of a (D, H, W[, 3]) volume."""
    z, y, x = index[:3]
    return [
        (f"axial z={z}", volume[z]),
        (f"coronal y={y}", volume[:, y]),
        (f"sagittal x={x}", volume[:, :, x]),
    ]


# -- drawing -----------------------------------------------------------------------


def _show_image(ax: Axes, image: np.ndarray, *, lower: bool = False) -> None:
    cmap = None if image.ndim == 3 else "gray"
    ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, origin="lower" if lower else "upper")
    ax.set_xticks([])
    ax.set_yticks([])


def _show_map(
    fig: Figure,
    ax: Axes,
    values: np.ndarray,
    style: tuple[str, float, float],
    *,
    colorbar: bool,
    alpha: float = 1.0,
    lower: bool = False,
) -> None:
    cmap, vmin, vmax = style
    mappable = ax.imshow(
        values, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, origin="lower" if lower else "upper"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04)


def _wrapped(title: str, width: int = 24) -> str:
    """A panel title broken after dots or spaces so neighbouring titles do not collide."""
    import textwrap

    return "\n".join(textwrap.wrap(title.replace(".", ". "), width)).replace(". ", ".")


def _new_figure(rows: int, cols: int) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(_CELL * cols, _CELL * rows), dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _save_atomic(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to a temporary PNG beside ``path``, then move it into place, with
    the permissions of every other file of the run (a plain ``open()``'s)."""
    from esegeta_core.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        fig.savefig(handle, format="png", dpi=_DPI)
    return path


# -- figures -----------------------------------------------------------------------


def job_figure(
    image: torch.Tensor,
    saliency: torch.Tensor,
    path: Path,
    *,
    title: str,
    sign: Sign = "all",
    colorbar: bool = True,
) -> Path:
    """Write one job's figure as a PNG and return its path.

    2D (``image`` (C, H, W)): the input (grey for one channel, RGB for three, min-max
    scaled; the first channel otherwise) next to the map. 3D (``image`` (C, D, H, W)):
    top row, axial/coronal/sagittal slices through the map's maximum (of ``|map|`` for
    signed maps) with the map overlaid on the input; bottom row, maximum-intensity
    projections of the map along the three axes (see :func:`projection`).
    """
    _check_sign(sign)
    shown = _as_image(image)
    spatial = tuple(image.shape[1:])
    values = signed_values(_as_map(saliency, spatial), sign)
    style = map_style(values, sign)
    if len(spatial) == 2:
        fig, axes = _new_figure(1, 2)
        _show_image(axes[0, 0], shown)
        axes[0, 0].set_title("input")
        _show_map(fig, axes[0, 1], values, style, colorbar=colorbar)
        axes[0, 1].set_title(f"map ({sign})")
    else:
        fig, axes = _new_figure(2, 3)
        peak = peak_index(values, sign)
        slices = zip(orthogonal_slices(shown, peak), orthogonal_slices(values, peak))
        for col, ((label, img), (_, vals)) in enumerate(slices):
            lower = col > 0  # coronal / sagittal: depth upwards
            _show_image(axes[0, col], img, lower=lower)
            _show_map(
                fig, axes[0, col], vals, style, colorbar=colorbar, alpha=OVERLAY_ALPHA, lower=lower
            )
            axes[0, col].set_title(label)
        for col, name in enumerate(("axial", "coronal", "sagittal")):
            _show_map(
                fig,
                axes[1, col],
                projection(values, col, sign),
                style,
                colorbar=colorbar,
                lower=col > 0,
            )
            axes[1, col].set_title(f"{name} MIP")
    fig.suptitle(title)
    return _save_atomic(fig, path)


def grid_figure(
    image: torch.Tensor,
    maps: dict[tuple[str, str], torch.Tensor],
    path: Path,
    *,
    signs: dict[str, str] | None = None,
    colorbar: bool = True,
    title: str = "",
) -> Path:
    """Write a methods x targets grid for one input as a PNG and return its path.

    ``maps`` is keyed by ``(method_title, target_label)``. Rows are the targets (in
    first-seen order), columns the input and then each method; ``signs`` gives each
    method's sign (default ``"all"``). A missing (method, target) pair leaves its cell
    empty. For 3D inputs every cell shows the axial slice through the maximum of that
    cell's map (of ``|map|`` for signed maps), and the input column shows the input at
    the slice of the row's first map; the slice index is in each cell's title.
    """
    if not maps:
        raise InvalidInputError("grid_figure needs at least one map.")
    signs = signs or {}
    shown = _as_image(image)
    spatial = tuple(image.shape[1:])
    methods = list(dict.fromkeys(method for method, _ in maps))
    targets = list(dict.fromkeys(target for _, target in maps))
    cells = {}
    for (method, target), saliency in maps.items():
        sign = signs.get(method, "all")
        values = signed_values(_as_map(saliency, spatial), sign)
        cells[method, target] = (values, sign)
    fig, axes = _new_figure(len(targets), 1 + len(methods))
    for row, target in enumerate(targets):
        row_z: int | None = None
        for col, method in enumerate(methods, start=1):
            ax = axes[row, col]
            if (method, target) not in cells:
                ax.set_axis_off()
                continue
            values, sign = cells[method, target]
            style = map_style(values, sign)
            label = method
            if len(spatial) == 3:
                z = peak_index(values, sign)[0]
                row_z = z if row_z is None else row_z
                values, label = values[z], f"{method} (z={z})"
            _show_map(fig, ax, values, style, colorbar=colorbar)
            ax.set_title(_wrapped(label), fontsize="medium")
        input_ax = axes[row, 0]
        if len(spatial) == 3:
            z = row_z or 0
            _show_image(input_ax, shown[z])
            input_ax.set_title(f"input (z={z})" if row == 0 else f"z={z}")
        else:
            _show_image(input_ax, shown)
            input_ax.set_title("input" if row == 0 else "")
        input_ax.set_ylabel(str(target))
    if title:
        fig.suptitle(title)
    return _save_atomic(fig, path)

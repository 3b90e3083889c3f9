"""PNG figures: 2D and 3D job figures, method x target grids, helpers, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from esegeta_core.errors import InvalidInputError
from esegeta_core.report import figures
from esegeta_core.report.figures import (
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    grid_figure,
    job_figure,
    map_style,
    orthogonal_slices,
    peak_index,
    projection,
    signed_values,
)


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()  # decodes the whole file
        assert img.format == "PNG"
        return img.size


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("sign", ["all", "positive", "absolute"])
def test_job_figure_2d(tmp_path: Path, channels: int, sign: str) -> None:
    torch.manual_seed(0)
    path = tmp_path / "job.png"
    out = job_figure(
        torch.rand(channels, 20, 24), torch.randn(1, 20, 24), path, title="IG", sign=sign
    )
    assert out == path
    width, height = _png_size(path)
    assert width > 0 and height > 0
    assert width > height  # input and map side by side
    assert _only(tmp_path) == ["job.png"]  # no temporary file left


def test_job_figure_3d_has_slice_and_projection_rows(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "sub" / "job3d.png"
    job_figure(torch.rand(1, 6, 10, 12), torch.randn(6, 10, 12), path, title="3D")
    width, height = _png_size(path)
    two_d = tmp_path / "job2d.png"
    job_figure(torch.rand(1, 10, 12), torch.randn(10, 12), two_d, title="2D", colorbar=False)
    assert height > _png_size(two_d)[1]  # two rows of panels
    assert width > 0
    assert _only(path.parent) == ["job3d.png"]


def test_job_figure_3d_uses_slices_through_the_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saliency = torch.zeros(1, 6, 10, 12)
    saliency[0, 4, 7, 2] = -5.0  # largest magnitude, negative
    saliency[0, 1, 1, 1] = 3.0
    seen: list[tuple[int, ...]] = []
    real = figures.orthogonal_slices

    def spy(volume: np.ndarray, index: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
        seen.append(tuple(index))
        return real(volume, index)

    monkeypatch.setattr(figures, "orthogonal_slices", spy)
    job_figure(torch.rand(1, 6, 10, 12), saliency, tmp_path / "a.png", title="t")
    assert seen == [(4, 7, 2), (4, 7, 2)]  # image and map sliced at the same point
    seen.clear()
    job_figure(torch.rand(1, 6, 10, 12), saliency, tmp_path / "b.png", title="t", sign="positive")
    assert seen[0] == (1, 1, 1)  # positive part: the largest positive value


def test_peak_index_and_slices() -> None:
    values = np.zeros((5, 6, 7))
    values[3, 2, 5] = -9.0
    values[1, 4, 0] = 4.0
    assert peak_index(values, "all") == (3, 2, 5)  # |map|
    assert peak_index(values, "positive") == (1, 4, 0)
    slices = dict(orthogonal_slices(values, (3, 2, 5)))
    assert slices["axial z=3"].shape == (6, 7)
    assert slices["coronal y=2"].shape == (5, 7)
    assert slices["sagittal x=5"].shape == (5, 6)
    for plane in slices.values():
        assert plane.min() == -9.0  # every plane goes through the peak
    rgb = np.zeros((5, 6, 7, 3))
    assert dict(orthogonal_slices(rgb, (3, 2, 5)))["sagittal x=5"].shape == (5, 6, 3)


def test_projection_signed_and_unsigned() -> None:
    values = np.array([[[1.0, -4.0], [2.0, 0.5]], [[-3.0, 1.0], [1.0, -2.0]]])
    signed = projection(values, 0, "all")
    np.testing.assert_array_equal(signed, [[-3.0, -4.0], [2.0, -2.0]])
    np.testing.assert_array_equal(projection(np.abs(values), 0, "absolute"), [[3, 4], [2, 2]])


def test_sign_choices_pick_colormaps() -> None:
    values = np.array([[-2.0, 1.0], [0.5, -0.5]])
    assert map_style(signed_values(values, "all"), "all") == (DIVERGING_CMAP, -2.0, 2.0)
    positive = signed_values(values, "positive")
    assert positive.min() == 0.0
    assert map_style(positive, "positive") == (SEQUENTIAL_CMAP, 0.0, 1.0)
    absolute = signed_values(values, "absolute")
    assert map_style(absolute, "absolute") == (SEQUENTIAL_CMAP, 0.0, 2.0)
    assert map_style(np.zeros((2, 2)), "all") == (DIVERGING_CMAP, -1.0, 1.0)  # flat map
    with pytest.raises(InvalidInputError, match="sign"):
        signed_values(values, "negative")


def test_grid_colormaps_follow_signs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmaps: list[str] = []
    real = figures._show_map

    def spy(fig, ax, values, style, **kwargs):  # type: ignore[no-untyped-def]
        cmaps.append(style[0])
        return real(fig, ax, values, style, **kwargs)

    monkeypatch.setattr(figures, "_show_map", spy)
    maps = {("IG", "cat"): torch.randn(16, 16), ("GBP", "cat"): torch.randn(1, 16, 16)}
    grid_figure(torch.rand(3, 16, 16), maps, tmp_path / "g.png", signs={"GBP": "absolute"})
    assert cmaps == [DIVERGING_CMAP, SEQUENTIAL_CMAP]


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 16, 16), (1, 6, 8, 10)])
def test_grid_figure(tmp_path: Path, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    spatial = shape[1:]
    maps = {
        ("Saliency", "class 0"): torch.randn(1, *spatial),
        ("Occlusion", "class 0"): torch.randn(*spatial),
        ("Saliency", "class 2"): torch.randn(*spatial),  # (Occlusion, class 2) missing
    }
    path = tmp_path / "grid.png"
    grid_figure(torch.rand(*shape), maps, path, title="grid")
    width, height = _png_size(path)
    one_row = tmp_path / "one.png"
    grid_figure(torch.rand(*shape), {("Saliency", "class 0"): maps["Saliency", "class 0"]}, one_row)
    one_width, one_height = _png_size(one_row)
    assert height > one_height  # two target rows
    assert width > one_width  # input + two method columns
    assert _only(tmp_path) == ["grid.png", "one.png"]


def test_bad_inputs_leave_old_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "job.png"
    job_figure(torch.rand(1, 8, 8), torch.randn(8, 8), path, title="first")
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match="does not match"):
        job_figure(torch.rand(1, 8, 8), torch.randn(1, 9, 9), path, title="bad")
    with pytest.raises(InvalidInputError):
        job_figure(torch.rand(8, 8), torch.randn(8, 8), path, title="bad")
    with pytest.raises(InvalidInputError, match="does not match"):
        grid_figure(torch.rand(1, 8, 8), {("a", "b"): torch.randn(7, 8)}, path)
    with pytest.raises(InvalidInputError):
        grid_figure(torch.rand(1, 8, 8), {}, path)
    assert path.read_bytes() == before
    assert _only(tmp_path) == ["job.png"]


def test_failed_render_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "job.png"
    job_figure(torch.rand(1, 8, 8), torch.randn(8, 8), path, title="first")
    before = path.read_bytes()

    def broken_savefig(self: Figure, handle, **kwargs):  # type: ignore[no-untyped-def]
        handle.write(b"\x89PNG partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk on fire"):
        job_figure(torch.rand(1, 8, 8), torch.randn(8, 8), path, title="second")
    assert path.read_bytes() == before
    assert _only(tmp_path) == ["job.png"]  # the temporary file was removed

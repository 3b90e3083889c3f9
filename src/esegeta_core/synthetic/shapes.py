"""Synthetic 2D shapes with pixel-exact ground truth: classification and segmentation.

Every image shows shapes of four kinds (:data:`SHAPE_CLASSES`) at random positions, sizes
and colours on a textured, noisy background of a random colour. Nothing but the shape
itself tells the kinds apart (no distractors, no position or colour cue), so a model that
classifies well has to look at the object, and a good explanation of it should point
there: the masks and boxes are the ground truth for localisation metrics (pointing
game, energy inside the mask, ...).

Generation is numpy-seeded (``numpy.random.default_rng(seed)``), so the same arguments
give the same tensors on every platform, and it is fast (thousands of 64 px images per
second).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from esegeta_core.errors import InvalidParamsError

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
"""The shape kinds; a class index is a position in this tuple (segmentation: index + 1)."""


@dataclass(frozen=True)
class ShapesData:
    """A classification set: one shape per image.

    Attributes:
        images: ``(N, 3, H, W)`` float32 RGB, roughly in ``[0, 1]``.
        labels: ``(N,)`` long, the shape kind (an index into ``classes``).
        masks: ``(N, 1, H, W)`` bool, the pixels of the object.
        boxes: ``(N, 4)`` long, the object's bounding box ``(x_min, y_min, x_max, y_max)``
            in inclusive pixel indices (as ``torchvision.ops.masks_to_boxes``).
        centers: ``(N, 2)`` float32, the object's centre ``(y, x)`` in pixels.
        classes: the class names.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    centers: torch.Tensor
    classes: tuple[str, ...] = SHAPE_CLASSES

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class ShapesSegmentationData:
    """A segmentation set: several shapes per image.

    Attributes:
        images: ``(N, 3, H, W)`` float32 RGB, roughly in ``[0, 1]``.
        labels: ``(N, H, W)`` long label maps: 0 is background, ``k + 1`` is a pixel of a
            shape of kind ``classes[k + 1]``.
        classes: the class names, ``("background", *SHAPE_CLASSES)``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] = ("background", *SHAPE_CLASSES)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidParamsError(message)


def _check_common(
    function: str,
    n: int,
    size: int,
    radius: tuple[float, float],
    noise: float,
    texture: float,
    contrast: float,
) -> None:
    _check(isinstance(n, int) and n >= 0, f"{function}: n must be an int >= 0, got {n!r}.")
    _check(
        isinstance(size, int) and size >= 16,
        f"{function}: size must be an int >= 16 (pixels per side), got {size!r}.",
    )
    lo, hi = radius
    _check(
        3 <= lo <= hi,
        f"{function}: radius must be (min, max) with 3 <= min <= max, got {radius!r}; "
        "smaller shapes cannot be told apart.",
    )
    _check(
        2 * hi + 2 < size,
        f"{function}: radius {radius!r} does not fit a {size} px image; use a larger "
        f"size or a max radius below {(size - 2) / 2}.",
    )
    _check(noise >= 0 and texture >= 0, f"{function}: noise and texture must be >= 0.")
    _check(
        0 < contrast <= 0.2,
        f"{function}: contrast must be in (0, 0.2] (grey levels; up to twice that is "
        f"drawn, and it must fit in [0, 1]), got {contrast!r}.",
    )


def _inside(kind: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Whether the offsets ``(u, v)`` (shape-local, ``v`` up) fall inside a ``kind`` shape.

    ``r`` broadcasts against ``u`` and ``v``; every kind has about the same extent (``r``
    is the circle's radius, and about the half-width of the other kinds).
    """
    if kind == 0:  # circle
        return u * u + v * v <= r * r
    if kind == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    if kind == 2:
        # equilateral triangle pointing up, circumradius 1.3 r, centred on its centroid:
        # inside all three edges (outward normals at 270, 30 and 150 degrees, inradius R/2)
        half = 0.65 * r
        c30 = np.float32(np.cos(np.pi / 6))
        return (-v <= half) & (c30 * u + 0.5 * v <= half) & (-c30 * u + 0.5 * v <= half)
    # cross: two bars of half-length r and half-width 0.35 r
    w = 0.35 * r
    au, av = np.abs(u), np.abs(v)
    return ((au <= r) & (av <= w)) | ((av <= r) & (au <= w))


def _render_masks(
    size: int,
    kinds: np.ndarray,
    centers: np.ndarray,
    radii: np.ndarray,
    angles: np.ndarray,
) -> np.ndarray:
    """Boolean masks ``(n, size, size)`` of ``n`` shapes (``kinds``, ``radii``, ``angles``:
    ``(n,)``; ``centers``: ``(n, 2)`` as ``(y, x)`` in pixels)."""
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    masks = np.zeros((kinds.shape[0], size, size), dtype=bool)
    for kind in np.unique(kinds):
        idx = np.flatnonzero(kinds == kind)
        shape = (idx.size, 1, 1)
        dy = coords[None, :, None] - centers[idx, 0].astype(np.float32).reshape(shape)
        dx = coords[None, None, :] - centers[idx, 1].astype(np.float32).reshape(shape)
        cos = np.cos(angles[idx]).astype(np.float32).reshape(shape)
        sin = np.sin(angles[idx]).astype(np.float32).reshape(shape)
        # shape-local coordinates: the offset rotated by -angle; v points up (y is down)
        u = cos * dx - sin * dy
        v = -(sin * dx + cos * dy)
        masks[idx] = _inside(int(kind), u, v, radii[idx].astype(np.float32).reshape(shape))
    return masks


def _smooth_basis(size: int, cells: int) -> np.ndarray:
    """``(size, cells)`` Gaussian bumps on a regular grid, rows summing to one."""
    x = (np.arange(size, dtype=np.float64) + 0.5) / size
    centres = (np.arange(cells, dtype=np.float64) + 0.5) / cells
    basis = np.exp(-0.5 * ((x[:, None] - centres[None, :]) * cells / 0.8) ** 2)
    return (basis / basis.sum(1, keepdims=True)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], size: int) -> np.ndarray:
    """Smooth random fields ``(*shape, size, size)`` in about ``[-1, 1]``.

    Uniform noise on a 6 x 6 grid, interpolated with Gaussian bumps (separable, so it
    costs two small matrix products rather than an image-size convolution).
    """
    cells = rng.uniform(-1.0, 1.0, size=(*shape, 6, 6)).astype(np.float32)
    basis = _smooth_basis(size, 6)
    field = basis @ cells @ basis.T
    # the interpolation averages neighbouring cells: rescale to about unit amplitude
    return field * np.float32(1.6)


def _chroma(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random colour offsets ``(n, 3)`` in ``[-0.1, 0.1]`` that leave the mean unchanged."""
    offset = rng.uniform(-0.1, 0.1, size=(n, 3))
    return offset - offset.mean(1, keepdims=True)


def _backgrounds(
    rng: np.random.Generator, n: int, size: int, texture: float
) -> tuple[np.ndarray, np.ndarray]:
    """Background intensities ``(n,)`` and textured RGB backgrounds ``(n, 3, size, size)``.

    The background colour is a grey level in ``[0.25, 0.75]`` plus a random tint; the
    texture is a smooth random field per channel.
    """
    level = rng.uniform(0.25, 0.75, size=n)
    colour = (level[:, None] + _chroma(rng, n)).astype(np.float32)
    field = _smooth_field(rng, (n, 3), size)
    return level, colour[:, :, None, None] + np.float32(texture) * field


def _object_colours(rng: np.random.Generator, level: np.ndarray, contrast: float) -> np.ndarray:
    """Object colours ``(n, 3)`` whose grey level differs from ``level`` by ``contrast``
    to ``2 * contrast``, brighter or darker at random, plus their own random tint.

    The sign is flipped where the object would leave ``[0.05, 0.95]``, so neither
    polarity is a rule and the grey-level contrast is always at least ``contrast``.
    """
    n = level.shape[0]
    delta = rng.uniform(contrast, 2 * contrast, size=n)
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    shifted = level + sign * delta
    shifted = np.where((shifted < 0.05) | (shifted > 0.95), level - sign * delta, shifted)
    return shifted[:, None] + _chroma(rng, n)


def _finish(rng: np.random.Generator, image: np.ndarray, noise: float) -> torch.Tensor:
    """Add Gaussian pixel noise, clip to ``[0, 1]`` and return a float32 tensor."""
    image = image.astype(np.float32, copy=False)
    if noise > 0:
        image += np.float32(noise) * rng.standard_normal(size=image.shape, dtype=np.float32)
    return torch.from_numpy(np.clip(image, 0.0, 1.0, out=image))


def make_shapes(
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    noise: float = 0.1,
    texture: float = 0.15,
    contrast: float = 0.2,
    radius: tuple[float, float] = (5.0, 8.0),
    rotate: bool = False,
    classes: tuple[int, ...] | None = None,
) -> ShapesData:
    """``n`` RGB images with one shape each; the label is the shape's kind.

    Args:
        n: number of images.
        size: image side in pixels.
        seed: the seed; the same arguments give the same data, other seeds other data.
        noise: standard deviation of the Gaussian pixel noise.
        texture: amplitude of the smooth random background texture (per channel).
        contrast: the least difference in grey level (channel mean) between object and
            background (before texture and noise); up to twice as much, and the object
            is brighter or darker at random.
        radius: ``(min, max)`` half-extent of the shapes in pixels, drawn uniformly.
        rotate: rotate each shape by a random angle (else squares, triangles and crosses
            stand upright).
        classes: the class indices to draw from (all of :data:`SHAPE_CLASSES` if None);
            the labels keep their global indices.

    Returns:
        A :class:`ShapesData`; labels are balanced in expectation (drawn uniformly).
    """
    _check_common("make_shapes", n, size, radius, noise, texture, contrast)
    pool = np.arange(len(SHAPE_CLASSES)) if classes is None else np.asarray(classes)
    _check(
        pool.ndim == 1
        and pool.size > 0
        and bool(np.all((pool >= 0) & (pool < len(SHAPE_CLASSES)))),
        f"make_shapes: classes must be indices into {SHAPE_CLASSES}, got {classes!r}.",
    )
    rng = np.random.default_rng(seed)
    kinds = pool[rng.integers(0, pool.size, size=n)]
    radii = rng.uniform(radius[0], radius[1], size=n)
    # the triangle's circumradius is 1.3 r: keep every kind inside the image
    margin = 1.35 * radii + 1.0
    centers = np.stack(
        [rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)], axis=-1
    )
    angles = rng.uniform(0.0, 2 * np.pi, size=n) if rotate else np.zeros(n)
    masks = _render_masks(size, kinds, centers, radii, angles)
    base, background = _backgrounds(rng, n, size, texture)
    colours = _object_colours(rng, base, contrast).astype(np.float32)
    image = np.where(masks[:, None], colours[:, :, None, None], background)
    images = _finish(rng, image, noise)
    masks_t = torch.from_numpy(masks[:, None].copy())
    return ShapesData(
        images=images,
        labels=torch.from_numpy(kinds.astype(np.int64)),
        masks=masks_t,
        boxes=_boxes(masks_t[:, 0]),
        centers=torch.from_numpy(centers.astype(np.float32)),
    )


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """Inclusive ``(x_min, y_min, x_max, y_max)`` of each ``(H, W)`` mask; -1 if empty."""
    n = masks.shape[0]
    boxes = torch.full((n, 4), -1, dtype=torch.long)
    rows, cols = masks.any(2), masks.any(1)
    idx_r = torch.arange(masks.shape[1])
    idx_c = torch.arange(masks.shape[2])
    present = rows.any(1)
    big = masks.shape[1] + masks.shape[2]
    boxes[:, 0] = torch.where(cols, idx_c, big).min(1).values
    boxes[:, 1] = torch.where(rows, idx_r, big).min(1).values
    boxes[:, 2] = torch.where(cols, idx_c, -1).max(1).values
    boxes[:, 3] = torch.where(rows, idx_r, -1).max(1).values
    boxes[~present] = -1
    return boxes


def make_shapes_segmentation(
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    objects: tuple[int, int] = (2, 4),
    noise: float = 0.1,
    texture: float = 0.15,
    contrast: float = 0.2,
    radius: tuple[float, float] = (5.0, 8.0),
    rotate: bool = False,
) -> ShapesSegmentationData:
    """``n`` RGB images with several non-overlapping shapes and their label maps.

    Args:
        n: number of images.
        size: image side in pixels.
        seed: the seed; the same arguments give the same data, other seeds other data.
        objects: ``(min, max)`` shapes per image, drawn uniformly; a shape that finds no
            free place after a few tries is left out, so crowded settings may give fewer.
        noise, texture, contrast, radius, rotate: as in :func:`make_shapes`; each shape
            gets its own colour.

    Returns:
        A :class:`ShapesSegmentationData` with label 0 for background and
        ``kind + 1`` on the pixels of a shape of that kind.
    """
    _check_common("make_shapes_segmentation", n, size, radius, noise, texture, contrast)
    lo, hi = objects
    _check(
        isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi,
        f"make_shapes_segmentation: objects must be (min, max) ints with 1 <= min <= max, "
        f"got {objects!r}.",
    )
    rng = np.random.default_rng(seed)
    base, background = _backgrounds(rng, n, size, texture)
    labels = np.zeros((n, size, size), dtype=np.int64)
    image = background
    for i in range(n):
        count = int(rng.integers(lo, hi + 1))
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            r = float(rng.uniform(radius[0], radius[1]))
            margin = 1.35 * r + 1.0
            for _try in range(20):
                cy, cx = rng.uniform(margin, size - margin, size=2)
                # bounding circles (radius 1.35 r) at least 2 px apart
                if all(np.hypot(cy - py, cx - px) >= 1.35 * (r + pr) + 2 for py, px, pr in placed):
                    break
            else:
                continue
            placed.append((cy, cx, r))
            kind = int(rng.integers(0, len(SHAPE_CLASSES)))
            angle = float(rng.uniform(0.0, 2 * np.pi)) if rotate else 0.0
            mask = _render_masks(
                size, np.array([kind]), np.array([[cy, cx]]), np.array([r]), np.array([angle])
            )[0]
            colour = _object_colours(rng, base[i : i + 1], contrast)[0]
            image[i][:, mask] = colour[:, None]
            labels[i][mask] = kind + 1
    return ShapesSegmentationData(
        images=_finish(rng, image, noise), labels=torch.from_numpy(labels)
    )

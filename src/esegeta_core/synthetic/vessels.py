"""Synthetic 3D vessel trees with voxel-exact labels (the original paper's use case).

Each volume holds a few trees of thin tubes (radius 1 to 2 voxels): smooth random walks
that branch, reflected at the volume's faces so that every tree stays in one piece.
They are rendered by distance (a voxel is vessel when it lies within the local radius of
the centre line; intensities ramp down over half a voxel outside, as partial volume
does), brighter than a background that carries a smooth multiplicative intensity
inhomogeneity (a bias field, as in MR angiography) and Gaussian noise.

Generation is numpy-seeded (centre lines) and vectorised in torch (rendering): the same
arguments give the same tensors, and a few hundred 32^3 volumes take about a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from esegeta_core.errors import InvalidParamsError
from esegeta_core.synthetic.shapes import _smooth_basis

_STEP = 0.75
"""Distance between consecutive centre-line points in voxels (less than the smallest
diameter, so the tubes are continuous)."""


@dataclass(frozen=True)
class VesselsData:
    """A 3D segmentation set of vessel trees.

    Attributes:
        volumes: ``(N, 1, D, H, W)`` float32 intensities (background about 0.1 to 0.3,
            vessels about 0.6 to 1.1, before noise and the bias field).
        labels: ``(N, D, H, W)`` long, 1 for vessel voxels and 0 for background.
        classes: the class names, ``("background", "vessel")``.
    """

    volumes: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] = ("background", "vessel")

    def __len__(self) -> int:
        return int(self.volumes.shape[0])


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidParamsError(message)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _walk(
    rng: np.random.Generator,
    starts: np.ndarray,
    directions: np.ndarray,
    steps: int,
    size: int,
    margin: float,
    curvature: float,
) -> np.ndarray:
    """Centre lines ``(W, steps, 3)`` of ``W`` walkers, all advanced together.

    Each step moves ``_STEP`` voxels and turns the direction by a little Gaussian noise
    (``curvature``); a walker that would leave ``[margin, size - 1 - margin]`` is
    mirrored back and its direction reflected.
    """
    lo, hi = margin, size - 1 - margin
    pos = starts.astype(np.float64).copy()
    direction = _unit(directions.astype(np.float64))
    points = np.empty((starts.shape[0], steps, 3))
    noise = rng.normal(0.0, curvature, size=(steps, *starts.shape))
    for t in range(steps):
        points[:, t] = pos
        pos = pos + _STEP * direction
        below, above = pos < lo, pos > hi
        pos = np.where(below, 2 * lo - pos, np.where(above, 2 * hi - pos, pos))
        direction = np.where(below, np.abs(direction), direction)
        direction = np.where(above, -np.abs(direction), direction)
        direction = _unit(direction + noise[t])
    return points


def _trees(
    rng: np.random.Generator,
    n: int,
    size: int,
    trees: tuple[int, int],
    branches: tuple[int, int],
    radius: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line points ``(P, 3)``, their radii ``(P,)`` and volume index ``(P,)``."""
    margin = 1.0
    curvature = 0.15
    count = rng.integers(trees[0], trees[1] + 1, size=n)
    owner = np.repeat(np.arange(n), count)
    w = owner.size
    steps = math.ceil(1.5 * size / _STEP)
    starts = rng.uniform(margin, size - 1 - margin, size=(w, 3))
    paths = _walk(rng, starts, rng.normal(size=(w, 3)), steps, size, margin, curvature)
    length = rng.integers(steps // 2, steps + 1, size=w)
    r0 = rng.uniform(radius[0], radius[1], size=w)
    r1 = np.maximum(radius[0], 0.7 * r0)
    frac = np.arange(steps)[None, :] / np.maximum(length[:, None] - 1, 1)
    radii = r0[:, None] + (r1 - r0)[:, None] * np.clip(frac, 0, 1)
    valid = np.arange(steps)[None, :] < length[:, None]

    # branches: each starts on its parent's centre line, turned 30 to 90 degrees away
    per_parent = rng.integers(branches[0], branches[1] + 1, size=w)
    parent = np.repeat(np.arange(w), per_parent)
    b = parent.size
    at = (length[parent] * rng.uniform(0.2, 0.8, size=b)).astype(np.int64)
    tangent = _unit(paths[parent, np.minimum(at + 1, steps - 1)] - paths[parent, at])
    side = _unit(np.cross(tangent, rng.normal(size=(b, 3))))
    angle = rng.uniform(np.pi / 6, np.pi / 2, size=b)[:, None]
    b_steps = max(2, steps // 2)
    b_paths = _walk(
        rng,
        paths[parent, at],
        np.cos(angle) * tangent + np.sin(angle) * side,
        b_steps,
        size,
        margin,
        curvature,
    )
    b_length = rng.integers(b_steps // 2, b_steps + 1, size=b)
    b_r0 = rng.uniform(radius[0], np.maximum(radius[0], radii[parent, at]))
    b_radii = np.repeat(b_r0[:, None], b_steps, axis=1)
    b_valid = np.arange(b_steps)[None, :] < b_length[:, None]

    points = np.concatenate([paths[valid], b_paths[b_valid]])
    point_radii = np.concatenate([radii[valid], b_radii[b_valid]])
    point_owner = np.concatenate(
        [
            np.repeat(owner, steps).reshape(w, steps)[valid],
            np.repeat(owner[parent], b_steps).reshape(b, b_steps)[b_valid],
        ]
    )
    return points, point_radii, point_owner


def _signed_distance(
    points: np.ndarray, radii: np.ndarray, owner: np.ndarray, n: int, size: int
) -> torch.Tensor:
    """``(n, size, size, size)`` distance to the nearest tube surface (negative inside).

    Every point writes into the voxels of a small ball around it (scatter-min into a
    padded volume, so no bounds checks), so the cost follows the number of points, not
    points times voxels. Voxels out of every ball's reach get ``reach``, more than the
    half voxel over which the rendered intensity fades.
    """
    # a voxel within r + 0.5 of a point is within that of the point's rounded position
    # plus half the voxel diagonal
    reach = float(radii.max(initial=0.0)) + 0.5 + math.sqrt(3) / 2
    pad = math.ceil(reach)
    side = size + 2 * pad
    grid = torch.arange(-pad, pad + 1)
    offsets = torch.stack(torch.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[offsets.float().norm(dim=-1) <= reach]
    deltas = (offsets[:, 0] * side + offsets[:, 1]) * side + offsets[:, 2]
    out = torch.full((n * side**3,), reach)
    pts = torch.from_numpy(points).float()
    rad = torch.from_numpy(radii).float()
    centre = torch.round(pts)
    base = (torch.from_numpy(owner).long() * side + centre[:, 0].long() + pad) * side
    base = (base + centre[:, 1].long() + pad) * side + centre[:, 2].long() + pad
    fraction = centre - pts
    chunk = max(1, 4_000_000 // offsets.shape[0])
    for start in range(0, pts.shape[0], chunk):
        stop = start + chunk
        diff = fraction[start:stop, None, :] + offsets[None].float()
        sd = diff.norm(dim=-1) - rad[start:stop, None]
        flat = base[start:stop, None] + deltas[None]
        out.scatter_reduce_(0, flat.reshape(-1), sd.reshape(-1), reduce="amin")
    out = out.reshape(n, side, side, side)
    return out[:, pad : pad + size, pad : pad + size, pad : pad + size].contiguous()


def _bias_fields(rng: np.random.Generator, n: int, size: int, strength: float) -> torch.Tensor:
    """Smooth multiplicative fields ``(n, size, size, size)`` in ``1 +- strength``."""
    cells = rng.uniform(-1.0, 1.0, size=(n, 3, 3, 3)).astype(np.float32)
    basis = torch.from_numpy(_smooth_basis(size, 3))
    field = torch.einsum("nabc,ia,jb,kc->nijk", torch.from_numpy(cells), basis, basis, basis)
    peak = field.abs().flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]
    scale = torch.from_numpy(rng.uniform(0.5, 1.0, size=n).astype(np.float32))
    return 1.0 + strength * scale[:, None, None, None] * field / peak


def make_vessels(
    n: int,
    *,
    size: int = 32,
    seed: int = 0,
    trees: tuple[int, int] = (1, 3),
    branches: tuple[int, int] = (1, 3),
    radius: tuple[float, float] = (1.0, 2.0),
    noise: float = 0.1,
    inhomogeneity: float = 0.3,
) -> VesselsData:
    """``n`` volumes of branching vessel trees and their binary label maps.

    Args:
        n: number of volumes.
        size: side of the cubic volumes in voxels.
        seed: the seed; the same arguments give the same data, other seeds other data.
        trees: ``(min, max)`` vessel trees per volume, drawn uniformly.
        branches: ``(min, max)`` side branches per tree, drawn uniformly.
        radius: ``(min, max)`` tube radius in voxels; a trunk narrows to 70% of its
            starting radius along its length, a branch is no wider than its parent.
        noise: standard deviation of the Gaussian voxel noise.
        inhomogeneity: strength of the multiplicative bias field (0 for none): the
            intensities are scaled by a smooth field within ``1 +- inhomogeneity``.

    Returns:
        A :class:`VesselsData`: volumes ``(N, 1, D, H, W)`` float32 and labels
        ``(N, D, H, W)`` long (1 = vessel).
    """
    _check(isinstance(n, int) and n >= 0, f"make_vessels: n must be an int >= 0, got {n!r}.")
    _check(
        isinstance(size, int) and size >= 8,
        f"make_vessels: size must be an int >= 8 (voxels per side), got {size!r}.",
    )
    _check(
        0.5 <= radius[0] <= radius[1] <= size / 4,
        f"make_vessels: radius must be (min, max) with 0.5 <= min <= max <= size / 4 "
        f"voxels, got {radius!r}.",
    )
    for name, (lo, hi), least in (("trees", trees, 1), ("branches", branches, 0)):
        _check(
            isinstance(lo, int) and isinstance(hi, int) and least <= lo <= hi,
            f"make_vessels: {name} must be (min, max) ints with {least} <= min <= max, "
            f"got {(lo, hi)!r}.",
        )
    _check(
        noise >= 0 and 0 <= inhomogeneity < 1,
        "make_vessels: noise must be >= 0 and inhomogeneity in [0, 1).",
    )
    rng = np.random.default_rng(seed)
    points, radii, owner = _trees(rng, n, size, trees, branches, radius)
    sd = _signed_distance(points, radii, owner, n, size)
    labels = (sd <= 0).long()
    profile = (0.5 - sd).clamp(0.0, 1.0)
    background = torch.from_numpy(rng.uniform(0.1, 0.3, size=n).astype(np.float32))
    contrast = torch.from_numpy(rng.uniform(0.5, 0.8, size=n).astype(np.float32))
    volumes = background[:, None, None, None] + contrast[:, None, None, None] * profile
    volumes = volumes * _bias_fields(rng, n, size, inhomogeneity)
    if noise > 0:
        volumes = volumes + noise * torch.from_numpy(
            rng.standard_normal(size=volumes.shape, dtype=np.float32)
        )
    return VesselsData(volumes=volumes[:, None].contiguous(), labels=labels)

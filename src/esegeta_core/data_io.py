"""Reading inputs and writing maps for config-driven runs.

Inputs: NIfTI (through torchio/nibabel, keeping the affine), PNG/JPEG (Pillow),
``.npy`` and ``.pt``; 2D or 3D; depth first or not; with or without batch and channel
dimensions; optional scaling, normalisation and resizing. Every loader returns a
``(B, C, *spatial)`` float tensor and a :class:`Loaded` record that knows how to put a
map back into the file's own layout, so a 3D map is written as NIfTI with the input's
affine and orientation. Every file is checked whole on load (a truncated NIfTI, image or
array raises :class:`InvalidInputError` naming the file instead of being read as
zeros). All writes are atomic: a temporary file in the same folder, then
``os.replace``, so a run killed at any moment leaves only complete files; they get
the permissions a plain ``open()`` would give.
"""

from __future__ import annotations

import glob
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from esegeta_core.config import InputSpec
from esegeta_core.errors import InvalidInputError
from esegeta_core.files import atomic_path as atomic_path  # re-exported: moved to files
from esegeta_core.files import inside as inside
from esegeta_core.files import write_json as write_json
from esegeta_core.toolkit import interpolation_mode

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Loaded:
    """One input file as a batch, plus what is needed to write maps back."""

    path: Path
    tensor: torch.Tensor
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    nifti: bool = False
    depth_first: bool = True


def expand_paths(patterns: list[str], base: Path | None = None) -> list[Path]:
    """Files matching the patterns (relative to ``base``), in order, without duplicates."""
    out: list[Path] = []
    for pattern in patterns:
        full = (
            str(base / pattern) if base is not None and not Path(pattern).is_absolute() else pattern
        )
        matches = sorted(glob.glob(full)) or ([full] if Path(full).exists() else [])
        if not matches:
            raise InvalidInputError(f"No input file matches {pattern!r}.")
        out.extend(Path(m) for m in matches if Path(m) not in out)
    return out


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _gzip_length(path: Path) -> tuple[int, bool, str]:
    """A gzip file read to its end: the decompressed length, whether the stream is
    complete (every member ends with its checksum; zero padding is allowed, as Python's
    gzip allows it) and the zlib error when the data is corrupt ("" otherwise)."""
    total = 0
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                while chunk:
                    if decoder.eof:  # after a member: zero padding or a further member
                        chunk = chunk.lstrip(b"\0")
                        if not chunk:
                            break
                        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    total += len(decoder.decompress(chunk))
                    chunk = decoder.unused_data if decoder.eof else b""
            total += len(decoder.flush())
    except zlib.error as exc:
        return total, False, str(exc)
    return total, decoder.eof, ""


def check_nifti(path: Path) -> None:
    """Raise :class:`InvalidInputError` unless ``path`` is a complete NIfTI file: a readable
    header, a complete gzip stream for ``.nii.gz`` and at least the voxel bytes the header
    announces (readers pad a truncated file with zeros without a word)."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(path)  # reads the header only
        proxy = image.dataobj
        shape = tuple(int(n) for n in proxy.shape)
        dtype = np.dtype(proxy.dtype)
        offset = int(getattr(proxy, "offset", image.header.get_data_offset()))
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as exc:
        raise InvalidInputError(
            f"{path}: not a valid NIfTI file ({type(exc).__name__}: {exc}). The file is "
            "truncated or corrupt: copy or export it again."
        ) from exc
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    complete, corrupt = True, ""
    if path.name.lower().endswith(".gz"):
        length, complete, corrupt = _gzip_length(path)
    else:
        length = path.stat().st_size
    if corrupt:
        raise InvalidInputError(
            f"{path}: not a valid NIfTI file: corrupt gzip data ({corrupt}). Copy or export "
            "the file again."
        )
    if length < expected:
        raise InvalidInputError(
            f"{path}: truncated: {length:,} of {expected:,} bytes for a {shape} {dtype} "
            "volume. Copy or export the file again."
        )
    if not complete:
        raise InvalidInputError(
            f"{path}: truncated: the gzip stream ends before its end marker (after "
            f"{length:,} bytes). Copy or export the file again."
        )


_PIL_LOCK = threading.Lock()


def _read_image(path: Path, mode: str | None) -> np.ndarray:
    """Decode a whole image with Pillow, refusing truncated files even where the caller
    set ``ImageFile.LOAD_TRUNCATED_IMAGES``."""
    from PIL import Image, ImageFile

    kind = path.suffix.lower().lstrip(".").upper()
    with _PIL_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            with Image.open(path) as img:
                img.load()
                img = img.convert(mode) if mode else img
                return np.asarray(img)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise InvalidInputError(
                f"{path}: not a valid {kind} image ({type(exc).__name__}: {exc}); the file is "
                "truncated or corrupt. Save or export it again."
            ) from exc
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInputError(
            f"{path}: not a valid .npy array ({type(exc).__name__}: {exc}). The file is "
            "truncated or corrupt (or holds pickled objects): save it again with np.save."
        ) from exc


def _read_pt(path: Path) -> torch.Tensor:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for bad bytes
        raise InvalidInputError(
            f"{path}: not a readable .pt file ({type(exc).__name__}: {exc}). The file is "
            "truncated or corrupt (or holds more than tensors): save it again with torch.save."
        ) from exc
    if not isinstance(loaded, torch.Tensor):
        raise InvalidInputError(f"{path}: a .pt input must hold one tensor.")
    return loaded


def read_array(path: Path, spec: InputSpec) -> tuple[torch.Tensor, np.ndarray, bool]:
    """The raw data of one file as ``(B, C, *spatial)`` (before scaling), its affine and
    whether it came from an 8-bit image. A missing, truncated or corrupt file raises
    :class:`InvalidInputError` naming it."""
    suffix = path.suffix.lower()
    rank = spec.rank
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise InvalidInputError(f"{path}: {what}. Check the path.")
    if _is_nifti(path):
        import torchio as tio

        check_nifti(path)
        try:
            image = tio.ScalarImage(path)
            data = image.data.float()  # (C, X, Y, Z)
        except (OSError, EOFError, ValueError, RuntimeError, zlib.error) as exc:
            raise InvalidInputError(
                f"{path}: cannot read the NIfTI file ({type(exc).__name__}: {exc})."
            ) from exc
        if rank == 2:
            data = data[..., 0] if data.shape[-1] == 1 else data
        if data.ndim != rank + 1:
            raise InvalidInputError(f"{path}: NIfTI data {tuple(data.shape)} is not {rank}D.")
        if spec.depth_first:
            data = data.permute(0, *range(rank, 0, -1))
        return data.unsqueeze(0), np.asarray(image.affine), False
    if suffix in IMAGE_SUFFIXES:
        arr = _read_image(path, {1: "L", 3: "RGB"}.get(spec.channels or 0))
        eight_bit = arr.dtype == np.uint8
        t = torch.from_numpy(arr.astype(np.float32))
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        return t.unsqueeze(0), np.eye(4), eight_bit
    if suffix == ".npy":
        arr = _read_npy(path)
    elif suffix == ".pt":
        arr = _read_pt(path).numpy()
    else:
        raise InvalidInputError(f"{path}: unknown input format; use NIfTI, PNG/JPEG, .npy or .pt.")
    eight_bit = arr.dtype == np.uint8
    t = torch.from_numpy(np.ascontiguousarray(arr)).float()
    if not spec.batch_dim:
        t = t.unsqueeze(0)
    if not spec.channel_dim:
        t = t.unsqueeze(1)
    if t.ndim != rank + 2:
        raise InvalidInputError(
            f"{path}: array of shape {tuple(arr.shape)} does not give a {rank}D batch "
            f"(B, C, *spatial) with batch_dim={spec.batch_dim}, channel_dim={spec.channel_dim}."
        )
    if rank == 3 and not spec.depth_first:
        t = t.permute(0, 1, 4, 2, 3)  # (H, W, D) -> (D, H, W)
    return t, np.eye(4), eight_bit


def load_input(path: Path, spec: InputSpec) -> Loaded:
    """Read, scale, normalise and resize one input file."""
    t, affine, eight_bit = read_array(path, spec)
    if spec.channels is not None and t.shape[1] != spec.channels:
        if t.shape[1] == 1:
            t = t.expand(-1, spec.channels, *t.shape[2:]).clone()
        elif spec.channels == 1:
            t = t.mean(1, keepdim=True)
        else:
            raise InvalidInputError(
                f"{path}: cannot turn {t.shape[1]} channels into {spec.channels}."
            )
    if spec.scale == "unit" and eight_bit:
        t = t / 255.0
    elif spec.scale == "minmax":
        lo = t.amin(dim=tuple(range(1, t.ndim)), keepdim=True)
        hi = t.amax(dim=tuple(range(1, t.ndim)), keepdim=True)
        t = (t - lo) / (hi - lo).clamp_min(1e-12)
    elif spec.scale == "zscore":
        dims = tuple(range(1, t.ndim))
        t = (t - t.mean(dims, keepdim=True)) / t.std(dims, keepdim=True).clamp_min(1e-12)
    if spec.normalise is not None:
        mean = torch.tensor(spec.normalise.mean).view(1, -1, *([1] * spec.rank))
        std = torch.tensor(spec.normalise.std).view(1, -1, *([1] * spec.rank))
        t = (t - mean) / std
    if spec.resize is not None:
        if len(spec.resize) != spec.rank:
            raise InvalidInputError(f"inputs.resize needs {spec.rank} sizes, got {spec.resize}.")
        mode = interpolation_mode(spec.rank)
        t = F.interpolate(t, size=tuple(spec.resize), mode=mode, align_corners=False)
    if not bool(torch.isfinite(t).all()):
        raise InvalidInputError(f"{path}: the input contains NaN or infinite values.")
    return Loaded(path, t.contiguous(), affine, _is_nifti(path), spec.depth_first)


def load_mask(path: Path, spec: InputSpec) -> torch.Tensor:
    """A region mask file read like the inputs (no scaling), as a boolean spatial tensor."""
    raw = spec.model_copy(update={"scale": "none", "normalise": None, "channels": None})
    t, _, _ = read_array(path, raw)
    if raw.resize is not None:
        mode = "nearest"
        t = F.interpolate(t, size=tuple(raw.resize), mode=mode)
    return t[0, 0] != 0


def _write_with(path: Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return path


def write_map(folder: Path, name: str, saliency: torch.Tensor, loaded: Loaded, index: int) -> Path:
    """Write one item's map: NIfTI with the input's affine for 3D (in the input file's
    axis order), compressed ``.npz`` for 2D. ``saliency`` is ``(C, *spatial)``."""
    data = saliency.detach().float().cpu()
    if data.ndim == 4:  # 3D
        arr = data
        if loaded.nifti and loaded.depth_first:
            arr = arr.permute(0, 3, 2, 1)  # (Z, Y, X) -> (X, Y, Z)
        elif not loaded.depth_first:
            arr = arr.permute(0, 2, 3, 1)  # (D, H, W) -> (H, W, D)
        import nibabel as nib

        volume = arr.numpy()
        volume = volume[0] if volume.shape[0] == 1 else np.moveaxis(volume, 0, -1)
        image = nib.Nifti1Image(volume.astype(np.float32), loaded.affine)
        path = folder / f"{name}.nii.gz"
        # nibabel picks the format from the suffix: write to "<tmp>.nii.gz" then move
        return _write_with(path, lambda tmp: _save_nifti(image, tmp))
    path = folder / f"{name}.npz"
    return _write_with(path, lambda tmp: _save_npz(tmp, data.numpy(), loaded, index))


def _save_nifti(image: Any, tmp: Path) -> None:
    import nibabel as nib

    real = tmp.with_name(tmp.name + ".nii.gz")
    nib.save(image, real)
    os.replace(real, tmp)


def _save_npz(tmp: Path, data: np.ndarray, loaded: Loaded, index: int) -> None:
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, attribution=data, source=str(loaded.path), index=index)

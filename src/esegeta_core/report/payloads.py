"""Compact payloads of one job's map and input for the interactive viewers.

Used by the static HTML report (inlined as base64) and by ``esegeta-web`` (served over
HTTP); the browser side is ``assets/esegeta-viewer.js``.

- **2D input**: a PNG of the model's view of the input (after the run's scaling and
  resizing), min-max scaled to 8 bits; grey, or RGB for three channels.
- **2D map** (``EGM1``): ``b"EGM1"``, a little-endian uint32 ``N``, ``N`` bytes of UTF-8
  JSON (``height``, ``width``, ``dtype`` ``"float16"``, ``scale``, ``min``, ``max``,
  ``channels``, ``reduced``), then ``height * width`` little-endian float16 values,
  row-major. A value is ``float16 * scale`` (``scale`` is the map's largest magnitude, so
  small attributions do not underflow float16). A map of several channels is summed over
  them (``reduced`` says so).
- **3D input and map**: gzipped NIfTI-1, uint8 with ``scl_slope``/``scl_inter``, in the
  map file's voxel order with its affine (the input is put in the same order, as
  :func:`esegeta_core.data_io.write_map` does). Volumes larger than
  :data:`MAX_VOXELS_PER_AXIS` along any axis are down-sampled by block means with one
  integer factor for all axes (the affine is updated); :func:`sampling_text` states it.

Every file a record names must lie inside the run folder, and the input inside ``root``
(the workspace); anything else raises :class:`~esegeta_core.errors.InvalidInputError`.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esegeta_core.errors import InvalidInputError
from esegeta_core.files import inside

if TYPE_CHECKING:
    import numpy as np

MAX_VOXELS_PER_AXIS = 128
"""3D payloads are down-sampled when any axis is longer than this."""

MAP_MAGIC = b"EGM1"
MIME_PNG = "image/png"
MIME_MAP2D = "application/vnd.esegeta.map2d"
MIME_NIFTI = "application/gzip"

__all__ = [
    "MAP_MAGIC",
    "MAX_VOXELS_PER_AXIS",
    "MIME_MAP2D",
    "MIME_NIFTI",
    "MIME_PNG",
    "Sampling",
    "decode_map_2d",
    "encode_map_2d",
    "input_payload",
    "map_payload",
    "nifti_payload",
    "sampling_text",
    "viewer_spec",
]


@dataclass(frozen=True)
class Sampling:
    """How a 3D payload relates to the stored volume: ``shape`` stored, ``shown`` sent,
    ``factor`` the block size of the means (1: not down-sampled)."""

    shape: tuple[int, ...]
    shown: tuple[int, ...]
    factor: int
    max_voxels_per_axis: int = MAX_VOXELS_PER_AXIS
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "shown_shape": list(self.shown),
            "factor": self.factor,
            "max_voxels_per_axis": self.max_voxels_per_axis,
            "text": sampling_text(self),
        }


def sampling_text(sampling: Sampling) -> str:
    """One sentence for the page: the sampling of a 3D payload."""
    shape = "x".join(str(s) for s in sampling.shape)
    if sampling.factor == 1:
        return f"Shown at full resolution ({shape} voxels), 8-bit (uint8 with scl_slope/scl_inter)."
    shown = "x".join(str(s) for s in sampling.shown)
    f = sampling.factor
    return (
        f"Down-sampled for the viewer: {shape} -> {shown} voxels (means of {f}x{f}x{f} blocks; "
        f"volumes over {sampling.max_voxels_per_axis} voxels per axis are reduced), 8-bit "
        "(uint8 with scl_slope/scl_inter). The NIfTI download has the full map."
    )


# -- paths ---------------------------------------------------------------------------


def _record_file(run_dir: Path, record: Mapping[str, Any]) -> Path:
    files = record.get("files")
    name = files.get("attribution") if isinstance(files, Mapping) else None
    job = record.get("job_id", "?")
    if not name:
        raise InvalidInputError(
            f"job {job} has no attribution map (status {record.get('status', '?')!r}); only "
            "successful jobs of runs with outputs.attributions have one."
        )
    path = inside(run_dir, str(name), f"the map of job {job}")
    if not path.is_file():
        raise InvalidInputError(f"the map of job {job} ({path}) is missing; rerun the job.")
    return path


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".npz"):
        return "2d"
    if name.endswith((".nii", ".nii.gz")):
        return "3d"
    raise InvalidInputError(f"{path.name}: not a map written by esegeta run (.npz or .nii.gz).")


# -- 2D ------------------------------------------------------------------------------


def encode_map_2d(values: np.ndarray, *, channels: int = 1) -> bytes:
    """A 2D map as an ``EGM1`` payload (see the module docstring)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise InvalidInputError(f"a 2D map must be (H, W), got shape {arr.shape}.")
    arr = np.where(np.isfinite(arr), arr, 0.0)
    scale = float(np.abs(arr).max()) if arr.size else 0.0
    scaled = arr / scale if scale > 0 else arr
    header = {
        "height": int(arr.shape[0]),
        "width": int(arr.shape[1]),
        "dtype": "float16",
        "scale": scale if scale > 0 else 1.0,
        "min": float(arr.min()) if arr.size else 0.0,
        "max": float(arr.max()) if arr.size else 0.0,
        "channels": channels,
        "reduced": f"sum over {channels} channels" if channels > 1 else "",
    }
    text = json.dumps(header).encode("utf-8")
    body = scaled.astype("<f2").tobytes()
    return MAP_MAGIC + struct.pack("<I", len(text)) + text + body


def decode_map_2d(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """The header and the float32 map of an ``EGM1`` payload."""
    import numpy as np

    if data[:4] != MAP_MAGIC or len(data) < 8:
        raise InvalidInputError("not an EGM1 map payload (it must start with b'EGM1').")
    (n,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    count = header["height"] * header["width"]
    values = np.frombuffer(data, dtype="<f2", count=count, offset=8 + n).astype(np.float32)
    return header, values.reshape(header["height"], header["width"]) * np.float32(header["scale"])


def _png(image: np.ndarray) -> bytes:
    """A (C, H, W) float image as an 8-bit PNG (min-max scaled)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(image, dtype=np.float64)
    if arr.shape[0] not in (1, 3):
        arr = arr.mean(0, keepdims=True)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    pixels = np.round(arr * 255).astype(np.uint8)
    picture = (
        Image.fromarray(pixels[0])
        if pixels.shape[0] == 1
        else Image.fromarray(np.moveaxis(pixels, 0, -1))
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _read_map_2d(path: Path) -> tuple[np.ndarray, int]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arr = np.asarray(npz["attribution"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot read the map ({exc}).") from exc
    if arr.ndim == 3:
        return arr.sum(0), int(arr.shape[0])
    if arr.ndim == 2:
        return arr, 1
    raise InvalidInputError(f"{path}: a 2D map must be (C, H, W), got shape {arr.shape}.")


# -- 3D ------------------------------------------------------------------------------


def _block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    import numpy as np

    if factor == 1:
        return volume
    pad = [(0, (-s) % factor) for s in volume.shape]
    padded = np.pad(volume, pad, mode="edge")
    x, y, z = (s // factor for s in padded.shape)
    return padded.reshape(x, factor, y, factor, z, factor).mean(axis=(1, 3, 5))


def nifti_payload(
    volume: np.ndarray, affine: np.ndarray, max_axis: int = MAX_VOXELS_PER_AXIS
) -> tuple[bytes, Sampling]:
    """An (X, Y, Z) volume as gzipped uint8 NIfTI with slope/intercept, down-sampled by
    block means when an axis exceeds ``max_axis``."""
    import nibabel as nib
    import numpy as np

    arr = np.asarray(volume, dtype=np.float32)
    if arr.ndim != 3:
        raise InvalidInputError(f"a 3D payload needs an (X, Y, Z) volume, got {arr.shape}.")
    arr = np.where(np.isfinite(arr), arr, 0.0).astype(np.float32)
    factor = max(1, math.ceil(max(arr.shape) / max_axis))
    small = _block_mean(arr, factor).astype(np.float32)
    scaled = np.array(affine, dtype=np.float64)
    if factor > 1:
        step = np.diag([factor, factor, factor, 1.0])
        step[:3, 3] = (factor - 1) / 2.0  # the centre of the first block
        scaled = scaled @ step
    lo, hi = float(small.min()), float(small.max())
    slope = (hi - lo) / 255.0 if hi > lo else 1.0
    quantised = np.round((small - lo) / slope).clip(0, 255).astype(np.uint8)
    image = nib.Nifti1Image(quantised, scaled)
    image.header.set_xyzt_units("mm")
    raw = bytearray(image.to_bytes())
    # nibabel resets the scaling of integer data on write: set it in the header's bytes
    # (scl_slope and scl_inter, float32 at offsets 112 and 116 of a NIfTI-1 header)
    struct.pack_into(image.header.endianness + "ff", raw, 112, slope, lo)
    sampling = Sampling(tuple(arr.shape), tuple(small.shape), factor, max_axis)
    return gzip.compress(bytes(raw), compresslevel=6, mtime=0), sampling


def _read_map_3d(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    import nibabel as nib
    import numpy as np

    try:
        image = nib.load(str(path))
        arr = np.asarray(image.dataobj, dtype=np.float32)
    except (OSError, ValueError, TypeError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise InvalidInputError(f"{path}: cannot read the NIfTI map ({exc}).") from exc
    channels = 1
    if arr.ndim == 4:
        channels = int(arr.shape[-1])
        arr = arr.sum(-1)
    if arr.ndim != 3:
        raise InvalidInputError(f"{path}: a 3D map must be (X, Y, Z[, C]), got {arr.shape}.")
    return arr, np.asarray(image.affine), channels


# -- the job's input -----------------------------------------------------------------


def _input_spec(run_dir: Path) -> Any:
    from esegeta_core.config import InputSpec

    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        return InputSpec.model_validate(config["inputs"])
    except FileNotFoundError as exc:
        raise InvalidInputError(f"{path} is missing: not a run folder of esegeta run.") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{path}: cannot read its inputs section ({exc}).") from exc


def _load_item(run_dir: Path, record: Mapping[str, Any], root: Path) -> Any:
    """The model's view of the job's input item, (C, *spatial), and the Loaded file."""
    from esegeta_core.data_io import load_input

    name = record.get("input")
    if not name:
        raise InvalidInputError(f"job {record.get('job_id', '?')} names no input file.")
    path = inside(root, str(name), f"the input of job {record.get('job_id', '?')}")
    if not path.is_file():
        raise InvalidInputError(f"the input {path} of job {record.get('job_id', '?')} is gone.")
    loaded = load_input(path, _input_spec(run_dir))
    item = record.get("item", 0)
    item = item if isinstance(item, int) and 0 <= item < loaded.tensor.shape[0] else 0
    return loaded.tensor[item].numpy(), loaded


def _input_in_file_order(image: np.ndarray, loaded: Any) -> np.ndarray:
    """(C, D, H, W) model view -> (X, Y, Z) in the map file's order (as write_map)."""
    volume = image.mean(0)
    if loaded.nifti and loaded.depth_first:
        return volume.transpose(2, 1, 0)
    if not loaded.depth_first:
        return volume.transpose(1, 2, 0)
    return volume


# -- the public functions ------------------------------------------------------------


def viewer_spec(run_dir: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """What a viewer needs to know of a job's map, without the data: ``kind`` (2d, 3d),
    the job's names, the map's formats and, for 3D, the sampling of the payloads."""
    run_dir = Path(run_dir)
    path = _record_file(run_dir, record)
    kind = _kind(path)
    spec: dict[str, Any] = {
        "kind": kind,
        "job_id": str(record.get("job_id", "")),
        "method": str(record.get("method", "")),
        "title": str(record.get("title") or record.get("method") or ""),
        "target": record.get("target"),
        "input_format": MIME_PNG if kind == "2d" else MIME_NIFTI,
        "map_format": MIME_MAP2D if kind == "2d" else MIME_NIFTI,
        "max_voxels_per_axis": MAX_VOXELS_PER_AXIS,
    }
    if kind == "3d":
        import nibabel as nib

        shape = tuple(int(s) for s in nib.load(str(path)).shape[:3])
        factor = max(1, math.ceil(max(shape) / MAX_VOXELS_PER_AXIS))
        shown = tuple(math.ceil(s / factor) for s in shape)
        spec["sampling"] = Sampling(shape, shown, factor).as_dict()
    else:
        values, channels = _read_map_2d(path)
        spec["shape"] = list(values.shape)
        spec["channels"] = channels
    return spec


def map_payload(run_dir: Path, record: Mapping[str, Any]) -> tuple[bytes, str]:
    """The job's map for the viewer: an EGM1 payload (2D) or uint8 NIfTI (3D), and its
    media type."""
    path = _record_file(Path(run_dir), record)
    if _kind(path) == "2d":
        values, channels = _read_map_2d(path)
        return encode_map_2d(values, channels=channels), MIME_MAP2D
    volume, affine, _ = _read_map_3d(path)
    data, _ = nifti_payload(volume, affine)
    return data, MIME_NIFTI


def input_payload(
    run_dir: Path, record: Mapping[str, Any], *, root: Path | None = None
) -> tuple[bytes, str]:
    """The job's input as the model saw it: PNG (2D) or uint8 NIfTI on the map's grid (3D),
    and its media type. The input file must lie inside ``root`` (the web app passes its
    workspace; default the run folder's parent)."""
    run_dir = Path(run_dir)
    path = _record_file(run_dir, record)
    image, loaded = _load_item(run_dir, record, Path(root) if root else run_dir.parent)
    if _kind(path) == "2d":
        return _png(image), MIME_PNG
    if image.ndim != 4:
        raise InvalidInputError(f"{loaded.path}: a 3D map needs a 3D input, got {image.shape}.")
    data, _ = nifti_payload(_input_in_file_order(image, loaded), loaded.affine)
    return data, MIME_NIFTI

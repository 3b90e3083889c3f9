"""The viewers' payloads: they decode back to the maps, the 3D sampling is stated, and
no record can make them read a file outside the run folder or the workspace."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from esegeta_web.viewers import (
    MAX_VOXELS_PER_AXIS,
    input_payload,
    map_payload,
    static_asset,
    viewer_div,
    viewer_spec,
)
from PIL import Image

from esegeta_core.config import RunConfig
from esegeta_core.errors import EsegetaError
from esegeta_core.report.payloads import decode_map_2d, nifti_payload
from esegeta_core.runs import run
from esegeta_core.testing import tiny_input

nib = pytest.importorskip("nibabel")


def _run(base: Path, rank: int, input_name: str) -> tuple[Path, dict]:
    config = RunConfig.model_validate(
        {
            "name": f"r{rank}",
            "output_dir": str(base / "out"),
            "model": {
                "factory": "esegeta_core.testing.models:tiny_model",
                "kwargs": {"task": "segmentation", "rank": rank},
            },
            "inputs": {"paths": [input_name], "rank": rank, "scale": "none"},
            "task": "segmentation",
            "targets": [1],
            "methods": [{"method": "acme.times_input"}],
            "outputs": {"figures": False},
            "cpu_workers": 0,
            "progress": False,
        }
    )
    summary = run(config, base)
    (record,) = summary.records
    assert record["status"] == "ok", record
    return summary.run_dir, record


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("w2d")
    x = tiny_input("segmentation", 2, batch=1, size=16)
    np.save(base / "x.npy", x[0].numpy())
    return _run(base, 2, "x.npy")


@pytest.fixture(scope="module")
def run3d(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("w3d")
    x = tiny_input("segmentation", 3, batch=1, size=12)
    nib.save(nib.Nifti1Image(x[0, 0].numpy(), np.diag([2.0, 2.0, 3.0, 1.0])), base / "v.nii.gz")
    run_dir, record = _run(base, 3, "v.nii.gz")
    # a signed map with structure (the tiny model's map of this target may be all zero)
    path = run_dir / record["files"]["attribution"]
    stored = nib.load(path)
    values = np.random.default_rng(0).normal(size=stored.shape).astype(np.float32) * 1e-3
    nib.save(nib.Nifti1Image(values, stored.affine), path)
    return run_dir, record


def test_2d_map_payload_decodes_within_float16_tolerance(run2d):
    run_dir, record = run2d
    data, mime = map_payload(run_dir, record)
    assert mime == "application/vnd.esegeta.map2d" and data[:4] == b"EGM1"
    header, values = decode_map_2d(data)
    stored = np.load(run_dir / record["files"]["attribution"])["attribution"]
    expected = stored.sum(0) if stored.ndim == 3 else stored
    assert values.shape == expected.shape == (header["height"], header["width"])
    scale = np.abs(expected).max()
    assert scale > 0 and np.allclose(values, expected, atol=scale * 1e-3, rtol=0)
    assert len(data) < expected.size * 2 + 400  # compact: 2 bytes a pixel and a header


def test_small_maps_do_not_underflow_float16():
    from esegeta_core.report.payloads import encode_map_2d

    tiny = np.array([[1e-9, -3e-9], [0.0, 2e-9]])
    _, values = decode_map_2d(encode_map_2d(tiny))
    assert np.allclose(values, tiny, atol=3e-12, rtol=0) and values[0, 1] < 0


def test_2d_input_payload_is_a_png_of_the_map_size(run2d, tmp_path):
    run_dir, record = run2d
    data, mime = input_payload(run_dir, record, root=run_dir.parent.parent)
    assert mime == "image/png"
    picture = Image.open(__import__("io").BytesIO(data))
    spec = viewer_spec(run_dir, record)
    assert spec["kind"] == "2d" and list(picture.size[::-1]) == spec["shape"]


def full_input(run_dir: Path, record: dict) -> np.ndarray:
    """The input volume in the map file's order: NIfTI (X, Y, Z), as stored."""
    return np.asarray(nib.load(record["input"]).dataobj, dtype=np.float32)


def _nifti(data: bytes):
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def test_3d_payloads_are_uint8_nifti_on_the_same_grid(run3d):
    run_dir, record = run3d
    root = run_dir.parent.parent
    map_bytes, mime = map_payload(run_dir, record)
    input_bytes, mime_in = input_payload(run_dir, record, root=root)
    assert mime == mime_in == "application/gzip"
    shown, shown_input = _nifti(map_bytes), _nifti(input_bytes)
    stored = nib.load(run_dir / record["files"]["attribution"])
    assert shown.get_data_dtype() == np.uint8 and shown_input.get_data_dtype() == np.uint8
    assert shown.shape == shown_input.shape == stored.shape
    assert np.allclose(shown.affine, stored.affine)
    assert np.allclose(shown_input.affine, stored.affine)
    full = np.asarray(stored.dataobj, dtype=np.float32)
    # nibabel moves scl_slope / scl_inter from the header to the array proxy on reading
    slope, inter = float(shown.dataobj.slope), float(shown.dataobj.inter)
    assert slope > 0 and np.allclose(shown.get_fdata(), full, atol=slope * 0.51, rtol=0)
    assert inter == pytest.approx(full.min(), rel=1e-5)
    assert np.allclose(
        shown_input.get_fdata(),
        full_input(run_dir, record),
        atol=0.51 * float(shown_input.dataobj.slope),
        rtol=0,
    )
    spec = viewer_spec(run_dir, record)
    assert spec["kind"] == "3d" and spec["sampling"]["factor"] == 1
    assert "full resolution" in spec["sampling"]["text"]


def test_large_volumes_are_down_sampled_and_say_so():
    volume = np.zeros((MAX_VOXELS_PER_AXIS * 2 + 3, 10, 8), np.float32)
    volume[40:44, 4:6, 2:4] = 5.0
    data, sampling = nifti_payload(volume, np.diag([1.0, 1.0, 1.0, 1.0]))
    image = _nifti(data)
    assert sampling.factor == 3 and image.shape == (87, 4, 3) == sampling.shown
    assert image.header.get_zooms()[:3] == (3.0, 3.0, 3.0)
    assert np.allclose(image.affine[:3, 3], 1.0)  # the centre of the first 3x3x3 block
    assert abs(image.get_fdata().sum() * 27 - volume.sum()) < 0.02 * volume.sum()
    text = sampling.as_dict()["text"]
    assert "259x10x8 -> 87x4x3" in text and "3x3x3" in text and "128" in text


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "link/attribution.npz"])
def test_map_paths_outside_the_run_are_refused(run2d, tmp_path, name):
    run_dir, record = run2d
    link = run_dir / "link"
    if not link.exists():
        link.symlink_to(tmp_path, target_is_directory=True)
    np.savez(tmp_path / "attribution.npz", attribution=np.ones((1, 4, 4)))
    bad = {**record, "files": {"attribution": name}}
    for call in (viewer_spec, map_payload, input_payload):
        with pytest.raises(EsegetaError, match="outside") as info:
            call(run_dir, bad)
        assert isinstance(info.value, ValueError)


def test_an_input_outside_the_workspace_is_refused(run2d, tmp_path):
    run_dir, record = run2d
    with pytest.raises(ValueError, match="outside"):
        input_payload(run_dir, record, root=tmp_path)
    with pytest.raises(ValueError, match="outside"):
        input_payload(run_dir, {**record, "input": "../../../../etc/hostname"})


def test_a_failed_job_has_no_map(run2d):
    run_dir, record = run2d
    with pytest.raises(ValueError, match="no attribution map"):
        map_payload(run_dir, {**record, "status": "error", "files": {}})


def test_static_assets_and_the_div_are_safe(run3d):
    js, mime = static_asset("esegeta-viewer.js")
    assert b"esegeta-viewer" in js and mime.startswith("text/javascript")
    assert static_asset("niivue.umd.js")[0].startswith(b"(function(")
    with pytest.raises(ValueError, match="not a viewer asset"):
        static_asset("../__init__.py")
    spec = {**viewer_spec(*run3d), "title": '<b x="1">'}
    div = viewer_div(spec, "/m?a=1&b=2", "/x")
    assert 'data-kind="3d"' in div and "&lt;b x=&quot;1&quot;&gt;" in div and "&amp;b=2" in div
    assert "full resolution" in div
    json.dumps(spec)  # the spec is JSON for the page


def test_the_report_of_a_2d_run_gets_2d_viewers(run2d):
    from esegeta_core.report.html import report_from_run

    run_dir, record = run2d
    (entry,) = report_from_run(run_dir).maps
    assert entry.viewer is not None and entry.viewer.kind == "2d" and not entry.viewer.sampling
    assert entry.viewer.map == map_payload(run_dir, record)[0]
    assert entry.viewer.input.startswith(b"\x89PNG")

"""Run folder integrity: no stale resume, corrupt inputs and masks, unwritable job
folders, file permissions, and reports that stay inside their run folder."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
import torch

import esegeta_core as ec
from esegeta_core import runs
from esegeta_core.config import RunConfig
from esegeta_core.data_io import load_input, load_mask
from esegeta_core.errors import EsegetaError, RunConflictError, RunWriteError
from esegeta_core.files import atomic_path
from esegeta_core.runs import FingerprintCache, job_fingerprint, plan_jobs, run
from esegeta_core.testing import tiny_input

FACTORY = "esegeta_core.testing.models:tiny_model"


def _data(tmp_path: Path, **overrides) -> dict:
    data = {
        "name": "r",
        "output_dir": str(tmp_path / "out"),
        "model": {"factory": FACTORY, "kwargs": {"task": "segmentation", "rank": 3}},
        "inputs": {"paths": ["vol.nii.gz"], "rank": 3, "scale": "none"},
        "task": "segmentation",
        "targets": [0, 1, 2],
        "methods": [{"method": "acme.times_input"}],
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"figures": False, "report": False},
    }
    data.update(overrides)
    return data


def _config(tmp_path: Path, **overrides) -> RunConfig:
    return RunConfig.model_validate(_data(tmp_path, **overrides))


def _save_volume(path: Path, seed: int = 0) -> None:
    import nibabel as nib

    x = tiny_input("segmentation", 3, batch=1, size=12, seed=seed)
    nib.save(nib.Nifti1Image(x[0, 0].numpy(), np.diag([2.0, 2.0, 3.0, 1.0])), path)


def _truncate(path: Path, dest: Path | None = None) -> Path:
    """The first half of the bytes of ``path`` (in ``dest``, default in place)."""
    data = path.read_bytes()
    dest = dest or path
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _map(summary, index: int) -> np.ndarray:
    import nibabel as nib

    record = summary.records[index]
    return np.asarray(nib.load(summary.run_dir / record["files"]["attribution"]).dataobj)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    _save_volume(tmp_path / "vol.nii.gz")
    return tmp_path / "vol.nii.gz"


# -- resume never reuses stale results -----------------------------------------------


def test_changed_model_is_refused_then_forced_recomputes(tmp_path, volume):
    first = run(_config(tmp_path), tmp_path)
    assert first.skipped == 0 and all(r["status"] == "ok" for r in first.records)
    old_maps = [_map(first, i) for i in range(3)]
    old_config = (first.run_dir / "config.json").read_text()

    changed = _data(tmp_path)
    changed["model"]["kwargs"]["seed"] = 5  # another model: other classes where
    with pytest.raises(RunConflictError) as info:
        run(RunConfig.model_validate(changed), tmp_path)
    message = str(info.value)
    assert "model.kwargs.seed: (absent) -> 5" in message
    assert "force=True" in message and "--force" in message and "`name`" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, EsegetaError)
    assert (first.run_dir / "config.json").read_text() == old_config  # never replaced silently

    forced = run(RunConfig.model_validate(changed), tmp_path, force=True)
    assert forced.skipped == 0 and all(r["status"] == "ok" for r in forced.records)
    for i in range(3):
        assert not np.allclose(_map(forced, i), old_maps[i])
        assert forced.records[i]["fingerprint"] != first.records[i]["fingerprint"]
    assert (first.run_dir / "config.previous.json").read_text() == old_config
    assert "forced: config.json replaced" in (first.run_dir / "run.log").read_text()
    stored = json.loads((first.run_dir / "config.json").read_text())
    assert stored["model"]["kwargs"]["seed"] == 5
    # the same config again: everything finished, nothing recomputed
    again = run(RunConfig.model_validate(changed), tmp_path)
    assert again.skipped == 3


def test_changed_preprocessing_is_refused_fields_that_change_nothing_are_not(tmp_path, volume):
    run(_config(tmp_path), tmp_path)
    scaled = _data(tmp_path, inputs={"paths": ["vol.nii.gz"], "rank": 3, "scale": "minmax"})
    with pytest.raises(RunConflictError, match=r'inputs\.scale: "none" -> "minmax"'):
        run(RunConfig.model_validate(scaled), tmp_path)
    harmless = _data(
        tmp_path,
        progress=True,
        log_level="DEBUG",
        time_limit=600,
        outputs={"figures": False, "report": True},
        evaluation={"metrics": ["aopc"]},
    )
    again = run(RunConfig.model_validate(harmless), tmp_path)
    assert again.skipped == 3
    assert not (again.run_dir / "config.previous.json").exists()


def test_many_changes_are_listed_briefly(tmp_path, volume):
    run(_config(tmp_path), tmp_path)
    methods = [{"method": "acme.times_input", "params": {"scale": float(s)}} for s in range(1, 21)]
    with pytest.raises(RunConflictError) as info:
        run(_config(tmp_path, methods=methods), tmp_path)
    lines = str(info.value).splitlines()
    assert len(lines) <= 14 and any("more" in line for line in lines)


def test_changed_files_are_recomputed_without_a_config_change(tmp_path, volume):
    torch.save(ec.testing.tiny_model("segmentation", 3).state_dict(), tmp_path / "w.pt")
    mask = np.zeros((1, 12, 12, 12), dtype=np.float32)
    mask[0, :6] = 1
    np.save(tmp_path / "mask.npy", mask)
    model = {"factory": FACTORY, "kwargs": {"task": "segmentation", "rank": 3}}
    config = _config(
        tmp_path,
        model={**model, "checkpoint": "w.pt"},
        targets=[2, {"label": 2, "mask": "mask.npy"}],
    )
    first = run(config, tmp_path)
    assert [r["status"] for r in first.records] == ["ok", "ok"]
    before = [_map(first, i) for i in range(2)]

    _save_volume(volume, seed=1)  # new input data under the same name
    second = run(config, tmp_path)
    assert second.skipped == 0
    assert not np.allclose(_map(second, 0), before[0])

    mask[0, :6], mask[0, 6:] = 0, 1  # another region
    np.save(tmp_path / "mask.npy", mask)
    third = run(config, tmp_path)
    assert third.skipped == 1  # only the region job depends on the mask
    assert third.records[1]["fingerprint"] != second.records[1]["fingerprint"]

    torch.save(ec.testing.tiny_model("segmentation", 3, seed=5).state_dict(), tmp_path / "w.pt")
    fourth = run(config, tmp_path)
    assert fourth.skipped == 0  # other weights: every job


def test_records_without_a_fingerprint_are_recomputed(tmp_path, volume):
    first = run(_config(tmp_path), tmp_path)
    path = first.run_dir / "jobs" / first.records[0]["job_id"] / "record.json"
    record = json.loads(path.read_text())
    del record["fingerprint"]  # a record written before fingerprints existed
    path.write_text(json.dumps(record))
    second = run(_config(tmp_path), tmp_path)
    assert second.skipped == 2
    assert json.loads(path.read_text())["fingerprint"] == first.records[0]["fingerprint"]


def test_a_recomputed_job_drops_files_the_new_config_does_not_write(tmp_path, volume):
    first = run(_config(tmp_path, targets=[1]), tmp_path)
    folder = first.run_dir / "jobs" / first.records[0]["job_id"]
    assert (folder / "attribution.nii.gz").exists()
    no_maps = _config(tmp_path, targets=[1], outputs={"attributions": False, "figures": False})
    second = run(no_maps, tmp_path, force=True)
    assert second.records[0]["status"] == "ok" and second.records[0]["files"] == {}
    assert sorted(p.name for p in folder.iterdir()) == ["record.json"]


def test_job_fingerprint_covers_what_the_result_depends_on(tmp_path, volume, monkeypatch):
    cache = FingerprintCache()

    def fingerprint(**overrides) -> str:
        config = _config(tmp_path, **overrides)
        job = plan_jobs(config, tmp_path)[0]
        return job_fingerprint(config, job, tmp_path, cache=cache)

    base = fingerprint()
    assert len(base) == 64 and int(base, 16) >= 0
    assert fingerprint() == base
    model = {"factory": FACTORY, "kwargs": {"task": "segmentation", "rank": 3}}
    changed = {
        "model.kwargs": {"model": {**model, "kwargs": {**model["kwargs"], "seed": 3}}},
        "model.output": {"model": {**model, "output": "seg"}},
        "inputs.scale": {"inputs": {"paths": ["vol.nii.gz"], "rank": 3, "scale": "zscore"}},
        "inputs.depth_first": {
            "inputs": {"paths": ["vol.nii.gz"], "rank": 3, "scale": "none", "depth_first": False}
        },
        "wrapper": {"wrapper": {"name": "threshold"}},
        "method params": {"methods": [{"method": "acme.times_input", "params": {"scale": 3.0}}]},
        "method patches": {"methods": [{"method": "acme.times_input", "patches": False}]},
        "method sign": {"methods": [{"method": "acme.times_input", "sign": "absolute"}]},
        "target": {"targets": [2]},
        "seed": {"seed": 7},
        "amp": {"amp": "bf16"},
        "patches": {"patches": {"size": 8}},
        "reshape": {"reshape": "channels_first"},
        "auto_batch": {"auto_batch": True},
        "outputs.figures": {"outputs": {"figures": True}},
    }
    seen = {base}
    for what, overrides in changed.items():
        value = fingerprint(**overrides)
        assert value not in seen, what
        seen.add(value)
    for overrides in ({"progress": True}, {"devices": ["cpu"]}, {"time_limit": 5.0}):
        assert fingerprint(**overrides) == base
    assert cache.plugin_version("acme.times_input").startswith("esegeta-acme ")
    monkeypatch.setattr(runs, "_plugin_version", lambda method: "esegeta-acme 9.9")
    assert FingerprintCache().plugin_version("acme.times_input") == "esegeta-acme 9.9"
    config = _config(tmp_path)
    job = plan_jobs(config, tmp_path)[0]
    assert job_fingerprint(config, job, tmp_path) != base  # another plugin version
    monkeypatch.undo()
    monkeypatch.setattr(runs, "_distribution_version", lambda name: "0.0.0-other")
    assert job_fingerprint(config, job, tmp_path) != base  # another esegeta_core


def test_each_file_is_hashed_once_per_run(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 100)
    opened = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        if Path(file) == path:
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    cache = FingerprintCache()
    first = cache.file(path)
    assert cache.file(path) == first and len(opened) == 1
    path.write_bytes(b"b" * 101)
    assert cache.file(path) != first and len(opened) == 2
    assert cache.file(tmp_path / "missing").startswith("unreadable")


# -- corrupt and truncated files -------------------------------------------------------


@pytest.mark.parametrize("name", ["half.nii.gz", "half.nii"])
def test_truncated_nifti_is_refused_with_the_byte_counts(tmp_path, name):
    full = tmp_path / ("full" + name[4:])
    _save_volume(full)
    bad = _truncate(full, tmp_path / name)
    spec = _config(tmp_path).inputs
    with pytest.raises(ec.InvalidInputError, match=r"truncated: [\d,]+ of 7,264 bytes") as info:
        load_input(bad, spec)
    assert str(bad) in str(info.value)
    assert load_input(full, spec).tensor.shape == (1, 1, 12, 12, 12)


def test_nifti_without_the_gzip_end_is_refused(tmp_path, volume):
    data = volume.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[:-4])  # every voxel there, the gzip trailer gone
    with pytest.raises(ec.InvalidInputError, match="cut.nii.gz: truncated: the gzip stream"):
        load_input(bad, _config(tmp_path).inputs)


def test_truncated_nifti_fails_only_its_jobs(tmp_path, volume):
    _truncate(volume, tmp_path / "bad.nii.gz")
    summary = run(_config(tmp_path, inputs={"paths": ["*.nii.gz"], "rank": 3}), tmp_path)
    by_input = {}
    for record in summary.records:
        by_input.setdefault(Path(record["input"]).name, []).append(record)
    assert [r["status"] for r in by_input["vol.nii.gz"]] == ["ok"] * 3
    assert [r["status"] for r in by_input["bad.nii.gz"]] == ["error"] * 3
    for record in by_input["bad.nii.gz"]:
        assert "bad.nii.gz: truncated" in record["error"]
        assert record["item"] == 0 and record["job_id"].startswith("bad.nii.gz-0__")
    saved = json.loads((summary.run_dir / "summary.json").read_text())
    assert len(saved) == 6
    folder = summary.run_dir / "jobs" / by_input["bad.nii.gz"][0]["job_id"]
    assert json.loads((folder / "record.json").read_text())["status"] == "error"


def _png_config(tmp_path: Path) -> RunConfig:
    return _config(
        tmp_path,
        model={"factory": FACTORY, "kwargs": {"task": "classification", "rank": 2}},
        inputs={"paths": ["*.png"], "rank": 2},
        task="classification",
        targets=[0],
    )


def _save_png(path: Path, size: int = 64) -> None:
    from PIL import Image

    rgb = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def test_half_png_fails_only_its_jobs(tmp_path):
    _save_png(tmp_path / "a.png")
    _save_png(tmp_path / "b.png")
    _truncate(tmp_path / "b.png", tmp_path / "b_half.png")
    summary = run(_png_config(tmp_path), tmp_path)
    status = {Path(r["input"]).name: r for r in summary.records}
    assert status["a.png"]["status"] == "ok" and status["b.png"]["status"] == "ok"
    bad = status["b_half.png"]
    assert bad["status"] == "error"
    assert "b_half.png: not a valid PNG image" in bad["error"] and "truncated" in bad["error"]


def test_truncated_images_are_refused_even_when_pillow_is_told_to_load_them(tmp_path, monkeypatch):
    from PIL import ImageFile

    _save_png(tmp_path / "a.png")
    bad = _truncate(tmp_path / "a.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ec.InvalidInputError, match="a.png: not a valid PNG image"):
        load_input(bad, _png_config(tmp_path).inputs)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ec.InvalidInputError, match="text.jpg: not a valid JPG image"):
        load_input(tmp_path / "text.jpg", _png_config(tmp_path).inputs)


def test_corrupt_arrays_name_the_file(tmp_path):
    spec = _config(tmp_path).inputs.model_copy(update={"rank": 2})
    np.save(tmp_path / "a.npy", np.zeros((1, 16, 16), dtype=np.float32))
    _truncate(tmp_path / "a.npy")
    with pytest.raises(ec.InvalidInputError, match=r"a\.npy: not a valid \.npy array"):
        load_input(tmp_path / "a.npy", spec)
    torch.save(torch.zeros(1, 16, 16), tmp_path / "a.pt")
    _truncate(tmp_path / "a.pt")
    with pytest.raises(ec.InvalidInputError, match=r"a\.pt: not a readable \.pt file"):
        load_input(tmp_path / "a.pt", spec)
    with pytest.raises(ec.InvalidInputError, match=r"gone\.npy: no such file"):
        load_mask(tmp_path / "gone.npy", spec)


def test_plan_records_unreadable_inputs_with_stable_ids(tmp_path, volume):
    _truncate(volume, tmp_path / "bad.nii.gz")
    config = _config(tmp_path, inputs={"paths": ["*.nii.gz"], "rank": 3})
    jobs = plan_jobs(config, tmp_path)
    bad = [j for j in jobs if j.error]
    assert [j.job_id for j in bad] == [
        "bad.nii.gz-0__acme.times_input__c0",
        "bad.nii.gz-0__acme.times_input__c1",
        "bad.nii.gz-0__acme.times_input__c2",
    ]
    assert all("bad.nii.gz: truncated" in j.error for j in bad)
    assert len(jobs) == 6


def test_bad_masks_fail_only_the_jobs_that_use_them(tmp_path, volume):
    import nibabel as nib

    # noisy values: half of the compressed file still holds the whole header
    mask = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "good_mask.nii.gz")
    _truncate(tmp_path / "good_mask.nii.gz", tmp_path / "half_mask.nii.gz")
    config = _config(
        tmp_path,
        targets=[
            1,
            {"label": 1, "mask": "good_mask.nii.gz"},
            {"label": 1, "mask": "half_mask.nii.gz"},
            {"label": 1, "mask": "gone.nii.gz"},
        ],
    )
    summary = run(config, tmp_path)
    assert [r["status"] for r in summary.records] == ["ok", "ok", "error", "error"]
    assert "half_mask.nii.gz: truncated" in summary.records[2]["error"]
    assert "gone.nii.gz: no such file" in summary.records[3]["error"]


# -- one unwritable job folder ----------------------------------------------------------


@pytest.mark.parametrize("cpu_workers", [0, 1])
def test_a_file_in_place_of_a_job_folder_fails_only_that_job(tmp_path, volume, cpu_workers):
    config = _config(tmp_path, cpu_workers=cpu_workers)
    blocked = plan_jobs(config, tmp_path)[1].job_id
    jobs_dir = config.run_dir(tmp_path) / "jobs"
    jobs_dir.mkdir(parents=True)
    (jobs_dir / blocked).write_text("in the way")
    summary = run(config, tmp_path)
    assert [r["status"] for r in summary.records] == ["ok", "error", "ok"]
    error = summary.records[1]["error"]
    assert "RunWriteError" in error and str(jobs_dir / blocked) in error
    assert "its record could not be written" in error
    saved = json.loads((summary.run_dir / "summary.json").read_text())
    assert [r["status"] for r in saved] == ["ok", "error", "ok"]
    assert blocked in (summary.run_dir / "run.log").read_text()


def test_a_full_disk_fails_only_that_job(tmp_path, volume, monkeypatch):
    config = _config(tmp_path)
    full = config.run_dir(tmp_path) / "jobs" / plan_jobs(config, tmp_path)[1].job_id
    real_map, real_json = runs.write_map, runs.write_json

    def no_space(path: Path) -> OSError:
        return OSError(errno.ENOSPC, "No space left on device", str(path))

    def write_map(folder, *args, **kwargs):
        if folder == full:
            raise no_space(folder / "attribution.nii.gz")
        return real_map(folder, *args, **kwargs)

    def write_json(path, data):
        if path.parent == full:
            raise no_space(path)
        return real_json(path, data)

    monkeypatch.setattr(runs, "write_map", write_map)
    monkeypatch.setattr(runs, "write_json", write_json)
    summary = run(config, tmp_path)
    assert [r["status"] for r in summary.records] == ["ok", "error", "ok"]
    error = summary.records[1]["error"]
    assert error.startswith("RunWriteError: job ") and f"cannot write its files in {full}" in error
    assert "No space left on device" in error and "its record could not be written" in error
    assert issubclass(RunWriteError, OSError) and issubclass(RunWriteError, EsegetaError)


# -- permissions -----------------------------------------------------------------------


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_run_files_get_the_permissions_of_a_plain_open(tmp_path, volume, mask):
    with _umask(mask):
        config = _config(tmp_path, targets=[1], outputs={"figures": True, "report": True})
        summary = run(config, tmp_path)
    folder = summary.run_dir / "jobs" / summary.records[0]["job_id"]
    expected = 0o666 & ~mask
    for path in (
        folder / "record.json",
        folder / "attribution.nii.gz",
        folder / "figure.png",
        next((summary.run_dir / "figures").glob("*.png")),
        summary.run_dir / "report.html",
        summary.run_dir / "summary.json",
        summary.run_dir / "summary.csv",
        summary.run_dir / "config.json",
    ):
        assert _mode(path) == expected, path


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    path.chmod(0o640)
    with _umask(0o022), atomic_path(path) as tmp:
        tmp.write_text("[]")
    assert _mode(path) == 0o640 and path.read_text() == "[]"


# -- reports and overview figures stay inside the run folder ----------------------------


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_report_reads_no_file_outside_the_run_folder(tmp_path, caplog):
    from esegeta_core.report.html import report_from_run

    secret = tmp_path / "x.png"
    secret.write_bytes(_png_bytes())
    run_dir = tmp_path / "out" / "r"
    records = []
    for job_id, figure in (
        ("inside", "jobs/inside/figure.png"),
        ("absolute", str(secret)),
        ("dotdot", "../../x.png"),
        ("nul", "jobs/nul/fig\x00ure.png"),
    ):
        folder = run_dir / "jobs" / job_id
        folder.mkdir(parents=True)
        (folder / "figure.png").write_bytes(_png_bytes())
        record = {
            "job_id": job_id,
            "status": "ok",
            "input": "vol.nii.gz",
            "item": 0,
            "method": "acme.times_input",
            "target_requested": "c1",
            "target": 1,
            "files": {"figure": figure},
        }
        (folder / "record.json").write_text(json.dumps(record))
        records.append(record)
    (run_dir / "summary.json").write_text(json.dumps(records))
    (run_dir / "config.json").write_text(json.dumps({"name": "r"}))
    with caplog.at_level(logging.WARNING, logger="esegeta_core.report.reader"):
        data = report_from_run(run_dir)
    pngs = {m.anchor: m.png for m in data.inputs[0].maps}
    assert pngs["job-inside"] is not None
    assert pngs["job-absolute"] is None and pngs["job-dotdot"] is None and pngs["job-nul"] is None
    assert "outside the run folder" in caplog.text and "../../x.png" in caplog.text


def test_overview_figures_read_no_map_outside_the_run_folder(tmp_path, volume, caplog):
    config = _config(tmp_path, targets=[1], outputs={"figures": True, "report": False})
    first = run(config, tmp_path)
    record_path = first.run_dir / "jobs" / first.records[0]["job_id"] / "record.json"
    record = json.loads(record_path.read_text())
    outside = tmp_path / "elsewhere.nii.gz"
    outside.write_bytes((first.run_dir / record["files"]["attribution"]).read_bytes())
    record["files"]["attribution"] = str(outside)
    record_path.write_text(json.dumps(record))
    (first.run_dir / "figures" / "vol.nii.gz-0.png").unlink()
    with caplog.at_level(logging.WARNING, logger="esegeta_core.runs"):
        second = run(config, tmp_path)
    assert second.skipped == 1
    assert "outside the run folder" in caplog.text
    assert not (first.run_dir / "figures" / "vol.nii.gz-0.png").exists()


# -- one run per folder, no temporary file left, SIGTERM stops cleanly ----------------


def test_a_killed_runs_temporary_files_are_swept(tmp_path, volume):
    config = _config(tmp_path)
    first = run(config, tmp_path)
    job = first.run_dir / "jobs" / first.records[0]["job_id"]
    # what SIGKILL in the middle of atomic writes leaves behind
    stale = [
        job / ".record.json.k2j4x_1a.tmp",
        job / ".attribution.nii.gz.9qz8w7e6.tmp.nii.gz",
        first.run_dir / ".summary.csv.abcdefgh.tmp",
    ]
    for path in stale:
        path.write_text("half")
    keep = job / ".notes"
    keep.write_text("the user's own file")
    second = run(config, tmp_path)
    assert second.skipped == 3
    assert not any(path.exists() for path in stale)
    assert keep.exists()
    assert "removed 3 temporary files" in (first.run_dir / "run.log").read_text()


def test_a_second_run_of_a_folder_in_use_is_refused(tmp_path, volume):
    import fcntl

    config = _config(tmp_path)
    run_dir = config.run_dir(tmp_path)
    run_dir.mkdir(parents=True)
    with open(run_dir / runs.LOCK, "w") as held:
        held.write("esegeta run, pid 4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunConflictError, match="in use by esegeta run, pid 4242"):
            run(config, tmp_path)
        assert not (run_dir / "jobs").exists()
    assert all(r["status"] == "ok" for r in run(config, tmp_path).records)  # released


def test_sigterm_stops_an_in_process_run_resumably(tmp_path, volume):
    import signal
    import subprocess
    import sys
    import time

    import yaml

    helpers = Path(__file__).with_name("run_stress_models.py")
    pids = tmp_path / "pids"
    data = _data(
        tmp_path,
        model={
            "factory": f"{helpers}:slow_segmenter",
            "kwargs": {"pid_dir": str(pids), "delay": 0.3},
        },
        methods=[{"method": "acme.times_input", "params": {"scale": float(s)}} for s in (1, 2, 3)],
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    command = [sys.executable, "-m", "esegeta_core.cli", "run", str(path)]
    proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    jobs = tmp_path / "out" / "r" / "jobs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(jobs.glob("*/record.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    finished = len(list(jobs.glob("*/record.json")))
    assert 1 <= finished < 9
    log = (tmp_path / "out" / "r" / "run.log").read_text()
    assert "interrupted" in log
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"({finished} finished earlier)" in again.stdout


def test_progress_json_names_each_running_job_and_its_device(tmp_path, volume):
    import subprocess
    import sys
    import time

    import yaml

    helpers = Path(__file__).with_name("run_stress_models.py")
    model = {"factory": f"{helpers}:slow_segmenter", "kwargs": {"pid_dir": str(tmp_path / "p")}}
    model["kwargs"]["delay"] = 0.4
    data = _data(tmp_path, model=model, cpu_workers=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    command = [sys.executable, "-m", "esegeta_core.cli", "run", str(path)]
    proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL)
    progress = tmp_path / "out" / "r" / runs.PROGRESS
    seen: list[dict] = []
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            with suppress(OSError, ValueError):
                seen.append(json.loads(progress.read_text()))
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0
    busy = [p for p in seen if p["running"]]
    assert busy, "no snapshot showed a running job"
    assert all(set(p["running"].values()) <= {"cpu"} for p in busy)
    assert any(len(p["running"]) == 2 for p in busy)  # both workers at once
    final = json.loads(progress.read_text())
    assert final == {**final, "total": 3, "ok": 3, "failed": 0, "running": {}, "state": "finished"}
    assert all(p["ok"] + p["failed"] <= 3 for p in seen)

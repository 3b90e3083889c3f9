"""Config-driven runs: inputs of every format, records, summary, resume, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import esegeta_core as ec
from esegeta_core.cli import main
from esegeta_core.config import RunConfig, load_config
from esegeta_core.runs import plan_jobs, run
from esegeta_core.testing import tiny_input

FACTORY = "esegeta_core.testing.models:tiny_model"


def _config(tmp_path: Path, **overrides) -> RunConfig:
    data = {
        "name": "r",
        "output_dir": str(tmp_path / "out"),
        "model": {"factory": FACTORY, "kwargs": {"task": "segmentation", "rank": 3}},
        "inputs": {"paths": ["vol.nii.gz"], "rank": 3, "scale": "none"},
        "task": "segmentation",
        "targets": [1],
        "methods": [{"method": "acme.times_input"}],
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"figures": False},
    }
    data.update(overrides)
    return RunConfig.model_validate(data)


@pytest.fixture
def volume(tmp_path):
    import nibabel as nib

    x = tiny_input("segmentation", 3, batch=1, size=12)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(x[0, 0].numpy(), affine), tmp_path / "vol.nii.gz")
    return x, affine


def test_nifti_run_writes_maps_with_the_affine_and_records(tmp_path, volume):
    import nibabel as nib

    _, affine = volume
    summary = run(_config(tmp_path, targets=[1, 2]), tmp_path)
    assert [r["status"] for r in summary.records] == ["ok", "ok"]
    record = summary.records[0]
    assert record["method"] == "acme.times_input" and record["target"] == 1
    assert record["device"] == "cpu" and record["seconds"] >= 0
    written = nib.load(summary.run_dir / record["files"]["attribution"])
    assert np.allclose(written.affine, affine)
    # the map is in the file's own (X, Y, Z) order: compare with explain on the same data
    model = ec.testing.tiny_model("segmentation", 3)
    loaded = torch.from_numpy(np.asarray(nib.load(tmp_path / "vol.nii.gz").dataobj)).float()
    zyx = loaded.permute(2, 1, 0)[None, None]
    expected = ec.explain(model, zyx, "acme.times_input", 1, task="segmentation").attributions
    assert np.allclose(
        np.asarray(written.dataobj), expected[0, 0].permute(2, 1, 0).numpy(), atol=1e-5
    )
    assert (summary.run_dir / "summary.csv").read_text().startswith("job_id,status")
    assert len(json.loads((summary.run_dir / "summary.json").read_text())) == 2
    assert "finished: 2 ok" in (summary.run_dir / "run.log").read_text()


def test_second_run_resumes_and_failures_are_recorded(tmp_path, volume, demo):
    config = _config(
        tmp_path,
        methods=[
            {"method": "acme.times_input"},
            {"method": "acme.times_input", "params": {"scale": 2.0}},
            {"method": "demo.broken"},  # fails when it runs (bad params fail before any job)
        ],
    )
    first = run(config, tmp_path)
    statuses = [r["status"] for r in first.records]
    assert statuses == ["ok", "ok", "error"]
    assert "backend exploded" in first.records[2]["error"]
    ok_record = first.run_dir / "jobs" / first.records[0]["job_id"] / "record.json"
    stamp = ok_record.stat().st_mtime_ns
    second = run(config, tmp_path)
    assert second.skipped == 2
    assert ok_record.stat().st_mtime_ns == stamp
    assert [r["status"] for r in second.records] == ["ok", "ok", "error"]


def test_2d_images_and_arrays(tmp_path):
    from PIL import Image

    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    np.save(tmp_path / "batch.npy", tiny_input("classification", 2, batch=2).numpy())
    config = _config(
        tmp_path,
        model={"factory": FACTORY, "kwargs": {"task": "classification", "rank": 2}},
        inputs={"paths": ["img.png", "batch.npy"], "rank": 2, "batch_dim": True},
        task="classification",
        targets=None,
    )
    jobs = plan_jobs(config, tmp_path)
    assert [j.job_id.split("__")[0] for j in jobs] == ["img.png-0", "batch.npy-0", "batch.npy-1"]
    summary = run(config, tmp_path)
    assert all(r["status"] == "ok" for r in summary.records)
    data = np.load(summary.run_dir / summary.records[0]["files"]["attribution"])
    assert data["attribution"].shape == (3, 16, 16)
    assert summary.records[0]["target_requested"] == "pred"


def test_region_targets_from_mask_files(tmp_path, volume):
    mask = np.zeros((1, 12, 12, 12), dtype=np.float32)
    mask[0, :6] = 1
    np.save(tmp_path / "mask.npy", mask)
    config = _config(
        tmp_path,
        inputs={"paths": ["vol.nii.gz"], "rank": 3, "scale": "none", "depth_first": True},
        targets=[{"label": 1, "mask": "mask.npy"}],
    )
    summary = run(config, tmp_path)
    assert summary.records[0]["status"] == "ok", summary.records[0]["error"]
    assert summary.records[0]["target_requested"] == "r1-mask"


def test_worker_processes(tmp_path, volume):
    # spawning the two workers (each imports torch) is most of the time; the report,
    # written the same way with or without workers, would add a second: it is left out
    outputs = {"figures": False, "report": False}
    config = _config(tmp_path, targets=[0, 1, 2], cpu_workers=2, time_limit=120, outputs=outputs)
    summary = run(config, tmp_path)
    assert [r["status"] for r in summary.records] == ["ok"] * 3


def test_cli_validate_schema_and_run(tmp_path, volume, capsys):
    config = _config(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["validate", "--plan", str(path)]) == 0
    assert "valid (1 methods, 1 jobs)" in capsys.readouterr().out
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "methods" in schema["properties"] and "patches" in schema["properties"]
    assert main(["run", str(path)]) == 0
    assert "1 of 1 jobs ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"factory": "x"}, "methods": []}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.factory" in err and "inputs" in err and "methods" in err


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "model": {"factory": FACTORY},
                "inputs": {"paths": []},
                "methods": [{"method": "m", "parms": {}}],
            }
        )
    )
    with pytest.raises(ec.InvalidParamsError, match=r"methods\.0\.parms"):
        load_config(path)


def test_sigkill_halfway_loses_nothing_finished(tmp_path, volume):
    config = _config(
        tmp_path,
        targets=[0, 1, 2],
        methods=[
            {"method": "acme.times_input", "params": {"scale": float(s)}} for s in range(1, 9)
        ],
    )
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "esegeta_core.cli", "run", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobs_dir = config.run_dir() / "jobs"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(jobs_dir.glob("*/record.json"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.read_text() for p in jobs_dir.glob("*/record.json")}
    assert 3 <= len(finished) < 24, "the run should be killed halfway"
    for text in finished.values():
        assert json.loads(text)["status"] == "ok"  # complete JSON, never half-written
    summary = run(config, tmp_path)
    assert summary.skipped == len(finished)
    assert all(r["status"] == "ok" for r in summary.records) and len(summary.records) == 24
    for name, text in finished.items():
        assert (jobs_dir / name / "record.json").read_text() == text


def test_figures_per_job_and_per_input(tmp_path, volume):
    from PIL import Image

    summary = run(_config(tmp_path, targets=[2], outputs={"figures": True}), tmp_path)
    record = summary.records[0]
    with Image.open(summary.run_dir / record["files"]["figure"]) as img:
        assert img.size[0] > 100
    assert (summary.run_dir / "figures" / "vol.nii.gz-0.png").exists()


def test_convert_config_cli(tmp_path, capsys):
    old = {
        "model_nature": "Segmentation",
        "model_name": "unet",
        "dataset": "vessels",
        "test_run": "1",
        "is_3d": True,
        "isDepthFirst": True,
        "batch_dim_present": False,
        "default": False,
        "patch_size": 64,
        "patch_overlap": 16,
        "amp_enbled": False,
        "share_gpu_threads": 1,
        "timeout_enabled": True,
        "timeout_time": 600,
        "log_level": "INFO",
        "methods": [
            {
                "method_name": "Saliency",
                "library": "captum",
                "device_id": "cpu",
                "use": 1,
                "keywords": {},
            }
        ],
    }
    src = tmp_path / "old.json"
    src.write_text(json.dumps(old))
    assert main(["convert-config", str(src)]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "model.factory is a placeholder" in captured.err
    converted = yaml.safe_load((tmp_path / "old.yaml").read_text())
    assert converted["name"] == "unet_vessels_1" and converted["time_limit"] == 600
    assert converted["methods"][0]["method"] == "captum.saliency"


def test_records_and_report_say_which_layer_auto_chose(tmp_path, volume):
    pytest.importorskip("esegeta_cnnvis")
    from esegeta_core.report.html import report_from_run

    config = _config(tmp_path, methods=[{"method": "cnnvis.grad_cam"}])
    summary = run(config, tmp_path)
    record = summary.records[0]
    assert record["status"] == "ok", record["error"]
    assert record["params"]["layer"] == "encoder"
    assert record["notes"]["layer_auto"] == {"layer": "encoder"}
    entry = report_from_run(summary.run_dir).inputs[0].maps[0]
    assert entry.details["layer (auto)"] == "encoder"


def test_model_output_from_the_config_and_the_command_line(tmp_path, volume):
    factory = f"{Path(__file__).with_name('tests_helpers_outputs.py')}:dict_segmenter"
    # a worker process (the scheduler's path) reads the output the same way
    config = _config(
        tmp_path, model={"factory": factory, "kwargs": {}, "output": "seg"}, cpu_workers=1
    )
    assert config.model.output == "seg"
    data = config.model_dump(mode="json")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    summary = run(load_config(path), tmp_path)
    assert [r["status"] for r in summary.records] == ["ok"], summary.records
    data.update(name="r2", cpu_workers=0)
    data["model"]["output"] = None
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--model-output", "seg"]) == 0
    data["name"] = "r3"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 1  # two tensors, neither 'out' nor 'logits'


def test_a_runs_reshape_goes_only_to_methods_that_read_layers(tmp_path, volume):
    pytest.importorskip("esegeta_cnnvis")
    config = _config(
        tmp_path,
        methods=[{"method": "acme.times_input"}, {"method": "cnnvis.grad_cam"}],
        reshape="channels_first",
    )
    summary = run(config, tmp_path)
    assert [r["status"] for r in summary.records] == ["ok", "ok"], summary.records
    # explain() itself refuses it for a method that would ignore it
    x, _ = volume
    model = ec.testing.tiny_model("segmentation", 3)
    with pytest.raises(ec.InvalidParamsError, match="reads no layer's output"):
        ec.explain(model, x, "acme.times_input", 1, task="segmentation", reshape="tokens")

"""The executor contract: local by default, plugins' executors found through the
``esegeta_register_executors`` hook (the acme fixture's ``inline``), and runs made by
one executor resumed by another."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from esegeta_core.cli import main
from esegeta_core.config import RunConfig
from esegeta_core.config_checks import check_config
from esegeta_core.errors import InvalidParamsError
from esegeta_core.plugin.executors import executors, get_executor
from esegeta_core.runs import config_changes, run
from esegeta_core.runtime.executor import LocalExecutor
from esegeta_core.runtime.scheduler import run_jobs
from esegeta_core.testing import tiny_input

FACTORY = "esegeta_core.testing.models:tiny_model"
TIMING = {"seconds", "wall_seconds"}


def _config(tmp_path: Path, name: str, **overrides) -> RunConfig:
    data = {
        "name": name,
        "output_dir": str(tmp_path / "out"),
        "model": {"factory": FACTORY, "kwargs": {"task": "classification", "rank": 2}},
        "inputs": {"paths": ["x.npy"], "rank": 2, "scale": "none", "batch_dim": True},
        "targets": [0, 1],
        "methods": [{"method": "acme.times_input"}, {"method": "captum.saliency"}],
        "cpu_workers": 0,
        "progress": False,
        "outputs": {"figures": True, "report": False},
    }
    data.update(overrides)
    return RunConfig.model_validate(data)


@pytest.fixture
def inputs(tmp_path):
    np.save(tmp_path / "x.npy", tiny_input("classification", 2, batch=2, size=16).numpy())


def _records(run_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((run_dir / "jobs").glob("*/record.json")):
        record = json.loads(path.read_text())
        out[record["job_id"]] = {k: v for k, v in record.items() if k not in TIMING}
    return out


def _maps(run_dir: Path) -> dict[str, np.ndarray]:
    return {p.parent.name: np.load(p)["attribution"] for p in (run_dir / "jobs").glob("*/*.npz")}


def test_executors_lists_local_first_and_the_plugins(capsys):
    found = executors(refresh=True)
    assert next(iter(found)) == "local" and found["local"] is LocalExecutor
    assert "inline" in found  # from the acme fixture plugin's esegeta_register_executors
    out = io.StringIO()
    assert main(["executors"], out=out) == 0
    text = out.getvalue()
    assert "local: worker processes" in text and "inline:" in text
    assert "reverse (bool, default False): Run the jobs last to first." in text


def test_unknown_executor_and_bad_options_are_refused_before_any_job(tmp_path, inputs):
    with pytest.raises(InvalidParamsError, match="unknown executor 'dask'.*installed: local"):
        get_executor("dask")
    with pytest.raises(InvalidParamsError, match="executor 'inline': invalid options: address"):
        get_executor("inline", {"address": "auto"})
    config = _config(tmp_path, "bad", executor={"name": "inline", "options": {"reverse": "x"}})
    problems = check_config(config, tmp_path)
    assert any("executor 'inline': invalid options: reverse" in p for p in problems)
    with pytest.raises(InvalidParamsError, match="nothing was run"):
        run(config, tmp_path)
    assert not (tmp_path / "out" / "bad" / "jobs").exists()


def test_a_cluster_executor_does_not_check_this_hosts_devices(tmp_path, inputs):
    local = _config(tmp_path, "gpu", devices=["cuda:7"])
    inline = _config(tmp_path, "gpu", devices=["cuda:7"], executor={"name": "inline"})
    assert any("cuda:7" in p for p in check_config(local, tmp_path, plan=True))
    assert not any("cuda:7" in p for p in check_config(inline, tmp_path, plan=True))


def test_inline_run_equals_local_run_and_each_resumes_the_other(tmp_path, inputs):
    local = run(_config(tmp_path, "a"), tmp_path)
    inline = run(_config(tmp_path, "b", executor={"name": "inline"}), tmp_path)
    assert [r["status"] for r in inline.records] == ["ok"] * 8
    a, b = _records(local.run_dir), _records(inline.run_dir)
    assert a == b  # same files, params, targets, fingerprints, apart from timing
    maps_a, maps_b = _maps(local.run_dir), _maps(inline.run_dir)
    assert maps_a.keys() == maps_b.keys() and len(maps_a) == 8
    for key in maps_a:
        np.testing.assert_allclose(maps_a[key], maps_b[key], rtol=1e-6, atol=1e-7)
    assert {p.name for p in (inline.run_dir / "jobs").iterdir()} == set(b)
    figures = sorted((inline.run_dir / "jobs").glob("*/figure.png"))
    assert len(figures) == 8 and all(f.read_bytes()[:4] == b"\x89PNG" for f in figures)
    # the executor does not change results: each run folder resumes with the other one
    again = run(_config(tmp_path, "b"), tmp_path)
    assert again.skipped == 8
    again = run(_config(tmp_path, "a", executor={"name": "inline"}), tmp_path)
    assert again.skipped == 8
    assert (
        config_changes(
            _config(tmp_path, "a").model_dump(mode="json"),
            _config(tmp_path, "a", executor={"name": "inline"}).model_dump(mode="json"),
        )
        == []
    )


def test_store_replaces_stale_files_and_refuses_foreign_ones(tmp_path, inputs):
    from esegeta_core.errors import RunWriteError
    from esegeta_core.runs import RunWorker, plan_jobs
    from esegeta_core.runtime.executor import JobFiles

    config = _config(tmp_path, "s")
    worker = RunWorker(config, tmp_path, config.run_dir(tmp_path))
    job = plan_jobs(config, tmp_path)[0]
    files = worker.compute(job, "cpu")
    assert set(files.files) == {"attribution.npz", "figure.png"}
    assert not config.run_dir(tmp_path).exists()  # compute writes nothing in the run folder
    folder = config.run_dir(tmp_path) / "jobs" / job.job_id
    folder.mkdir(parents=True)
    (folder / "attribution.nii.gz").write_bytes(b"old")
    record = worker.store(job, files)
    assert sorted(p.name for p in folder.iterdir()) == [
        "attribution.npz",
        "figure.png",
        "record.json",
    ]
    assert record["files"]["attribution"] == f"jobs/{job.job_id}/attribution.npz"
    with pytest.raises(RunWriteError, match="unexpected files"):
        worker.store(job, JobFiles(record, {"../evil.py": b""}))


def test_cli_executor_flag_overrides_the_config(tmp_path, inputs, capsys):
    config = _config(tmp_path, "cli", outputs={"figures": False, "report": False}, targets=[0])
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    out = io.StringIO()
    assert main(["run", str(path), "--executor", "inline"], out=out) == 0
    log = (config.run_dir(tmp_path) / "run.log").read_text()
    assert "on the inline executor" in log
    assert main(["run", str(path), "--executor", "inline", "--address", "auto"], out=out) != 0
    assert "executor 'inline': invalid options: address" in capsys.readouterr().err


def test_cancel_stops_the_local_scheduler_like_ctrl_c():
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    jobs = [(f"j{i}", 0.4) for i in range(20)]
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt, match="cancelled"):
        run_jobs(jobs, time.sleep, devices=["cpu"], progress=False, cancel=cancel)
    assert time.monotonic() - start < 8  # not the 20 x 0.4 s of every job

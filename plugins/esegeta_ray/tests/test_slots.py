"""Devices to Ray resources, the executor's discovery and options (no cluster needed)."""

from __future__ import annotations

import io

import pytest
from esegeta_ray import RayExecutor, RayOptions
from esegeta_ray.actor import _with_local_model, model_files
from esegeta_ray.slots import plan_slots

from esegeta_core.cli import main
from esegeta_core.config import RunConfig
from esegeta_core.errors import DeviceUnavailableError, InvalidParamsError
from esegeta_core.plugin.executors import executors, get_executor


def _config(**extra) -> RunConfig:
    data = {
        "model": {"factory": "esegeta_core.testing.models:tiny_model"},
        "inputs": {"paths": ["x.npy"]},
        "methods": [{"method": "captum.saliency"}],
    }
    data.update(extra)
    return RunConfig.model_validate(data)


def test_auto_takes_every_gpu_times_jobs_per_gpu_as_fractional_gpus():
    slots = plan_slots(_config(jobs_per_gpu=4), RayOptions(), {"GPU": 16.0, "CPU": 128.0})
    assert len(slots) == 64
    assert {(s.kind, s.num_gpus, s.num_cpus, s.device) for s in slots} == {
        ("gpu", 0.25, 0.0, "cuda:0")
    }


def test_auto_without_gpus_takes_cpu_workers_slots_of_cpus_per_slot():
    slots = plan_slots(_config(cpu_workers=3), RayOptions(cpus_per_slot=2.5), {"CPU": 8.0})
    assert [(s.kind, s.num_cpus, s.threads, s.device) for s in slots] == [
        ("cpu", 2.5, 2, "cpu")
    ] * 3


def test_a_device_list_is_a_count_of_gpus_and_cpu_slots():
    config = _config(devices=["cuda:0", "cuda:3", "cpu"], jobs_per_gpu=2)
    slots = plan_slots(config, RayOptions(), {"GPU": 4.0, "CPU": 4.0})
    assert sorted(s.kind for s in slots) == ["cpu", "gpu", "gpu", "gpu", "gpu"]


def test_requests_the_cluster_cannot_hold_are_refused_before_starting():
    with pytest.raises(DeviceUnavailableError, match="asks for 2 GPU.*the Ray cluster has 0"):
        plan_slots(_config(devices=["cuda", "cuda"]), RayOptions(), {"CPU": 8.0})
    with pytest.raises(DeviceUnavailableError, match="need 12 CPUs.*has 8"):
        plan_slots(_config(cpu_workers=6), RayOptions(cpus_per_slot=2), {"CPU": 8.0})
    with pytest.raises(InvalidParamsError, match=r"devices \['mps'\] cannot run on Ray"):
        plan_slots(_config(devices=["mps"]), RayOptions(), {"CPU": 8.0})


def test_the_plugin_registers_the_executor_and_checks_its_options():
    assert executors(refresh=True)["ray"] is RayExecutor
    assert get_executor("ray", {"address": "auto", "cpus_per_slot": 2}).options.cpus_per_slot == 2
    with pytest.raises(InvalidParamsError, match="invalid options: cpus_per_slot"):
        get_executor("ray", {"cpus_per_slot": 0})
    out = io.StringIO()
    main(["methods", "--plugin", "ray"], out=out)
    assert "Plugin ray provides no methods; it provides the executor(s) ray." in out.getvalue()


def test_model_files_are_shipped_and_used_from_the_actors_copy(tmp_path):
    import torch

    (tmp_path / "net.py").write_text(
        "import torch\ndef make():\n    return torch.nn.Linear(2, 3)\n"
    )
    torch.save(torch.nn.Linear(2, 3).state_dict(), tmp_path / "w.pt")
    config = _config(model={"factory": "net.py:make", "checkpoint": "w.pt"})
    shipped = model_files(config, tmp_path)
    assert set(shipped) == {"factory", "checkpoint"}
    elsewhere = tmp_path / "node"
    elsewhere.mkdir()
    local = _with_local_model(config, shipped, elsewhere)
    assert local.model.factory == f"{elsewhere / 'net.py'}:make"
    assert local.model.checkpoint == elsewhere / "w.pt"
    from esegeta_core.runs import build_model

    model = build_model(local, tmp_path / "missing-base")  # works without the driver's files
    assert isinstance(model, torch.nn.Linear)

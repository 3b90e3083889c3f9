"""One real two-node Ray cluster on this machine, shared by the tests of this folder.

``ray start --head`` and ``ray start --address`` each run their own raylet with their own
resources (``head_node`` / ``second_node``), each in a process group of its own so the
second node can be killed whole. Node deaths are detected within about 2 s (health
checks every 0.5 s). The tests skip, saying why, where ``ray`` is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

HERE = Path(__file__).parent
HEALTH = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_timeout_ms": "500",
    "RAY_DISABLE_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",  # a throw-away local cluster: no token
}
RAY_PROCESS_NAMES = ("raylet", "gcs_server", "plasma_store")


def _ray_binary() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        pytest.skip("the ray command is not installed (pip install esegeta-ray)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_processes() -> list[str]:
    """Every Ray process on this machine (raylets, GCS, workers), as 'pid name'."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            name = proc.info["name"] or ""
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if name in RAY_PROCESS_NAMES or name.startswith("ray::") or cmd.startswith("ray::"):
            found.append(f"{proc.info['pid']} {name or cmd[:40]}")
    return found


def _actor_processes() -> list[str]:
    """The esegeta actors still alive on this machine."""
    return [p for p in _ray_processes() if "SlotActor" in p]


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    groups: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: Path = Path()

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.groups[name] = subprocess.Popen(
            [_ray_binary(), "start", "--block", "--disable-usage-stats", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive_nodes(self) -> int:
        script = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, self.address],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0

    def kill_node(self, name: str) -> None:
        """SIGKILL a node's whole process group: its raylet and its workers."""
        proc = self.groups.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        subprocess.run(
            [_ray_binary(), "stop", "--force"], env=self.env, capture_output=True, timeout=120
        )
        for proc in self.groups.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.groups.clear()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    pytest.importorskip("ray", reason="ray is not installed (pip install esegeta-ray)")
    pytest.importorskip("psutil", reason="the Ray tests check processes with psutil")
    if _ray_processes():
        pytest.skip(f"another Ray is running on this machine: {_ray_processes()[:3]}")
    port = _free_port()
    # Ray refuses a temp dir inside a virtualenv, which nox's TMPDIR is; and its sockets
    # live there, so the path must stay short
    temp = tempfile.mkdtemp(prefix="esegeta-ray-", dir="/tmp")
    env = {**os.environ, **HEALTH, "TMPDIR": temp, "RAY_TMPDIR": temp}
    env.pop("RAY_ADDRESS", None)
    made = Cluster(f"127.0.0.1:{port}", env, logs=tmp_path_factory.mktemp("ray-logs"))
    try:
        made.start(
            "head",
            [
                "--head",
                f"--temp-dir={temp}",
                f"--port={port}",
                "--num-cpus=2",
                "--resources=" + json.dumps({"head_node": 10}),
                "--include-dashboard=false",
            ],
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        made.start(
            "second",
            [
                f"--address={made.address}",
                "--num-cpus=2",
                "--resources=" + json.dumps({"second_node": 10}),
            ],
        )
        while time.monotonic() < deadline and made.alive_nodes() < 2:
            time.sleep(0.5)
        if made.alive_nodes() < 2:
            logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in made.logs.iterdir())
            pytest.fail(f"the two-node Ray cluster did not start:\n{logs}")
        yield made
    finally:
        made.stop()
        shutil.rmtree(temp, ignore_errors=True)


def _write_inputs(folder: Path, values: list[float | None]) -> None:
    """One 3D input per value: a seeded volume whose first voxel is the value (None:
    left as drawn), as ``v{i}.npy``."""
    from esegeta_core.testing import tiny_input

    for i, value in enumerate(values):
        x = tiny_input("classification", 3, batch=1, size=8, seed=i).numpy()
        if value is not None:
            x.reshape(-1)[0] = value
        np.save(folder / f"v{i}.npy", x)


def _write_config(folder: Path, name: str, methods: list[str], **overrides) -> Path:
    """A 3D config on :mod:`ray_models` (copied next to it, so the factory is a file the
    actors get from the driver), written as YAML; returns its path."""
    shutil.copy(HERE / "ray_models.py", folder / "ray_models.py")
    data = {
        "name": name,
        "output_dir": "out",
        "model": {"factory": "ray_models.py:sentinel_model"},
        "inputs": {"paths": ["v*.npy"], "rank": 3, "scale": "none", "batch_dim": True},
        "targets": [0, 1],
        "methods": [{"method": m} for m in methods],
        "cpu_workers": 4,
        "progress": False,
        "outputs": {"figures": True, "report": False},
    }
    data.update(overrides)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# The helpers as fixtures: test modules never import conftest (one convention for every
# plugin's tests), they ask for these by name.


@pytest.fixture
def ray_processes() -> Callable[[], list[str]]:
    """Every Ray process on this machine, as 'pid name' (a function to call)."""
    return _ray_processes


@pytest.fixture
def actor_processes() -> Callable[[], list[str]]:
    """The esegeta actors still alive on this machine (a function to call)."""
    return _actor_processes


@pytest.fixture
def write_inputs() -> Callable[[Path, list[float | None]], None]:
    """Writes one seeded 3D input per value into a folder (see ``_write_inputs``)."""
    return _write_inputs


@pytest.fixture
def write_config() -> Callable[..., Path]:
    """Writes a 3D run config on the Ray test models (see ``_write_config``)."""
    return _write_config

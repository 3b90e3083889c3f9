"""The actor behind one device slot: it keeps the model loaded between jobs.

It is a plain class; the executor wraps it with ``ray.remote`` and the slot's resources.
The model's factory file and checkpoint come from the driver (no shared file system
needed); inputs and masks come through the object store, once per actor and file.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from esegeta_core.runs import RunWorker

Shipped = dict[str, tuple[str, bytes]]
"""``{"factory" | "checkpoint": (file name, bytes)}``: model files sent by the driver."""


class SlotActor:
    """Runs jobs one at a time on its device; returns results in the local scheduler's
    format ``(status, output, seconds, error)``."""

    def __init__(self, worker: RunWorker, device: str, threads: int, shipped: Shipped) -> None:
        # only keep the arguments: failures are reported by ready(), not as a dead actor
        self.worker, self.device, self.threads, self.shipped = worker, device, threads, shipped
        self.where = ""
        self.scratch: tempfile.TemporaryDirectory[str] | None = None

    def ready(self) -> dict[str, Any]:
        """Set up the device, write the shipped model files, load the model; say where."""
        import ray
        import torch

        torch.set_num_threads(max(1, self.threads))
        if self.shipped:
            self.scratch = tempfile.TemporaryDirectory(prefix="esegeta-ray-model-")
            self.worker.config = _with_local_model(
                self.worker.config, self.shipped, Path(self.scratch.name)
            )
        self.worker.model(self.device)
        node = ray.get_runtime_context().get_node_id()
        ip = ray.util.get_node_ip_address()
        self.where = f"{ip} node {node[:12]} pid {os.getpid()}"
        return {"node": node, "ip": ip, "pid": os.getpid()}

    def run(
        self, job: Any, files: list[tuple[str, str, list[Any]]], write: bool
    ) -> tuple[str, Any, float, str]:
        """Compute one job; ``files`` are ``(kind, key, [ObjectRef])`` (the ref boxed in
        a list so that Ray does not fetch it when this actor holds the file already)."""
        import ray

        start = time.perf_counter()
        try:
            for kind, key, box in files:
                if not self.worker.has(kind, key):
                    self.worker.provide(kind, key, ray.get(box[0]))
            if write:
                out: Any = self.worker(job, self.device)
                out["worker"] = self.where
            else:
                out = self.worker.compute(job, self.device)
                out.record["worker"] = self.where
            return ("ok", out, time.perf_counter() - start, "")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a record
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            return ("error", None, time.perf_counter() - start, detail)


def _with_local_model(config: Any, shipped: Shipped, folder: Path) -> Any:
    """The config with its factory file and checkpoint replaced by copies in ``folder``."""
    model = config.model
    update: dict[str, Any] = {}
    if "factory" in shipped:
        name, data = shipped["factory"]
        (folder / name).write_bytes(data)
        update["factory"] = f"{folder / name}:{model.factory.rpartition(':')[2]}"
    if "checkpoint" in shipped:
        name, data = shipped["checkpoint"]
        (folder / name).write_bytes(data)
        update["checkpoint"] = folder / name
    return config.model_copy(update={"model": model.model_copy(update=update)})


def model_files(config: Any, base: Path) -> Shipped:
    """The model's factory file (when the factory is a ``path.py:function``) and its
    checkpoint, read on the driver to be sent to the actors."""
    shipped: Shipped = {}
    module = config.model.factory.rpartition(":")[0]
    if module.endswith(".py"):
        path = Path(module) if Path(module).is_absolute() else base / module
        shipped["factory"] = (path.name, path.read_bytes())
    if config.model.checkpoint is not None:
        path = config.model.checkpoint
        path = path if path.is_absolute() else base / path
        shipped["checkpoint"] = (path.name, path.read_bytes())
    return shipped

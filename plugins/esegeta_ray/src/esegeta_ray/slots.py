"""From a run config's devices to Ray resources: one long-lived actor per slot.

``devices: auto`` takes every GPU of the cluster, ``jobs_per_gpu`` slots each (each slot
asks Ray for ``1 / jobs_per_gpu`` GPU), or, on a cluster without GPUs, ``cpu_workers``
CPU slots. A device list is read as a count: each ``cuda``/``cuda:N`` entry is one GPU
anywhere on the cluster (``jobs_per_gpu`` slots), each ``cpu`` entry one CPU slot. A CPU
slot reserves ``cpus_per_slot`` cores and uses as many torch threads. A request the
cluster cannot hold is refused before any actor starts (it would wait for ever).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from esegeta_core.config import RunConfig
from esegeta_core.errors import DeviceUnavailableError, InvalidParamsError
from esegeta_ray.options import RayOptions


@dataclass(frozen=True)
class SlotSpec:
    """One actor's resources and the device it computes on."""

    kind: str  # "cpu" or "gpu"
    num_cpus: float
    num_gpus: float
    threads: int

    @property
    def device(self) -> str:
        """The torch device inside the actor (Ray shows an actor only its own GPU)."""
        return "cuda:0" if self.kind == "gpu" else "cpu"


def plan_slots(
    config: RunConfig, options: RayOptions, resources: Mapping[str, float]
) -> list[SlotSpec]:
    """The slots of a run on a cluster with ``resources`` (``ray.cluster_resources()``)."""
    cluster_gpus = int(resources.get("GPU", 0))
    cluster_cpus = float(resources.get("CPU", 0))
    per_gpu = config.jobs_per_gpu
    gpu = SlotSpec("gpu", 0.0, 1.0 / per_gpu, 1)
    cpu = SlotSpec("cpu", options.cpus_per_slot, 0.0, max(1, math.floor(options.cpus_per_slot)))
    if config.devices == "auto":
        if cluster_gpus:
            return [gpu] * (cluster_gpus * per_gpu)
        slots = [cpu] * max(1, config.cpu_workers)
    else:
        unknown = sorted({d for d in config.devices if d != "cpu" and not d.startswith("cuda")})
        if unknown:
            raise InvalidParamsError(
                f"executor ray: devices {unknown} cannot run on Ray (it schedules GPUs and "
                "CPUs only); use 'cuda' or 'cpu' entries, or devices: auto"
            )
        gpus = sum(1 for d in config.devices if d.startswith("cuda"))
        if gpus > cluster_gpus:
            raise DeviceUnavailableError(
                f"executor ray: the config asks for {gpus} GPU(s) (devices {config.devices}), "
                f"but the Ray cluster has {cluster_gpus}; start nodes with GPUs, or list "
                "fewer 'cuda' devices (or devices: auto)"
            )
        slots = [gpu] * (gpus * per_gpu) + [cpu] * config.devices.count("cpu")
    wanted = sum(s.num_cpus for s in slots)
    if wanted > cluster_cpus:
        raise DeviceUnavailableError(
            f"executor ray: {sum(1 for s in slots if s.kind == 'cpu')} CPU slot(s) x "
            f"{options.cpus_per_slot:g} core(s) need {wanted:g} CPUs, but the Ray cluster has "
            f"{cluster_cpus:g}; lower cpu_workers or executor.options.cpus_per_slot, or add "
            "nodes"
        )
    return slots

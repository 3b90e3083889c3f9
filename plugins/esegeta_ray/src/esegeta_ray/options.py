"""The Ray executor's options (the run config's ``executor.options``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RayOptions(BaseModel):
    """How a run uses a Ray cluster. Devices map onto Ray resources: see the README's
    "Running on a cluster"."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description="The cluster: 'auto' (the one `ray start` runs on this machine), "
        "'HOST:PORT' of its head, or 'ray://HOST:10001' (Ray Client); null starts a Ray "
        "instance on this machine for the run (or joins RAY_ADDRESS when set).",
    )
    cpus_per_slot: float = Field(
        1.0, gt=0, description="Cores each CPU slot reserves (its torch threads)."
    )
    max_retries: int = Field(
        2,
        ge=0,
        description="Times a job whose actor or node was lost is retried on another slot "
        "before it is recorded as crashed.",
    )
    shared_storage: bool = Field(
        False,
        description="Workers write each job's files straight into the run folder (every "
        "node mounts it at the same path) instead of sending them to the driver.",
    )
    start_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a slot may take to be placed on a node and load the model; "
        "a slot past it is given up (the run goes on with the others).",
    )
    runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime_env of the actors (env_vars, pip, working_dir...)."
    )
    namespace: str | None = Field(None, description="Ray namespace of the run's actors.")

"""esegeta-ray: ``esegeta run CONFIG --executor ray``, a run's jobs on a Ray cluster.

Importing this package does not import Ray: the executor imports it when a run starts.
"""

from __future__ import annotations

from esegeta_core import hookimpl
from esegeta_core.runtime.executor import Executor
from esegeta_ray.executor import RayExecutor
from esegeta_ray.options import RayOptions

__all__ = ["RayExecutor", "RayOptions", "esegeta_register_executors"]


@hookimpl
def esegeta_register_executors() -> list[type[Executor]]:
    """The Ray executor."""
    return [RayExecutor]

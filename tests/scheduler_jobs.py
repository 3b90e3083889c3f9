"""Runners and a parent script for tests/test_scheduler_hardening.py.

Spawned workers import runners by module name, so they live here (tests/ is on the path
of pytest and, through PYTHONPATH, of the parent processes the tests start).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


def marked_job(job: dict[str, Any], device: str) -> dict[str, Any]:
    """Write ``<dir>/<name>.started`` (this worker's pid), sleep, write ``<name>.finished``."""
    folder = Path(job["dir"])
    (folder / f"{job['name']}.started").write_text(str(os.getpid()))
    time.sleep(float(job.get("sleep", 0)))
    (folder / f"{job['name']}.finished").write_text("")
    return {"pid": os.getpid()}


class FailsToLoad:
    """A runner whose unpickling raises: a worker that cannot load its runner."""

    def __init__(self) -> None:
        self.model = "secret_model"  # pickle calls __setstate__ only for a non-empty state

    def __call__(self, job: Any, device: str) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        raise ImportError(f"No module named {state['model']!r}")


def parent_main(folder: str, first_sleep: float, in_thread: bool) -> None:
    """A parent process: 4 jobs on 1 CPU worker; the first sleeps ``first_sleep`` s, the
    others a minute. ``<dir>/delivered`` lists the results given to on_result; an
    interrupt writes ``<dir>/interrupted`` and exits with 130."""
    from esegeta_core.runtime.scheduler import run_jobs

    out = Path(folder)
    jobs = [
        (f"j{i}", {"dir": folder, "name": f"j{i}", "sleep": first_sleep if i == 0 else 60})
        for i in range(4)
    ]

    def on_result(result: Any) -> None:
        with open(out / "delivered", "a") as fh:
            fh.write(f"{result.job_id} {result.status}\n")

    def run() -> None:
        run_jobs(
            jobs,
            marked_job,
            devices=["cpu"],
            progress=False,
            on_result=on_result,
            threads_per_worker=1,
        )

    try:
        if in_thread:  # run_jobs off the main thread: signals keep their default action
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            thread.join()
        else:
            run()
    except KeyboardInterrupt as exc:
        (out / "interrupted").write_text(str(exc))
        sys.exit(130)

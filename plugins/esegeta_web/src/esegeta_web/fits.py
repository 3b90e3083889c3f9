"""Which methods fit a declared model, for the method lists of the new-run and quick
explain pages.

What is checked, per method, without running it:

- its ``ranks`` against the model's declared ``rank`` (its ``kwargs.rank``), when the
  models file declares one;
- its ``tasks`` against the model's declared ``task`` (TorchRay's RISE explains
  classifiers only);
- the method's own pre-run check, :meth:`~esegeta_core.explainer.Explainer.check_model`,
  on the model built once on the CPU by its allowlisted factory (no checkpoint: the
  check looks at the structure) with the method's default parameters and no probe
  trace. A :class:`~esegeta_core.errors.NotApplicableError` marks the method as not
  fitting, with its message as the reason (attention methods on a model without
  self-attention, LRP rules for layers they lack...). Checks that need a probe pass
  (TorchRay's ReLU-only rule, activation rules) or a resolved ``layer='auto'`` run when
  the job starts, as in ``esegeta run``: such methods are listed as fitting.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from esegeta_core.errors import NotApplicableError
from esegeta_web.models import DeclaredModel

log = logging.getLogger(__name__)


class ModelFits:
    """The methods that do not fit each declared model, with the reason, computed once
    per model name (building a model can take a moment)."""

    def __init__(self) -> None:
        self._cache: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def unfit(self, model: DeclaredModel) -> dict[str, str]:
        """Method name -> why it does not fit ``model`` (methods that fit are absent)."""
        with self._lock:
            if model.name not in self._cache:
                self._cache[model.name] = unfit_methods(model)
            return self._cache[model.name]


def _rank_reason(cls: Any, rank: Any) -> str:
    ranks = tuple(getattr(cls, "ranks", (2, 3)))
    if rank is None or rank in ranks:
        return ""
    shown = " or ".join(f"{r}D" for r in ranks)
    return f"{cls.name} explains {shown} inputs; the model takes {rank}D inputs."


def _task_reason(cls: Any, task: Any) -> str:
    tasks = tuple(getattr(cls, "tasks", ("classification", "segmentation")))
    if task is None or task in tasks:
        return ""
    return f"{cls.name} explains {' and '.join(tasks)} models; the model is a {task} model."


def unfit_methods(model: DeclaredModel) -> dict[str, str]:
    """Method name -> why it does not fit ``model`` (see the module doc for what is
    checked). A model that cannot be built leaves only the rank check."""
    from esegeta_core.config import ModelSpec
    from esegeta_core.config_checks import import_factory
    from esegeta_core.plugin.manager import get_registry

    registry = get_registry()
    rank = model.spec.get("kwargs", {}).get("rank")
    built = None
    try:
        spec = ModelSpec.model_validate(model.spec)
        built = import_factory(spec.factory, Path.cwd())(**spec.kwargs)
    except Exception as exc:  # noqa: BLE001 - the run reports it; the list stays usable
        log.warning("model %s not built for the method checks: %s", model.name, exc)
    out: dict[str, str] = {}
    for name, cls in sorted(registry.methods.items()):
        reason = _rank_reason(cls, rank) or _task_reason(cls, model.run_defaults.get("task"))
        if not reason and built is not None:
            try:
                cls().check_model(built, cls.Params(), None)
            except NotApplicableError as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - needs its parameters: checked at run time
                log.debug("method %s not checked on %s: %s", name, model.name, exc)
        if reason:
            out[name] = reason
    return out

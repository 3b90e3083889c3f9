"""esegeta: interpretability and explainability methods for PyTorch image models.

One call runs any installed method on any classification or segmentation model, 2D
or 3D::

    from esegeta_core import explain
    e = explain(model, x, "captum.integrated_gradients", target=3, n_steps=64)
    heat = e.saliency()          # (B, 1, *spatial)

Backends are plugins discovered through the ``esegeta`` entry-point group; see
:class:`Explainer` for the contract.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below load lazily, on first use (see __getattr__)
    from esegeta_core.api import explain, validate_params
    from esegeta_core.catalog import MethodInfo, describe_method, list_methods, plugin_failures
    from esegeta_core.devices import model_device
    from esegeta_core.errors import (
        AmbiguousMethodError,
        DeviceUnavailableError,
        EsegetaError,
        InvalidInputError,
        InvalidModelError,
        InvalidParamsError,
        InvalidTargetError,
        LayerNotFoundError,
        MethodFailedError,
        MethodNotFoundError,
        NotApplicableError,
        PluginConflictError,
        PluginLoadError,
        RunConflictError,
        RunWriteError,
        UnsupportedRankError,
        WorkerStartError,
    )
    from esegeta_core.evaluation.api import evaluate
    from esegeta_core.explainer import (
        Explainer,
        LayerPath,
        MethodParams,
        MethodResult,
        ModulePath,
    )
    from esegeta_core.explanation import Explanation
    from esegeta_core.layers import layer_names, resolve_layer, unwrap
    from esegeta_core.plugin import hookimpl
    from esegeta_core.plugin.manager import get_registry, register_plugin, unregister_plugin
    from esegeta_core.targets import (
        MultiClassScores,
        Region,
        RegionScores,
        ScoreModel,
        ThresholdScores,
    )
    from esegeta_core.tracing import ModelTrace


_LAZY: dict[str, str] = {
    "AmbiguousMethodError": "esegeta_core.errors",
    "DeviceUnavailableError": "esegeta_core.errors",
    "EsegetaError": "esegeta_core.errors",
    "Explainer": "esegeta_core.explainer",
    "Explanation": "esegeta_core.explanation",
    "InvalidInputError": "esegeta_core.errors",
    "InvalidModelError": "esegeta_core.errors",
    "InvalidParamsError": "esegeta_core.errors",
    "InvalidTargetError": "esegeta_core.errors",
    "LayerNotFoundError": "esegeta_core.errors",
    "LayerPath": "esegeta_core.explainer",
    "MethodFailedError": "esegeta_core.errors",
    "MethodInfo": "esegeta_core.catalog",
    "MethodNotFoundError": "esegeta_core.errors",
    "MethodParams": "esegeta_core.explainer",
    "MethodResult": "esegeta_core.explainer",
    "ModelTrace": "esegeta_core.tracing",
    "ModulePath": "esegeta_core.explainer",
    "MultiClassScores": "esegeta_core.targets",
    "NotApplicableError": "esegeta_core.errors",
    "PluginConflictError": "esegeta_core.errors",
    "PluginLoadError": "esegeta_core.errors",
    "Region": "esegeta_core.targets",
    "RegionScores": "esegeta_core.targets",
    "RunConflictError": "esegeta_core.errors",
    "RunWriteError": "esegeta_core.errors",
    "ScoreModel": "esegeta_core.targets",
    "ThresholdScores": "esegeta_core.targets",
    "UnsupportedRankError": "esegeta_core.errors",
    "WorkerStartError": "esegeta_core.errors",
    "describe_method": "esegeta_core.catalog",
    "evaluate": "esegeta_core.evaluation.api",
    "explain": "esegeta_core.api",
    "get_registry": "esegeta_core.plugin.manager",
    "hookimpl": "esegeta_core.plugin",
    "layer_names": "esegeta_core.layers",
    "list_methods": "esegeta_core.catalog",
    "model_device": "esegeta_core.devices",
    "plugin_failures": "esegeta_core.catalog",
    "register_plugin": "esegeta_core.plugin.manager",
    "resolve_layer": "esegeta_core.layers",
    "unregister_plugin": "esegeta_core.plugin.manager",
    "unwrap": "esegeta_core.layers",
    "validate_params": "esegeta_core.api",
}
"""Where each public name lives: ``from esegeta_core import Explainer`` loads the
contract only, not the metrics, configs, runtime and file I/O a plugin does not use."""


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562) and keep the value."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'esegeta_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AmbiguousMethodError",
    "DeviceUnavailableError",
    "EsegetaError",
    "Explainer",
    "Explanation",
    "InvalidInputError",
    "InvalidModelError",
    "InvalidParamsError",
    "InvalidTargetError",
    "LayerNotFoundError",
    "LayerPath",
    "MethodFailedError",
    "MethodInfo",
    "MethodNotFoundError",
    "MethodParams",
    "MethodResult",
    "ModulePath",
    "NotApplicableError",
    "ModelTrace",
    "MultiClassScores",
    "PluginConflictError",
    "PluginLoadError",
    "RunConflictError",
    "RunWriteError",
    "Region",
    "RegionScores",
    "ScoreModel",
    "ThresholdScores",
    "UnsupportedRankError",
    "WorkerStartError",
    "__version__",
    "describe_method",
    "evaluate",
    "explain",
    "get_registry",
    "hookimpl",
    "layer_names",
    "list_methods",
    "model_device",
    "plugin_failures",
    "register_plugin",
    "resolve_layer",
    "unregister_plugin",
    "unwrap",
    "validate_params",
]

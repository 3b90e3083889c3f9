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

from esegeta_core import evaluate
from esegeta_core.api import explain, model_device, validate_params
from esegeta_core.catalog import MethodInfo, describe_method, list_methods, plugin_failures
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

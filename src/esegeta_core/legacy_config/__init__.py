"""Convert a TorchEsegeta JSON config into an esegeta run config.

TorchEsegeta (the original pipeline) was driven by one JSON file: model description,
input transforms, runtime switches and a list of methods per library with their
keyword arguments. :func:`convert_legacy` carries over everything esegeta has a
counterpart for (a :class:`~esegeta_core.config.RunConfig` mapping) and returns a
human-readable warning for everything it cannot, so nothing is dropped silently.

The method table (:mod:`.table`, pure data) maps (library, original method name) to
esegeta method names; names match case-insensitively ignoring spaces, underscores and
dashes ("Integrated Gradients" = "IntegratedGradients" = "integrated_gradients").
Keyword renames and the parameters each esegeta method accepts are a static copy of the
plugins' ``Params`` (so converting needs no plugin installed), checked against the
installed methods by the tests; ``esegeta validate`` then checks the result.

The converter is :mod:`.convert` (the whole config) and :mod:`.methods` (one method
entry); :mod:`.writer` reads the JSON file and writes the YAML.
"""

from __future__ import annotations

from esegeta_core.legacy_config.convert import convert_legacy
from esegeta_core.legacy_config.table import METHODS, Target
from esegeta_core.legacy_config.values import MODEL_PLACEHOLDER, REPLACE_ME
from esegeta_core.legacy_config.writer import write_converted

__all__ = [
    "METHODS",
    "MODEL_PLACEHOLDER",
    "REPLACE_ME",
    "Target",
    "convert_legacy",
    "write_converted",
]

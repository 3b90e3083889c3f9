"""The errors esegeta raises.

One root, :class:`EsegetaError`; every subclass also inherits the builtin a caller
would naturally catch (``LookupError`` for unknown names, ``ValueError`` for bad
values, ``ImportError`` for broken plugins), so ``except ValueError`` keeps working
in code that does not know esegeta. Messages name the method, the plugin and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EsegetaError(Exception):
    """Root of every error esegeta raises on purpose."""


class MethodNotFoundError(EsegetaError, LookupError):
    """No installed plugin registers a method of that name."""


class AmbiguousMethodError(EsegetaError, LookupError):
    """A short method name matches methods of several plugins."""


class PluginLoadError(EsegetaError, ImportError):
    """The plugin that provides a method could not be imported or registered."""


class PluginConflictError(EsegetaError, ValueError):
    """Two plugins register the same method name, or a plugin breaks the contract."""


class InvalidInputError(EsegetaError, ValueError):
    """The input batch has the wrong type, rank, dtype or non-finite values."""


class UnsupportedRankError(InvalidInputError):
    """The method cannot handle inputs of this rank (for example 3D to a 2D-only method)."""


class InvalidTargetError(EsegetaError, ValueError):
    """The target is out of range or has the wrong shape."""


class InvalidModelError(EsegetaError, TypeError):
    """The model is not a ``torch.nn.Module`` or its output cannot be scored."""


class NotApplicableError(InvalidModelError):
    """The method cannot apply to this model for a reason its capabilities state
    (``Explainer.requirements``): CAM without a pooling + linear head, LRP rules on
    attention, ReLU-only rules on a network with other activations."""


class LayerNotFoundError(EsegetaError, LookupError):
    """A layer path does not name a sub-module of the model."""


class InvalidParamsError(EsegetaError, ValueError):
    """Method parameters failed validation; the pydantic error is the ``__cause__``."""


class MethodFailedError(EsegetaError, RuntimeError):
    """The method raised while running; the original exception is the ``__cause__``."""


class WorkerStartError(EsegetaError, RuntimeError):
    """A scheduler worker process died before it could take a job."""


class DeviceUnavailableError(EsegetaError, RuntimeError):
    """A requested device does not exist on this host (no usable CUDA, a GPU index past
    the last GPU, no MPS)."""


class RunConflictError(EsegetaError, ValueError):
    """A run folder already holds results of a config that differs in what changes
    results; reusing the folder would mix them (use another name, or force)."""


class RunWriteError(EsegetaError, OSError):
    """A job's files (map, figure, record) could not be written in the run folder;
    the job fails, the run goes on."""


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look like ``word`` (for "did you mean")."""
    pool = list(candidates)
    found = difflib.get_close_matches(word, pool, n=n, cutoff=0.5)
    if not found:
        tail = word.rsplit(".", 1)[-1].lower()
        found = [c for c in pool if tail and tail in c.lower()][:n]
    return found


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A " Did you mean 'x' or 'y'?" suffix, or an empty string when nothing is close."""
    found = close_matches(word, candidates)
    if not found:
        return ""
    return " Did you mean " + " or ".join(repr(f) for f in found) + "?"


class PretrainedNotFoundError(EsegetaError, LookupError):
    """``pretrained()`` was asked for a model it has no recipe for."""


class InvalidReportError(EsegetaError, ValueError):
    """Report data of the wrong type or shape (for example image bytes that are not PNG)."""


class RunFolderError(EsegetaError, FileNotFoundError):
    """The folder given to ``report_from_run`` is not a run folder."""

"""Resolving layer paths such as ``"layer4.1.conv2"`` against the user's model.

Paths always refer to the user's own model, also when the core has wrapped it (for
segmentation) or when it sits inside ``DataParallel``: :func:`unwrap` peels those off.
"""

from __future__ import annotations

from torch import nn

from esegeta_core.errors import LayerNotFoundError, did_you_mean


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside esegeta's score wrappers and (Distributed)DataParallel."""
    from esegeta_core.targets import ScoreModel

    seen = 0
    while seen < 16:
        if isinstance(model, ScoreModel):
            model = model.model
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            break
        seen += 1
    return model


def layer_names(model: nn.Module) -> list[str]:
    """Every named sub-module of the user's model, in definition order."""
    return [name for name, _ in unwrap(model).named_modules() if name]


def resolve_layer(model: nn.Module, path: str, *, method: str = "") -> nn.Module:
    """The sub-module of the user's model at ``path``; a clear error with near names if
    there is none."""
    target = unwrap(model)
    if not isinstance(path, str) or not path:
        raise LayerNotFoundError(
            f"{_who(method)}needs a layer path such as 'features.3' (got {path!r}). "
            f"Layers of this model: {_sample(target)}."
        )
    try:
        return target.get_submodule(path)
    except AttributeError:
        names = layer_names(target)
        raise LayerNotFoundError(
            f"{_who(method)}layer {path!r} not found in {type(target).__name__}."
            + did_you_mean(path, names)
            + f" Layers of this model: {_sample(target)}."
        ) from None


def _who(method: str) -> str:
    return f"Method {method!r}: " if method else ""


def _sample(model: nn.Module, limit: int = 20) -> str:
    names = layer_names(model)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") or "(none)"

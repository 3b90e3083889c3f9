"""The plugin authors' toolkit: what several methods would otherwise each write.

- :func:`interpolation_mode`: the linear interpolation mode of a spatial rank
  (``"linear"``, ``"bilinear"``, ``"trilinear"``), for up-sampling maps or masks in 1D,
  2D and 3D alike;
- :func:`gather_target`: the ``(B,)`` scores of each item's target class in ``(B,
  classes)`` scores; :func:`target_pass_scores`: the same straight from a perturbation
  pass, reducing only the targets' classes of a segmentation output;
- :class:`Call`: what one ``attribute`` call works on (model, inputs, targets, method);
- layer capture: :func:`recording` (every output or input of some modules within a
  block), :func:`layer_output` (one layer's output, the rest of the forward pass
  skipped), :func:`replacing_output` (a module's output replaced within a block);
- parameter types: :data:`TensorParam` (a tensor-valued parameter with a JSON Schema)
  and :data:`BaselineChoice` (a reference input for :func:`make_baseline`).

Parameter models share :meth:`esegeta_core.MethodParams.only_with` for options that
only apply with another. The module sits low in the core (errors, layers, baselines),
so any layer of the core and any plugin may use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import WithJsonSchema
from torch import nn

from esegeta_core.baselines import make_baseline
from esegeta_core.errors import InvalidParamsError
from esegeta_core.layers import resolve_layer

__all__ = [
    "INTERPOLATION_MODES",
    "BaselineChoice",
    "Call",
    "TensorParam",
    "gather_target",
    "interpolation_mode",
    "layer_output",
    "make_baseline",
    "recording",
    "replacing_output",
    "target_pass_scores",
]

INTERPOLATION_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
"""``F.interpolate``'s linear mode per number of spatial dimensions."""

TensorParam = Annotated[
    torch.Tensor,
    WithJsonSchema({"type": "object", "title": "Tensor", "x-python-type": "torch.Tensor"}),
]
"""A tensor-valued parameter; the JSON Schema describes it as a Python-only object, as
:class:`~esegeta_core.MethodParams` describes a plain ``torch.Tensor`` field."""

BaselineChoice = Literal["zeros", "mean", "blurred", "uniform", "gaussian"] | float | TensorParam
"""A reference input: a name understood by :func:`make_baseline`, a constant or a tensor
broadcastable to the inputs."""


def interpolation_mode(rank: int) -> str:
    """The linear ``F.interpolate`` mode for ``rank`` spatial dimensions (1, 2 or 3)."""
    try:
        return INTERPOLATION_MODES[rank]
    except KeyError:
        raise ValueError(
            f"linear interpolation takes 1 to 3 spatial dimensions, not {rank}"
        ) from None


def gather_target(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``scores[i, target[i]]`` for every item: ``(B,)`` from ``(B, classes)`` scores and
    a ``(B,)`` long tensor of classes (moved to the scores' device)."""
    return scores.gather(1, target.reshape(-1, 1).to(scores.device)).squeeze(1)


def target_pass_scores(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """``gather_target(model(x), target)``: each input's target score, a new tensor.

    Without gradients, through the model's ``target_scores`` when it has one: the core's
    segmentation wrapper then reduces only the targets' classes of the output, with the
    same result (a pass of a small 3D U-Net otherwise spends a sixth of its time
    reducing every class). Perturbation passes keep one score per input."""
    fast = getattr(model, "target_scores", None)
    if callable(fast) and not torch.is_grad_enabled():
        return fast(x, target.reshape(-1).to(x.device))
    return gather_target(model(x), target)


@dataclass(frozen=True)
class Call:
    """What one ``attribute`` call works on: the scoring model, inputs and targets, and
    the method's name for messages."""

    model: nn.Module
    inputs: torch.Tensor
    target: torch.Tensor
    method: str

    @property
    def rank(self) -> int:
        """The number of spatial dimensions (2 for images, 3 for volumes)."""
        return self.inputs.ndim - 2

    def layer(self, path: str) -> nn.Module:
        """The module at ``path`` in the user's model (inside esegeta's wrappers)."""
        return resolve_layer(self.model, path, method=self.method)


@contextlib.contextmanager
def recording(
    modules: Sequence[nn.Module], *, inputs: bool = False
) -> Iterator[list[list[object]]]:
    """Within the block, every output of ``modules[i]`` (its first positional input with
    ``inputs=True``) is appended to ``records[i]``; the hooks are always removed."""
    records: list[list[object]] = [[] for _ in modules]
    handles = []
    for module, record in zip(modules, records, strict=True):

        def hook(_m: nn.Module, args: tuple[object, ...], output: object, record=record) -> None:
            record.append(args[0] if inputs else output)

        handles.append(module.register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def replacing_output(
    module: nn.Module, replace: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Within the block, ``module``'s output ``y`` is replaced by ``replace(y)``."""

    def hook(_m: nn.Module, _i: object, output: torch.Tensor) -> torch.Tensor:
        return replace(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _LayerReachedError(Exception):
    """Raised by :func:`layer_output`'s hook to end the forward pass at the layer."""


def layer_output(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    *,
    method: str,
    path: str = "",
    inputs: bool = False,
    first_of_tuple: bool = False,
) -> torch.Tensor:
    """``layer``'s output (its first input with ``inputs=True``) when ``model`` runs on
    ``x``, differentiable, with the rest of the forward pass skipped; ``path`` names the
    layer in messages. ``first_of_tuple``: a tuple or list output gives its first tensor
    (else it is refused). A clear error when the layer does not run or gives no tensor."""
    store: list[torch.Tensor] = []
    where = f"layer {path!r}" if path else "the layer"

    def hook(_m: nn.Module, args: tuple[object, ...], output: object) -> None:
        value = args[0] if inputs else output
        if first_of_tuple and isinstance(value, (tuple, list)) and value:
            value = value[0]
        if not isinstance(value, torch.Tensor):
            raise InvalidParamsError(
                f"Method {method!r}: {where} {'takes' if inputs else 'returns'} "
                f"{type(value).__name__}, not a tensor; pick a layer that outputs a feature map."
            )
        store.append(value)
        raise _LayerReachedError

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _LayerReachedError:
        pass
    finally:
        handle.remove()
    if not store:
        raise InvalidParamsError(
            f"Method {method!r}: {where} is not used in the model's forward pass."
        )
    return store[0]

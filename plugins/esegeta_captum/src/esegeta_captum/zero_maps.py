"""Why a map is zero, said by the method that knows: a neuron switched off on the
input, or a Lasso surrogate whose penalty removed every coefficient.

A neuron after a ReLU (or any activation that outputs exactly 0) is 0 on many inputs;
there its gradient is zero, and so is every gradient-based map of it (and conductance
through it). The map is then right but says nothing about the input, and a user who
picked the neuron by index cannot tell this from a broken method. When an item's map is
zero everywhere, the method reads the neuron's value on that item (one forward pass of
those items, only then) and, if it is 0, says so and names the most active neuron at
the same position as a choice that works.

LIME's default surrogate is Captum's Lasso with ``alpha=0.01``: where the target's score
changes by less than the penalty across the samples (logits of a model that is not
confident, probabilities), every coefficient is zero and so is the map.
"""

from __future__ import annotations

import torch
from torch import nn

from esegeta_captum.shapes import full_neuron_index
from esegeta_core import MethodResult, layer_calls


def maps_of(result: torch.Tensor | MethodResult) -> torch.Tensor:
    """The maps of a method's result."""
    return result.attributions if isinstance(result, MethodResult) else result


def with_warning(result: torch.Tensor | MethodResult, warning: str) -> torch.Tensor | MethodResult:
    """``result`` carrying ``warning`` among its warnings (unchanged when it is '')."""
    if not warning:
        return result
    if isinstance(result, MethodResult):
        result.extras.setdefault("warnings", []).append(warning)
        return result
    return MethodResult(result, warnings=[warning])


def zero_items(attributions: torch.Tensor) -> list[int]:
    """The items whose map is zero everywhere."""
    flat = attributions.detach().reshape(attributions.shape[0], -1)
    return [i for i, zero in enumerate((flat == 0).all(dim=1).tolist()) if zero]


class _LayerReachedError(Exception):
    """Stops the forward pass at the layer's last call."""


def layer_values(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, *, inputs: bool
) -> torch.Tensor | None:
    """The layer's output (first input with ``inputs``; a tuple's first tensor) at its
    last call when ``model`` runs on ``x``; None when it gives no tensor. The pass stops
    there when the job's prediction pass counted the layer's calls."""
    seen: list[object] = []
    stop = layer_calls.calls(layer)

    def hook(_m: nn.Module, args: tuple[object, ...], output: object) -> None:
        seen.append(args[0] if inputs else output)
        if len(seen) == stop:
            raise _LayerReachedError

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _LayerReachedError:
        pass
    finally:
        handle.remove()
    value = seen[-1] if seen else None
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if isinstance(value, torch.Tensor) else None


def inactive_neuron_warning(
    method: str,
    model: nn.Module,
    layer: nn.Module,
    path: str,
    selector: tuple[int, ...],
    x: torch.Tensor,
    attributions: torch.Tensor,
    *,
    inputs: bool = False,
) -> str:
    """The warning for items whose map is zero because the neuron is 0 on them ('' when
    no item is both)."""
    items = zero_items(attributions)
    if not items:
        return ""
    values = layer_values(model, layer, x[items], inputs=inputs)
    if values is None or values.dim() < 2:
        return ""
    index = full_neuron_index(selector, tuple(values.shape[1:]), method)
    neuron = values[(slice(None), *index)].float()
    off = [item for item, v in zip(items, neuron.tolist(), strict=True) if v == 0]
    if not off:
        return ""
    # the same position in every channel (first index), on the items where it is off
    kept = [items.index(i) for i in off]
    column = values[(kept, slice(None), *index[1:])].float().reshape(len(off), -1)
    weakest = column.min(dim=0).values
    best = int(weakest.argmax())
    where = "input" if inputs else "output"
    item_list = ", ".join(str(i) for i in off)
    if weakest[best] > 0:
        fix = (
            f"Pick a neuron that is active on these inputs: at the same position the most "
            f"active is neuron_selector={(best, *index[1:])} (value {float(weakest[best]):.3g} "
            "or more on those items)."
        )
    else:
        fix = (
            "No neuron at this position is active on those items: pick another position "
            "or an earlier layer."
        )
    return (
        f"Method {method!r} (plugin 'captum'): the neuron {index} in the {where} of layer "
        f"{path!r} is 0 on item(s) {item_list}: its activation switches it off there, so "
        f"nothing in the input changes it and the map is zero. {fix}"
    )


def lasso_warning(method: str, alpha: float, attributions: torch.Tensor) -> str:
    """The warning for items whose LIME map is zero under a Lasso penalty ('' when
    there is no penalty or no such item)."""
    items = zero_items(attributions)
    if alpha <= 0 or not items:
        return ""
    return (
        f"Method {method!r} (plugin 'captum'): the Lasso surrogate (alpha={alpha:g}) set "
        f"every coefficient of item(s) {', '.join(map(str, items))} to zero: the target's "
        "score changes too little across the samples to pass that penalty. Pass alpha=0 "
        "(least squares) or a smaller alpha; a map that stays zero then means the score "
        "does not depend on these features."
    )

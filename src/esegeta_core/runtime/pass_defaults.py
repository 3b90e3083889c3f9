"""Default pass sizes that suit the input on a CPU, when nobody chose one.

A perturbation method's pass parameter (Captum's ``perturbations_per_eval``, RISE's and
LIME's ``batch_size``) has one default for every input. On a CPU the fastest pass holds
about the same number of input elements whatever the input, so one default is too large
for big inputs. Measured on 2 CPU threads, forward passes only (milliseconds per input):

- ResNet-50 at 224 px: 43 at 4 per pass, 51 at 8, 59 at 16, 69 at 32;
- ResNet-50 at 160 px: 25 at 4, 24 at 8, 26 at 16, 32 at 32;
- ResNet-50 at 112 px: 15 at 4, 14 at 16, 13 at 32 (the default is right);
- MONAI DenseNet121-3D at 48^3, 217 occlusion inputs: 5.78 s at 8, 5.62 s at 16,
  6.00 s at 32; RISE's 128 masks: 3.20 s at 8, 2.92 s at 16, 3.48 s at 32.

So when the caller left a pass parameter at its default, did not ask for
``auto_batch`` (whose planner measures instead) and the model is on the CPU, a pass
holds at most :data:`CPU_PASS_ELEMENTS` input elements: the largest power of two of
inputs that fits, never more inputs than the default. A default that counts copies of
each item (Captum's) is read as inputs per pass too: with 4 items of ResNet-50 at 64 px,
occlusion's 32 copies each (128 inputs per pass) ran 1.27-1.31x the floor, whose best
pass held 32 inputs. The chosen value is written into the parameters, so the
explanation records it. On a GPU, larger passes stay faster until
memory runs out: the default stands there.

Under ``auto_batch`` the pass planner measures, starting from that same size
(:func:`default_pass_start`): it leaves the default only for a size it timed faster.
"""

from __future__ import annotations

import logging

import torch

from esegeta_core.explainer import Explainer, MethodParams

log = logging.getLogger(__name__)

CPU_PASS_ELEMENTS = 2**21
"""Input elements one forward pass holds at most under the CPU default (2,097,152: 32
RGB images of 112 px, 16 one-channel volumes of 48^3, 8 RGB images of 224 px)."""


def cpu_pass_size(default: int, elements: int) -> int:
    """Inputs per pass for ``default`` inputs of ``elements`` elements each: the
    default when they fit in :data:`CPU_PASS_ELEMENTS`, else the largest power of two
    that does (at least 1)."""
    fit = CPU_PASS_ELEMENTS // max(1, elements)
    if fit >= default:
        return default
    return 1 << (fit.bit_length() - 1) if fit >= 1 else 1


def cpu_pass_defaults(
    cls: type[Explainer],
    params: MethodParams,
    probe: torch.Tensor,
    batch: int,
    *,
    auto_batch: bool,
) -> MethodParams:
    """``params`` with the pass parameters the caller left at their defaults sized for
    the CPU (:func:`cpu_pass_size`; ``probe``: one input as the model sees it, an item
    or a patch; ``batch``: the items or patches per call). The default is read as
    inputs per pass; a parameter that counts copies per item gets that divided by
    ``batch``. Unchanged under ``auto_batch``, off the CPU, for
    methods that do not declare what their pass parameter counts
    (:attr:`~esegeta_core.Explainer.pass_unit`), and for a parameter whose value
    changes a random draw (:meth:`~esegeta_core.Explainer.drawn_with`)."""
    if auto_batch or probe.device.type != "cpu" or not cls.pass_unit:
        return params
    per_item = cls.pass_unit == "item"
    drawn = cls().drawn_with(params)
    update = {}
    for name in cls.pass_params:
        value = getattr(params, name, None)
        if name in params.model_fields_set or name in drawn or isinstance(value, bool):
            continue
        if not isinstance(value, int) or value < 1:
            continue
        # the default read as inputs per pass, also where it counts copies per item
        sized = cpu_pass_size(value, probe[:1].numel())
        if per_item:
            sized = max(1, sized // batch)
        if sized < value:
            update[name] = sized
    if not update:
        return params
    log.info("method %s on the CPU: %s for inputs of %s", cls.name, update, tuple(probe.shape))
    return params.model_copy(update=update)


def default_pass_start(
    cls: type[Explainer], params: MethodParams, probe: torch.Tensor, batch: int
) -> int | None:
    """Inputs per forward pass the call would run without ``auto_batch``: the first
    pass parameter at its (CPU-sized) default, times ``batch`` where it counts copies
    per item. ``None`` when the method declares no pass unit (its passes start at a
    layer, and it says where its own search starts) or has no pass parameter."""
    if not cls.pass_unit:
        return None
    sized = cpu_pass_defaults(cls, params, probe, batch, auto_batch=False)
    for name in cls.pass_params:
        value = getattr(sized, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value * batch if cls.pass_unit == "item" else value
    return None

"""The default layers of contrastive excitation backprop, found by one probe pass:
the classifier layer whose weights are negated and the contrast layer where the
negated pass is subtracted."""

from __future__ import annotations

import torch

from esegeta_core import InvalidParamsError, unwrap
from esegeta_core.toolkit import Call


def default_layers(
    call: Call, classifier: torch.nn.Module | None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The classifier layer (given, or the last Conv/Linear that runs on the path to the
    scores: TorchRay's own default, the last one declared, can be an auxiliary head) and
    the contrast layer (the module whose forward ends last before the classifier's
    starts), from one probe pass."""
    model = unwrap(call.model)
    weighted = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    finished: list[torch.nn.Module] = []
    started: dict[int, int] = {}
    outputs: list[tuple[torch.nn.Module, torch.Tensor]] = []

    # the order in which every module starts and ends: pre- and post-hooks on all of them
    def pre(module: torch.nn.Module, args: object) -> None:
        started.setdefault(id(module), len(finished))

    def post(module: torch.nn.Module, args: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            finished.append(module)
            if isinstance(module, weighted) and output.requires_grad:
                outputs.append((module, output))

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.enable_grad():
            scores = call.model(call.inputs[:1].detach().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    if classifier is None:
        grads = torch.autograd.grad(
            scores.sum(), [o for _, o in outputs], allow_unused=True
        ) if outputs else []  # fmt: skip
        on_path = [m for (m, _), g in zip(outputs, grads) if g is not None]
        if not on_path:
            raise InvalidParamsError(
                f"Method {call.method!r}: no Conv/Linear layer on the path to the scores; "
                "pass classifier_layer=..."
            )
        classifier = on_path[-1]
    inside = {id(m) for m in model.modules() if any(c is classifier for c in m.modules())}
    before = [m for m in finished[: started.get(id(classifier), 0)] if id(m) not in inside]
    if not before:
        raise InvalidParamsError(
            f"Method {call.method!r}: no module runs before the classifier layer; pass "
            "contrast_layer=..."
        )
    return classifier, before[-1]

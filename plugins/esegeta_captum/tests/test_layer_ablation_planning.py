"""captum.layer_feature_ablation under ``explain(auto_batch=True)``: the layer replay's
passes planned by the core, the map equal to Captum's own LayerFeatureAblation."""

from __future__ import annotations

import torch
from captum.attr import LayerFeatureAblation
from torch import nn

import esegeta_core as ec
from esegeta_core.model_state import count_hooks


def test_planned_layer_ablation_equals_captum():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=4).eval()
    x = torch.rand(2, 3, 32, 32)
    target = torch.tensor([1, 3])
    planned = ec.explain(
        model, x, "captum.layer_feature_ablation", target, layer="layer3", auto_batch=True
    )
    assert planned.extras["pass_plan"]["inputs_per_pass"] >= 1
    mask = torch.arange(256).view(1, 256, 1, 1)
    want = torch.cat(
        [
            LayerFeatureAblation(model, model.layer3).attribute(
                x[i : i + 1], target=int(target[i]), layer_mask=mask, perturbations_per_eval=16
            )
            for i in range(2)
        ]
    )
    torch.testing.assert_close(planned.attributions, want, rtol=1e-4, atol=1e-5)
    assert count_hooks(model) == 0 and isinstance(model.layer3, nn.Sequential)

"""``xml.explainer``: the explanation a trained :class:`ExplainerClassifier` gives itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from esegeta_core import Explainer, MethodResult
from esegeta_core.errors import NotApplicableError
from esegeta_core.layers import unwrap
from esegeta_xml.model import ExplainerClassifier
from esegeta_xml.params import XmlExplainerParams
from esegeta_xml.unet import PAPER

if TYPE_CHECKING:
    from esegeta_core import ModelTrace


class XmlExplainer(Explainer[XmlExplainerParams]):
    """xML: the map of an explainer network trained jointly with the classifier (in-model).

    Only for an :class:`esegeta_xml.ExplainerClassifier` trained with
    :func:`esegeta_xml.train` (or ``esegeta xml train CONFIG``): any other model is a
    ``NotApplicableError`` (an ``InvalidModelError``), so the core's generic conformance
    cases on tiny plain models do not apply. The attributions are the explainer's output ``(B, 1,
    *spatial)`` in [0, 1), at input resolution: the share of each location that the
    classifier's feature maps keep. The map is the same for every target class (the
    explainer produces one map per input); extras: ``scores`` ``(B, classes)``, the
    joint model's logits. Family ``in_model``: the map is the output of a network trained
    jointly with the classifier, a learned mask applied to its features.
    """

    name = "xml.explainer"
    family = "in_model"
    output = "layer"
    ranks = (2, 3)
    cost = "low"
    paper = PAPER
    deterministic = True
    requirements = (
        "an esegeta_xml.ExplainerClassifier: a classifier trained jointly with its "
        "explainer network",
    )

    def check_model(
        self, model: torch.nn.Module, params: XmlExplainerParams, trace: ModelTrace | None
    ) -> None:
        joint = unwrap(model)
        if not isinstance(joint, ExplainerClassifier):
            raise NotApplicableError(
                f"Method {self.name!r} (plugin 'xml') explains only an "
                "esegeta_xml.ExplainerClassifier: a classifier trained jointly with its "
                f"explainer network, whose map it returns; got {type(joint).__name__}. "
                "Wrap your classifier, ExplainerClassifier(classifier, ...), train it with "
                "esegeta_xml.train(config) or `esegeta xml train CONFIG`, and explain the "
                "result (esegeta_xml.load_trained(folder)). For a plain classifier use a "
                "post-hoc method such as 'cnnvis.grad_cam' or 'captum.integrated_gradients'."
            )

    def attribute(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: XmlExplainerParams,
    ) -> MethodResult:
        joint = unwrap(model)
        self.check_model(model, params, None)
        with torch.no_grad():
            scores, z = joint.forward_with_explanation(inputs)
        return MethodResult(z.detach(), scores=scores.detach())

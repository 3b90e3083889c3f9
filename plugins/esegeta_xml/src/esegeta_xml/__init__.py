"""esegeta-xml: xML, the in-model explainer of Rio-Torto, Fernandes & Teixeira,
"Understanding the decisions of CNNs: an in-model approach", Pattern Recognition
Letters 133 (2020), https://doi.org/10.1016/j.patrec.2020.04.004.

An explainer U-Net is trained jointly with any classifier (2D or 3D): its one-channel
map multiplies the classifier's feature maps, so the classifier decides from what the
explainer keeps. This package gives the joint model (:class:`ExplainerClassifier`,
with adapters for torchvision-style ResNets and VGG-style networks and named points
for any other classifier), the losses, the three-phase training (:func:`train`, or
``esegeta xml train CONFIG``) and the esegeta method ``xml.explainer``.
"""

from __future__ import annotations

from esegeta_core import Explainer, hookimpl
from esegeta_xml.classifiers import SmallVGG, small_vgg
from esegeta_xml.config import TrainConfig, load_train_config
from esegeta_xml.losses import (
    LossTerms,
    hybrid_loss,
    joint_loss,
    sparsity_loss,
    total_variation_loss,
    unsupervised_loss,
    weak_mask_loss,
)
from esegeta_xml.method import XmlExplainer
from esegeta_xml.model import ExplainerClassifier
from esegeta_xml.points import find_points, multiplying, resnet_points, vgg_points
from esegeta_xml.training import TrainResult, evaluate, load_trained, train
from esegeta_xml.unet import ExplainerUNet

METHODS: list[type[Explainer]] = [XmlExplainer]

__all__ = [
    "METHODS",
    "ExplainerClassifier",
    "ExplainerUNet",
    "LossTerms",
    "SmallVGG",
    "TrainConfig",
    "TrainResult",
    "XmlExplainer",
    "esegeta_register_methods",
    "evaluate",
    "find_points",
    "hybrid_loss",
    "joint_loss",
    "load_train_config",
    "load_trained",
    "multiplying",
    "resnet_points",
    "small_vgg",
    "sparsity_loss",
    "total_variation_loss",
    "train",
    "unsupervised_loss",
    "vgg_points",
    "weak_mask_loss",
]


@hookimpl
def esegeta_register_methods() -> list[type[Explainer]]:
    """The method ``xml.explainer``."""
    return list(METHODS)

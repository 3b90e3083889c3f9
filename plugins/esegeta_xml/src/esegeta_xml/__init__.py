"""esegeta-xml: xML, the in-model explainer of Rio-Torto, Fernandes & Teixeira,
"Understanding the decisions of CNNs: an in-model approach", Pattern Recognition
Letters 133 (2020), https://doi.org/10.1016/j.patrec.2020.04.004.

An explainer U-Net is trained jointly with any classifier (2D or 3D): its one-channel
map multiplies the classifier's feature maps, so the classifier decides from what the
explainer keeps. This package gives the joint model (:class:`ExplainerClassifier`,
with adapters for torchvision-style ResNets and VGG-style networks and named points
for any other classifier), the losses, the three-phase training (:func:`train`, or
``esegeta xml train CONFIG``) and the esegeta method ``xml.explainer``.

This module is the plugin's ``esegeta`` entry point, so its names load on first use
(PEP 562): listing methods and commands imports neither the training code nor more of
the model than the method needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from esegeta_core import Explainer, hookimpl
from esegeta_core.command import Command

if TYPE_CHECKING:  # the names below load lazily, on first use (see __getattr__)
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

_LAZY: dict[str, str] = {
    "SmallVGG": "esegeta_xml.classifiers",
    "small_vgg": "esegeta_xml.classifiers",
    "TrainConfig": "esegeta_xml.config",
    "load_train_config": "esegeta_xml.config",
    "LossTerms": "esegeta_xml.losses",
    "hybrid_loss": "esegeta_xml.losses",
    "joint_loss": "esegeta_xml.losses",
    "sparsity_loss": "esegeta_xml.losses",
    "total_variation_loss": "esegeta_xml.losses",
    "unsupervised_loss": "esegeta_xml.losses",
    "weak_mask_loss": "esegeta_xml.losses",
    "XmlExplainer": "esegeta_xml.method",
    "ExplainerClassifier": "esegeta_xml.model",
    "find_points": "esegeta_xml.points",
    "multiplying": "esegeta_xml.points",
    "resnet_points": "esegeta_xml.points",
    "vgg_points": "esegeta_xml.points",
    "TrainResult": "esegeta_xml.training",
    "evaluate": "esegeta_xml.training",
    "load_trained": "esegeta_xml.training",
    "train": "esegeta_xml.training",
    "ExplainerUNet": "esegeta_xml.unet",
}
"""Where each public name lives."""

__all__ = [
    "METHODS",
    "ExplainerClassifier",
    "ExplainerUNet",
    "LossTerms",
    "SmallVGG",
    "TrainConfig",
    "TrainResult",
    "XmlExplainer",
    "esegeta_register_commands",
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


def __getattr__(name: str) -> object:
    """Import a public name's module on first use (PEP 562) and keep the value."""
    if name == "METHODS":
        return _methods()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'esegeta_xml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def _methods() -> list[type[Explainer]]:
    """``METHODS``, the methods this plugin registers, made on first use."""
    if "METHODS" not in globals():
        from esegeta_xml.method import XmlExplainer

        globals()["METHODS"] = [XmlExplainer]
    methods: list[type[Explainer]] = globals()["METHODS"]
    return methods


@hookimpl
def esegeta_register_methods() -> list[type[Explainer]]:
    """The method ``xml.explainer``."""
    return list(_methods())


@hookimpl
def esegeta_register_commands() -> list[Command]:
    """The command ``esegeta xml`` (``train``, ``schema``)."""
    from esegeta_xml.cli import COMMAND

    return [COMMAND]

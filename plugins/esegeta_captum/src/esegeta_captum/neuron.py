"""Captum's neuron attribution methods: how the input drives one internal neuron.

The neuron is ``layer`` plus ``neuron_selector`` (an index into the layer's output
without the batch dimension; missing trailing entries mean the centre, so ``(c,)``
selects channel ``c`` at the spatial centre in 2D and 3D). These methods explain the
neuron, not a class: the target is ignored, except by neuron conductance, which
measures the neuron's share of the target class's score.
"""

from __future__ import annotations

from esegeta_captum.base import CaptumMethod, DeepLiftMethod, GuidedMethod, P
from esegeta_captum.params.neuron import (
    NeuronConductanceParams,
    NeuronDeconvolutionParams,
    NeuronDeepLiftParams,
    NeuronDeepLiftShapParams,
    NeuronFeatureAblationParams,
    NeuronGradientParams,
    NeuronGradientShapParams,
    NeuronGuidedBackpropParams,
    NeuronIntegratedGradientsParams,
)
from esegeta_captum.primary import PerturbationMethod


class NeuronMethod(CaptumMethod[P]):
    """Base of the neuron methods."""

    family = "neuron"
    output = "input"
    needs_layer = True
    uses_target = False


class NeuronGradient(NeuronMethod[NeuronGradientParams]):
    """Gradient of one neuron's value with respect to the input (target ignored).

    Simonyan et al. 2013 applied to a neuron.
    """

    name = "captum.neuron_gradient"
    captum_class = "NeuronGradient"
    paper = "https://arxiv.org/abs/1312.6034"


class NeuronIntegratedGradients(NeuronMethod[NeuronIntegratedGradientsParams]):
    """Integrated Gradients of one neuron's value (target ignored).

    Sundararajan et al. 2017.
    """

    name = "captum.neuron_integrated_gradients"
    captum_class = "NeuronIntegratedGradients"
    cost = "medium"
    paper = "https://arxiv.org/abs/1703.01365"


class NeuronConductance(NeuronMethod[NeuronConductanceParams]):
    """Neuron conductance: the input's attribution to the target score through one neuron.

    Dhamdhere et al. 2018; unlike the other neuron methods it uses the target class.
    """

    name = "captum.neuron_conductance"
    captum_class = "NeuronConductance"
    uses_target = True
    cost = "medium"
    paper = "https://arxiv.org/abs/1805.12233"


class NeuronDeepLift(NeuronMethod[NeuronDeepLiftParams], DeepLiftMethod[NeuronDeepLiftParams]):
    """DeepLIFT contributions of the input to one neuron (target ignored).

    Shrikumar et al. 2017.
    """

    name = "captum.neuron_deep_lift"
    captum_class = "NeuronDeepLift"
    paper = "https://arxiv.org/abs/1704.02685"


class NeuronDeepLiftShap(
    NeuronMethod[NeuronDeepLiftShapParams], DeepLiftMethod[NeuronDeepLiftShapParams]
):
    """DeepLIFT to one neuron averaged over a baseline distribution (target ignored).

    Lundberg and Lee 2017; at least two references.
    """

    name = "captum.neuron_deep_lift_shap"
    captum_class = "NeuronDeepLiftShap"
    cost = "medium"
    paper = "https://arxiv.org/abs/1705.07874"


class NeuronGradientShap(NeuronMethod[NeuronGradientShapParams]):
    """GradientSHAP of one neuron's value (target ignored).

    Lundberg and Lee 2017.
    """

    name = "captum.neuron_gradient_shap"
    captum_class = "NeuronGradientShap"
    cost = "medium"
    deterministic = False
    paper = "https://arxiv.org/abs/1705.07874"


class NeuronGuidedBackprop(
    NeuronMethod[NeuronGuidedBackpropParams], GuidedMethod[NeuronGuidedBackpropParams]
):
    """Guided backpropagation from one neuron (target ignored).

    Springenberg et al. 2014.
    """

    name = "captum.neuron_guided_backprop"
    captum_class = "NeuronGuidedBackprop"
    guided_attribute = "guided_backprop"
    paper = "https://arxiv.org/abs/1412.6806"


class NeuronDeconvolution(
    NeuronMethod[NeuronDeconvolutionParams], GuidedMethod[NeuronDeconvolutionParams]
):
    """Deconvnet from one neuron (target ignored).

    Zeiler and Fergus 2014.
    """

    name = "captum.neuron_deconvolution"
    captum_class = "NeuronDeconvolution"
    guided_attribute = "deconv"
    paper = "https://arxiv.org/abs/1311.2901"


class NeuronFeatureAblation(
    NeuronMethod[NeuronFeatureAblationParams], PerturbationMethod[NeuronFeatureAblationParams]
):
    """Change of one neuron's value when input features are ablated (target ignored).

    Feature ablation (Zeiler and Fergus 2014) applied to a neuron.
    """

    name = "captum.neuron_feature_ablation"
    captum_class = "NeuronFeatureAblation"
    family = "neuron"
    cost = "high"
    paper = "https://arxiv.org/abs/1311.2901"


NEURON: list[type[CaptumMethod]] = [
    NeuronGradient,
    NeuronIntegratedGradients,
    NeuronConductance,
    NeuronDeepLift,
    NeuronDeepLiftShap,
    NeuronGradientShap,
    NeuronGuidedBackprop,
    NeuronDeconvolution,
    NeuronFeatureAblation,
]

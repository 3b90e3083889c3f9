"""One parameter model per neuron method (:mod:`esegeta_captum.neuron`): the neuron
plus the primary method's model, or the pieces where the two differ."""

from __future__ import annotations

from esegeta_captum.params.pieces import (
    BaselineParams,
    MultiplyParams,
    NeuronParams,
    NoiseTunnelParams,
)
from esegeta_captum.params.primary import (
    DeepLiftShapParams,
    FeatureAblationParams,
    GradientShapParams,
    IntegratedGradientsParams,
)


class NeuronGradientParams(NeuronParams, NoiseTunnelParams):
    pass


class NeuronIntegratedGradientsParams(NeuronParams, IntegratedGradientsParams):
    pass


class NeuronConductanceParams(NeuronParams, IntegratedGradientsParams):
    pass


class NeuronDeepLiftParams(NeuronParams, BaselineParams, MultiplyParams, NoiseTunnelParams):
    pass


class NeuronDeepLiftShapParams(NeuronParams, DeepLiftShapParams):
    pass


class NeuronGradientShapParams(NeuronParams, GradientShapParams):
    pass


class NeuronGuidedBackpropParams(NeuronParams, NoiseTunnelParams):
    pass


class NeuronDeconvolutionParams(NeuronParams, NoiseTunnelParams):
    pass


class NeuronFeatureAblationParams(NeuronParams, FeatureAblationParams):
    pass

"""The CAM family: class activation maps from a layer's activations, batched and N-D.

One template (:class:`CamMethod`, like pytorch-grad-cam's ``BaseCAM``): capture the
layer's activations ``A`` (``(B, K, *spatial)``) and, for gradient CAMs, the target
score's gradient ``G`` w.r.t. them; a per-method weighting; the weighted sum over
channels; an optional ReLU; an optional differentiable up-sampling to the input size.
Each CAM is a short subclass. Definitions follow pytorch-grad-cam 1.5.7 exactly (so the
maps agree before its min-max scaling), but everything stays on the model's device as
tensors, works on 2D and 3D layers, and with ``create_graph`` the returned map is still
on the autograd graph (up-sampling included), so a loss on it reaches the model's
parameters.

Several layers may be given (``layer=[...]``): one map per layer, stacked in the
channel dimension. Output ``"layer"``: ``(B, n_layers, *spatial)`` with ``spatial`` the
input's (``upsample=True``) or the layer's.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from esegeta_cnnvis.activations import Captured, capture
from esegeta_cnnvis.input_gradients import input_gradient
from esegeta_cnnvis.params import (
    AblationCamParams,
    CamParams,
    GradientCamParams,
    GuidedGradCamParams,
    LayersParams,
    ScoreCamParams,
)
from esegeta_cnnvis.relu_rules import ActivationRuleMethod, relu_rule
from esegeta_core import (
    Explainer,
    InvalidParamsError,
    MethodFailedError,
    MethodResult,
    NotApplicableError,
    resolve_layer,
    unwrap,
)
from esegeta_core.explainer import Workload
from esegeta_core.layer_replay import recording_prefix, replaced_scores
from esegeta_core.prefix_memo import PrefixMemo
from esegeta_core.runtime.indices import device_index, device_scalar
from esegeta_core.runtime.passes import memory_format, method_passes
from esegeta_core.targets import summed_scores
from esegeta_core.toolkit import gather_target, interpolation_mode, target_pass_scores
from esegeta_core.tracing import ModelTrace

C = TypeVar("C", bound=LayersParams | CamParams)
"""A CAM's parameter model: what the template reads (``layer``, ``relu``, ``upsample``)
and the CAM's own options."""

# --- the template -------------------------------------------------------------------


@dataclass(frozen=True)
class LayerContext(Generic[C]):
    """Everything a CAM's weighting may look at, for one layer."""

    model: nn.Module
    inputs: torch.Tensor
    target: torch.Tensor
    module: nn.Module
    path: str
    scores: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor | None
    params: C
    method: str
    prefix: PrefixMemo | None = None
    """The layers before ``module`` recorded on the capture pass (single-item inputs of a
    CAM that replays the layer, :attr:`CamMethod.replays_layer`), else ``None``."""

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial dimensions of the activations."""
        return tuple(range(2, self.activations.ndim))

    @property
    def grads(self) -> torch.Tensor:
        """The gradients (gradient CAMs always have them)."""
        if self.gradients is None:  # a CAM class declaring uses_gradients=False
            raise MethodFailedError(f"Method {self.method!r}: gradients were not captured.")
        return self.gradients


def upsample_to(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``(B, L, *s)`` maps resized to ``size``, bilinear (2D) or trilinear (3D)."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode=interpolation_mode(len(size)), align_corners=False)


@dataclass(frozen=True)
class _PlainPass:
    """The capture a CAM made as the core's prediction pass, for its next call."""

    inputs: torch.Tensor
    modules: list[nn.Module]
    captured: Captured
    prefix: PrefixMemo | None

    def serves(self, inputs: torch.Tensor, modules: list[nn.Module]) -> bool:
        """Whether it was made on these inputs (the same tensor) and layers."""
        return (
            inputs is self.inputs
            and len(modules) == len(self.modules)
            and all(a is b for a, b in zip(modules, self.modules, strict=True))
        )


def layer_paths(layer: str | list[str]) -> list[str]:
    """A layer parameter (one path or several) as a list."""
    return [layer] if isinstance(layer, str) else list(layer)


class CamMethod(Explainer[C]):
    """Base of the CAMs: capture, per-layer map (:meth:`layer_map`), ReLU, up-sample."""

    family = "cam"
    output = "layer"
    needs_layer = True
    uses_gradients: ClassVar[bool] = True
    """Whether :meth:`layer_map` needs the gradients of the target score."""
    replays_layer: ClassVar[bool] = False
    """Whether :meth:`layer_map` scores the model with the layer's output replaced
    (:func:`~esegeta_core.layer_replay.replaced_scores`): the capture pass then records
    the layers before it for the replay (one layer, one item)."""

    _plain: _PlainPass | None = None

    @abstractmethod
    def layer_map(self, ctx: LayerContext[C]) -> torch.Tensor:
        """The ``(B, *spatial)`` map of one layer, before ReLU and up-sampling."""

    def prediction_pass(
        self, model: nn.Module, inputs: torch.Tensor, params: C
    ) -> torch.Tensor | None:
        """A CAM without gradients (Score-CAM, Ablation-CAM) starts with a plain pass
        that records its layers (and, for layer replay, the layers before the layer):
        with ``target=None`` that pass is also the core's prediction pass, kept for
        :meth:`maps` on the same inputs."""
        if self.uses_gradients or getattr(params, "create_graph", False):
            return None
        paths = layer_paths(params.layer)
        modules = [resolve_layer(model, p, method=self.name) for p in paths]
        self._plain = _PlainPass(
            inputs, modules, *self._capture(model, inputs, None, modules, paths, params)
        )
        return self._plain.captured.scores

    def _capture(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor | None,
        modules: list[nn.Module],
        paths: list[str],
        params: C,
    ) -> tuple[Captured, PrefixMemo | None]:
        """The capture pass (with the replay's record of the layers before the layer
        when the method replays one layer)."""
        record = self.replays_layer and len(modules) == 1
        with (
            recording_prefix(model, modules[0], inputs) if record else contextlib.nullcontext()
        ) as prefix:
            captured = capture(
                model,
                inputs,
                target,
                modules,
                paths,
                method=self.name,
                gradients=self.uses_gradients,
                create_graph=bool(getattr(params, "create_graph", False)),
            )
        return captured, prefix

    def maps(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: C
    ) -> torch.Tensor:
        """The ``(B, n_layers, *spatial)`` maps for ``params.layer``."""
        paths = layer_paths(params.layer)
        modules = [resolve_layer(model, p, method=self.name) for p in paths]
        create_graph = bool(getattr(params, "create_graph", False))
        plain, self._plain = self._plain, None  # a prediction pass serves one call
        if plain is not None and plain.serves(inputs, modules):
            captured, prefix = plain.captured, plain.prefix
        else:
            captured, prefix = self._capture(model, inputs, target, modules, paths, params)
        size = tuple(inputs.shape[2:])
        maps = []
        with torch.set_grad_enabled(create_graph):
            for i, (module, path) in enumerate(zip(modules, paths)):
                ctx = LayerContext(
                    model=model,
                    inputs=inputs,
                    target=target,
                    module=module,
                    path=path,
                    scores=captured.scores,
                    activations=captured.activations[i],
                    gradients=None if captured.gradients is None else captured.gradients[i],
                    params=params,
                    method=self.name,
                    prefix=prefix,
                )
                m = self.layer_map(ctx).unsqueeze(1)
                if params.relu:
                    m = torch.relu(m)
                maps.append(upsample_to(m, size) if params.upsample else m)
        shapes = {tuple(m.shape[2:]) for m in maps}
        if len(shapes) > 1:
            raise InvalidParamsError(
                f"Method {self.name!r}: layers {paths} have different resolutions "
                f"{sorted(shapes)}, so their maps cannot be stacked; pass upsample=True."
            )
        out = torch.cat(maps, 1) if len(maps) > 1 else maps[0]
        return out if create_graph else out.detach()

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: C
    ) -> torch.Tensor:
        return self.maps(model, inputs, target, params)


class WeightedCam(CamMethod[C]):
    """A CAM whose map is ``sum_k w_k * A_k``: subclasses give the weights."""

    @abstractmethod
    def weights(self, ctx: LayerContext[C]) -> torch.Tensor:
        """``(B, K)`` channel weights, or ``(B, K, *spatial)`` element-wise weights."""

    def layer_map(self, ctx: LayerContext[C]) -> torch.Tensor:
        w = self.weights(ctx)
        a = ctx.activations
        if w.ndim == 2:
            return torch.einsum("bk,bk...->b...", w.to(a.dtype), a)
        return (w * a).sum(1)


# --- gradient CAMs --------------------------------------------------------------------


class GradCam(WeightedCam[GradientCamParams]):
    """Grad-CAM: channels weighted by the spatial mean of the target's gradient.

    Several layers give one map per layer (stacked in the channel dimension).
    """

    name = "cnnvis.grad_cam"
    paper = "https://arxiv.org/abs/1610.02391"

    def weights(self, ctx: LayerContext[GradientCamParams]) -> torch.Tensor:
        return ctx.grads.mean(ctx.spatial)


class GradCamPlusPlus(WeightedCam[GradientCamParams]):
    """Grad-CAM++: positive gradients weighted by second/third-order terms (eq. 19)."""

    name = "cnnvis.grad_cam_pp"
    paper = "https://arxiv.org/abs/1710.11063"

    def weights(self, ctx: LayerContext[GradientCamParams]) -> torch.Tensor:
        g, a = ctx.grads, ctx.activations
        g2 = g * g
        total = a.sum(ctx.spatial, keepdim=True)
        alpha = g2 / (2 * g2 + total * g2 * g + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (torch.relu(g) * alpha).sum(ctx.spatial)


class XGradCam(WeightedCam[GradientCamParams]):
    """XGrad-CAM: gradients weighted by the activations' share of the channel sum."""

    name = "cnnvis.xgrad_cam"
    paper = "https://arxiv.org/abs/2008.02312"

    def weights(self, ctx: LayerContext[GradientCamParams]) -> torch.Tensor:
        a = ctx.activations
        total = a.sum(ctx.spatial, keepdim=True)
        return (ctx.grads * a / (total + 1e-7)).sum(ctx.spatial)


class HiResCam(WeightedCam[GradientCamParams]):
    """HiResCAM: the element-wise product of gradient and activation, summed over channels."""

    name = "cnnvis.hires_cam"
    paper = "https://arxiv.org/abs/2011.08891"

    def weights(self, ctx: LayerContext[GradientCamParams]) -> torch.Tensor:
        return ctx.grads


class LayerCam(WeightedCam[GradientCamParams]):
    """LayerCAM: activations weighted element-wise by the positive gradient."""

    name = "cnnvis.layer_cam"
    paper = "https://ieeexplore.ieee.org/document/9462463"

    def weights(self, ctx: LayerContext[GradientCamParams]) -> torch.Tensor:
        return torch.relu(ctx.grads)


# --- gradient-free CAMs -----------------------------------------------------------------


def channel_workload(
    params: ScoreCamParams | AblationCamParams,
    shape: tuple[int, ...],
    layers: Mapping[str, tuple[int, ...]],
    inputs: bool,
) -> Workload:
    """One evaluation per channel of every explained layer and item (the channel counts
    come from ``layers``; unknown without them); ``inputs``: ``batch_size`` whole
    inputs per pass (Score-CAM), else only the layers after ``layer`` run per copy."""
    paths = layer_paths(params.layer)
    if not all(p in layers for p in paths):
        return Workload()
    channels = sum(layers[p][0] for p in paths)
    return Workload(
        passes=channels,
        inputs=min(params.batch_size, shape[0] * channels) if inputs else None,
        counts=("layer",),
        fix=f"explain an earlier, narrower layer (now {channels:,} channels per item)",
        batch=("batch_size",) if inputs else (),
    )


def _rows_where(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the (item, channel) pairs where ``mask`` (``(B, K)``) holds."""
    return mask.flatten().nonzero().squeeze(1)


class ScoreCam(WeightedCam[ScoreCamParams]):
    """Score-CAM: channels weighted by the target score of the input masked by each
    (up-sampled, min-max scaled) channel, softmaxed over the channels (or its increase
    over the all-zero input's: segmentation's default); (item, channel) pairs batched."""

    name = "cnnvis.score_cam"
    paper = "https://arxiv.org/abs/1910.01279"
    uses_gradients = False
    forward_only = True  # the layer is read through its tap
    batch_params = ("batch_size",)
    pass_params = ("batch_size",)
    pass_unit = "pass"  # whole masked inputs per pass
    own_passes = True  # masks built per pass (method_passes)
    cost = "high"
    cost_note = (
        "one whole forward pass per channel of the layer and item (batched by "
        "batch_size): 2048 passes per image at ResNet-50's layer4, 512 at ResNet-18's; "
        "choose an earlier, narrower layer to make it cheaper"
    )

    def workload(
        self, params: ScoreCamParams, shape: tuple[int, ...], layers: Mapping[str, tuple[int, ...]]
    ) -> Workload:
        return channel_workload(params, shape, layers, inputs=True)

    def check_model(
        self, model: nn.Module, params: ScoreCamParams, trace: ModelTrace | None
    ) -> None:
        """Refuse the softmax over channels of a segmentation's summed class scores (see
        :func:`~esegeta_core.targets.summed_scores`): sums of logits over every pixel
        differ by hundreds between channels, so the softmax is one-hot and the map one
        channel's activation, whatever the others show."""
        if params.weighting == "softmax" and summed_scores(model):
            raise InvalidParamsError(
                f"Method {self.name!r} (plugin 'cnnvis'): weighting='softmax' over the "
                "channels of a segmentation model's class scores, sums of logits over "
                "every pixel, is one-hot: the map would be a single channel's activation. "
                "Use weighting='increase' (what the default weighting='auto' takes for "
                "segmentation)."
            )

    @staticmethod
    def weighting(model: nn.Module, params: ScoreCamParams) -> str:
        """The weighting used: ``params.weighting``, with ``"auto"`` resolved."""
        if params.weighting != "auto":
            return params.weighting
        return "increase" if summed_scores(model) else "softmax"

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: ScoreCamParams
    ) -> MethodResult:
        """The maps, with ``extras["weighting"]``: what ``weighting='auto'`` chose."""
        maps = self.maps(model, inputs, target, params)
        return MethodResult(maps, weighting=self.weighting(model, params))

    def weights(self, ctx: LayerContext[ScoreCamParams]) -> torch.Tensor:
        a, x = ctx.activations, ctx.inputs
        batch, channels = a.shape[:2]
        size = tuple(x.shape[2:])
        view = (-1, 1) + (1,) * len(size)
        scores = a.new_empty(batch * channels)
        increase = self.weighting(ctx.model, ctx.params) == "increase"
        # an all-zero channel masks the input to exactly 0, the baseline of 'increase':
        # one forward serves them all
        dead = a.flatten(2).abs().amax(2) == 0
        zero = None
        if increase or bool(dead.any()):
            zero = ctx.model(torch.zeros_like(x[:1]))[0].to(scores.dtype)
        if bool(dead.any()) and zero is not None:
            rows = _rows_where(dead)
            scores[rows] = zero[ctx.target[rows // channels]]
        live = _rows_where(~dead)

        def run(start: int, stop: int, channels_last: bool) -> torch.Tensor:
            rows = live[start:stop]
            items, chans = rows // channels, rows % channels
            # as in Score-CAM's reference code: align_corners=True, then min-max per map
            masks = F.interpolate(
                a[items, chans].unsqueeze(1),
                size=size,
                mode=interpolation_mode(len(size)),
                align_corners=True,
            )
            flat = masks.flatten(1)
            low, high = flat.amin(1).view(view), flat.amax(1).view(view)
            masked = x[items] * ((masks - low) / (high - low + 1e-8)).to(x.dtype)
            if channels_last:
                masked = masked.contiguous(memory_format=memory_format(True, masked.ndim))
            return target_pass_scores(ctx.model, masked, ctx.target[items])

        # passes planned under explain(auto_batch=True), else batch_size per pass
        scores[live] = method_passes(len(live), run, ctx.params.batch_size, x[:1]).to(scores.dtype)
        if increase and zero is not None:
            return scores.view(batch, channels) - zero[ctx.target].view(batch, 1)
        return torch.softmax(scores.view(batch, channels), dim=1)


class AblationCam(WeightedCam[AblationCamParams]):
    """Ablation-CAM: channels weighted by the relative drop of the target score when
    each channel is ablated (relative to the score's magnitude, so that a negative
    score does not invert the map); (item, channel) ablations batched."""

    name = "cnnvis.ablation_cam"
    paper = (
        "https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_"
        "Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020"
        "_paper.pdf"
    )
    uses_gradients = False
    forward_only = True  # the layer is read and replaced through its tap
    replays_layer = True
    batch_params = ("batch_size",)
    pass_params = ("batch_size",)
    own_passes = True  # layer replay builds its passes (method_passes)
    cost = "high"
    cost_note = (
        "one forward pass of the layers after `layer` per channel and item (2048 at "
        "ResNet-50's layer4); the layers before it run once per item, unless the model "
        "needs whole passes (then one whole pass per channel)"
    )

    def workload(
        self,
        params: AblationCamParams,
        shape: tuple[int, ...],
        layers: Mapping[str, tuple[int, ...]],
    ) -> Workload:
        return channel_workload(params, shape, layers, inputs=False)

    def weights(self, ctx: LayerContext[AblationCamParams]) -> torch.Tensor:
        a = ctx.activations
        batch, channels = a.shape[:2]
        value = ctx.params.ablation_value
        original = gather_target(ctx.scores, ctx.target).to(a.dtype)
        # ablating a channel that already holds the ablation value changes nothing
        same = (a.flatten(2) == value).all(2)
        ablated = original.unsqueeze(1).expand(batch, channels).flatten().clone()
        rows = _rows_where(~same)
        pairs = [divmod(r, channels) for r in rows.tolist()]  # one host read, not one per row

        def build(item: int, chans: list[int], out: torch.Tensor) -> None:
            out.copy_(a[item].expand(len(chans), *a.shape[1:]))
            slots = torch.arange(len(chans), device=a.device)
            out.index_put_((slots, device_index(chans, a.device)), device_scalar(value, out))

        if pairs:
            ablated[rows] = replaced_scores(
                ctx.model, ctx.module, ctx.inputs, a, ctx.target, original, pairs, build,
                chunk=ctx.params.batch_size, method=self.name, prefix=ctx.prefix,
            ).to(ablated.dtype)  # fmt: skip
        # the paper divides the drop by the score, which it takes to be positive; by a
        # negative score (a class that is not predicted, a segmentation class winning
        # with negative logits) the division flipped every weight's sign, and the map
        # showed the evidence against the class: divide by its magnitude (the same where
        # the score is positive, pytorch-grad-cam's and the paper's case). A score of
        # zero (a segmentation class that wins no pixel) would give NaN: the plain drop
        magnitude = original.abs()
        scale = torch.where(magnitude > 1e-12, magnitude, torch.ones_like(magnitude))
        return (original.unsqueeze(1) - ablated.view(batch, channels)) / scale.unsqueeze(1)


class EigenCam(CamMethod[LayersParams]):
    """Eigen-CAM: the activations projected on their first principal component
    (no target dependence; the sign makes the map correlate with the summed activation)."""

    name = "cnnvis.eigen_cam"
    paper = "https://arxiv.org/abs/2008.00299"
    uses_gradients = False

    def layer_map(self, ctx: LayerContext[LayersParams]) -> torch.Tensor:
        a = ctx.activations
        flat = torch.nan_to_num(a.float()).flatten(2).transpose(1, 2)  # (B, N, K)
        flat = flat - flat.mean(1, keepdim=True)
        v = torch.linalg.svd(flat, full_matrices=False).Vh[:, 0]  # (B, K)
        # SVD's sign is arbitrary; <projection, centred channel sum> = s1^2 * sum(v)
        v = v * torch.where(v.sum(1, keepdim=True) < 0, -1.0, 1.0)
        projection = (flat @ v.unsqueeze(2)).squeeze(2)
        return projection.view(a.shape[0], *a.shape[2:]).to(a.dtype)


class Cam(WeightedCam[CamParams]):
    """CAM: channels weighted by the target's row of the classifier's fully connected
    layer (a network ending in global average pooling and a linear layer)."""

    name = "cnnvis.cam"
    paper = "https://arxiv.org/abs/1512.04150"
    uses_gradients = False
    requirements = (
        "a classifier ending in global average pooling and one linear layer (or 1x1 "
        "convolution) from the explained layer's channels to the classes",
    )

    def weights(self, ctx: LayerContext[CamParams]) -> torch.Tensor:
        channels, classes = ctx.activations.shape[1], ctx.scores.shape[1]
        path = ctx.params.fc_layer
        if path is None:
            fc = _find_fc(ctx.model, channels, classes, self.name)
        else:
            fc = resolve_layer(ctx.model, path, method=self.name)
        weight = _fc_weight(fc, path or "(found)", channels, classes, self.name)
        return weight[ctx.target.to(weight.device)]


def _fc_matrix(module: nn.Module) -> torch.Tensor | None:
    """The ``(out, in)`` weight of a Linear or a 1x1 convolution, else None."""
    if isinstance(module, nn.Linear):
        return module.weight
    if (
        isinstance(module, nn.modules.conv._ConvNd)
        and all(k == 1 for k in module.kernel_size)
        and module.groups == 1
    ):
        return module.weight.flatten(1)
    return None


def _find_fc(model: nn.Module, channels: int, classes: int, method: str) -> nn.Module:
    found = None
    for module in unwrap(model).modules():
        w = _fc_matrix(module)
        if w is not None and tuple(w.shape) == (classes, channels):
            found = module
    if found is None:
        raise NotApplicableError(
            f"Method {method!r}: no nn.Linear or 1x1 convolution maps the layer's {channels} "
            f"channels to the model's {classes} classes. CAM needs a network ending in "
            "global average pooling and one linear layer, explained at the layer that feeds "
            "the pooling: pass that layer (and fc_layer=... if the search misses it), or use "
            "'cnnvis.grad_cam', which needs no particular head."
        )
    return found


def _fc_weight(
    module: nn.Module, path: str, channels: int, classes: int, method: str
) -> torch.Tensor:
    w = _fc_matrix(module)
    if w is None or tuple(w.shape) != (classes, channels):
        shape = None if w is None else tuple(w.shape)
        raise InvalidParamsError(
            f"Method {method!r}: fc_layer {path!r} ({type(module).__name__}, weight {shape}) "
            f"must be an nn.Linear or 1x1 convolution from the layer's {channels} channels to "
            f"the model's {classes} classes."
        )
    return w


# --- guided Grad-CAM ------------------------------------------------------------------


class GuidedGradCam(ActivationRuleMethod, Explainer[GuidedGradCamParams]):
    """Guided Grad-CAM: guided backpropagation times the up-sampled Grad-CAM map."""

    name = "cnnvis.guided_grad_cam"
    paper = "https://arxiv.org/abs/1610.02391"
    family = "cam"
    output = "input"
    needs_layer = True

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: GuidedGradCamParams,
    ) -> torch.Tensor:
        cam_params = GradientCamParams(
            layer=params.layer, relu=params.relu, upsample=True, create_graph=params.create_graph
        )
        cam = GradCam().maps(model, inputs, target, cam_params)
        with relu_rule(model, "guided", inputs, self.name):
            guided = input_gradient(model, inputs, target, create_graph=params.create_graph)
        return guided * cam


CAM_METHODS: list[type[Explainer]] = [
    Cam,
    GradCam,
    GradCamPlusPlus,
    GuidedGradCam,
    ScoreCam,
    HiResCam,
    XGradCam,
    LayerCam,
    EigenCam,
    AblationCam,
]

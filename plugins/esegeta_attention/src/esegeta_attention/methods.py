"""The esegeta methods ``attention.raw``, ``attention.rollout`` and ``attention.gae``.

Each reads the softmax probabilities of the model's attention blocks during one forward
pass (the adapters of :mod:`esegeta_attention.adapters` switch the blocks it needs to
their unfused path for the call and put them back afterwards) and returns a map at the
patch grid, ``(B, 1, *grid)``: the class token's row over the patch tokens, or for
models without a class token the mean of the patch tokens' rows (parameter ``query``).
``Explanation.saliency()`` up-samples it to the input.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import torch
from torch import nn

from esegeta_attention.adapters import SUPPORTED
from esegeta_attention.params import GAEParams, RawAttentionParams, RolloutParams, TokenParams
from esegeta_attention.rollout import (
    discard_lowest,
    fuse_heads,
    gae_cam,
    gae_rows,
    query_rows,
    rolled_rows,
    rollout_matrix,
    row_map,
    uses_class_token,
)
from esegeta_attention.sites import (
    PLUGIN,
    AttentionCall,
    CaptureLog,
    Discovery,
    Site,
    capturing,
    discover,
    require_attention,
    token_layout,
)
from esegeta_core import (
    EsegetaError,
    Explainer,
    InvalidParamsError,
    MethodResult,
    NotApplicableError,
    resolve_layer,
    unwrap,
)
from esegeta_core.layouts import Layout
from esegeta_core.toolkit import gather_target
from esegeta_core.tracing import ModelTrace

log = logging.getLogger(__name__)

ABNAR_2020 = "https://arxiv.org/abs/2005.00928"
CHEFER_2021 = "https://arxiv.org/abs/2103.15679"
VIT_2020 = "https://arxiv.org/abs/2010.11929"

P = TypeVar("P", bound=TokenParams)
"""An attention method's parameter model."""
B = TypeVar("B", RolloutParams, GAEParams)
"""The parameter model of a method that combines the blocks from ``start_layer`` on."""


class _AttentionMethod(Explainer[P]):
    """Shared by the attention methods: discovery, the model check, the token grid."""

    family = "layer"
    output = "layer"
    ranks = (2, 3)
    cost = "low"
    layout_param = "tokens"  # explain(reshape="tokens:1:14x14") sets tokens="1:14x14"
    requirements: ClassVar[tuple[str, ...]] = (
        f"global self-attention modules this plugin can read: {SUPPORTED}",
        "no windowed attention (Swin, SwinUNETR): every token must be able to attend to "
        "every other token",
        "one token set through the blocks: the patch grid (2D or 3D, found from the input "
        "and the patch embedding) with any class, distillation or register tokens before it",
    )
    mixes_blocks: ClassVar[bool] = True
    """Whether the method combines blocks (then any unsupported attention that runs is an
    error: its token mixing would be missing from the product)."""

    def check_model(self, model: nn.Module, params: P, trace: ModelTrace | None) -> None:
        self._sites(model, params)

    def _sites(self, model: nn.Module, params: P) -> tuple[Discovery, list[Site]]:
        """The discovery and the sites this call reads; errors before anything runs."""
        found = discover(unwrap(model))
        require_attention(found, self.name)
        return found, self._chosen(model, found, params)

    @abstractmethod
    def _chosen(self, model: nn.Module, found: Discovery, params: P) -> list[Site]:
        """The sites this call reads, among ``found.sites`` (never empty here)."""

    def _capturing(
        self,
        found: Discovery,
        sites: Sequence[Site],
        on_call: Callable[[AttentionCall], None],
        inputs: torch.Tensor,
    ) -> AbstractContextManager[CaptureLog]:
        """:func:`capturing` of ``sites`` for one pass on ``inputs``; a method that
        combines blocks also watches the attention modules no adapter reads."""
        return capturing(
            sites,
            on_call,
            batch=inputs.shape[0],
            method=self.name,
            watch=found.unknown if self.mixes_blocks else (),
            measure=found.sites,
        )

    def _layout(
        self, counts: Sequence[int], inputs: torch.Tensor, model: nn.Module, tokens: str | None
    ) -> Layout:
        """The token layout of blocks with ``counts`` tokens (all equal, else an error)."""
        distinct = sorted(set(counts))
        if len(distinct) > 1:
            raise NotApplicableError(
                f"Method {self.name!r} (plugin {PLUGIN!r}): the number of tokens changes "
                f"between the attention blocks ({', '.join(map(str, distinct))}): a "
                "hierarchical (pyramid) transformer has no single token set to roll out."
            )
        return token_layout(distinct[0], inputs, unwrap(model), self.name, tokens)

    def _check_run(self, sites: Sequence[Site], log_: CaptureLog) -> list[str]:
        """The paths of the sites that ran; errors when none did, when the blocks mix
        different numbers of tokens (a pyramid), or when an attention module no adapter
        reads ran (for methods that combine blocks)."""
        counts = sorted(set(log_.tokens.values()))
        if len(counts) > 1:
            raise NotApplicableError(
                f"Method {self.name!r} (plugin {PLUGIN!r}): the attention blocks of this "
                f"model mix different numbers of tokens ({', '.join(map(str, counts))}): a "
                "hierarchical (pyramid) transformer such as SegFormer or PVT has no single "
                "patch grid whose tokens the blocks share, so its attention cannot be read as "
                "one map over the image, nor multiplied across blocks."
            )
        ran = [s.path for s, n in zip(sites, log_.calls) if n]
        if not ran:
            raise NotApplicableError(
                f"Method {self.name!r} (plugin {PLUGIN!r}): the attention block(s) "
                f"{_paths(sites)} did not run in the forward pass to the scores."
            )
        if self.mixes_blocks and log_.unknown_ran:
            raise NotApplicableError(
                f"Method {self.name!r} (plugin {PLUGIN!r}): attention modules this plugin "
                f"cannot read also ran ({', '.join(log_.unknown_ran)}), so their token "
                "mixing would be missing from the product of the blocks. Supported: "
                f"{SUPPORTED}."
            )
        return ran

    @staticmethod
    def _extras(
        sites: Sequence[Site], ran: list[str], layout: Layout, class_token: bool
    ) -> dict[str, object]:
        """The explanation's extras: the blocks read, how, and the token layout."""
        tokens = layout.record()
        tokens["query"] = "class token" if class_token else "mean of the patch tokens"
        return {
            "attention_blocks": ran,
            "attention_access": sorted({s.adapter.family for s in sites}),
            "tokens": tokens,
        }


class _BlockProduct(_AttentionMethod[B]):
    """A method that combines the attention blocks from ``start_layer`` on."""

    def _chosen(self, model: nn.Module, found: Discovery, params: B) -> list[Site]:
        start = params.start_layer
        count = len(found.sites)
        if not -count <= start < count:
            raise InvalidParamsError(
                f"Method {self.name!r}: start_layer={start} is out of range: "
                f"{found.model} has {count} attention block(s) ({_paths(found.sites)}); use "
                f"0 to {count - 1}, or -1 to -{count}."
            )
        return found.sites[start:]


class RawAttention(_AttentionMethod[RawAttentionParams]):
    """Raw attention: one block's attention from the class token to the patches, heads
    fused (mean, max or min).

    The attention probabilities of one block (default: the last), fused over heads; the
    map is the class token's row over the patch tokens (for models without a class token,
    such as UNETR, the mean of the patch tokens' rows). Not target-specific.
    """

    name = "attention.raw"
    needs_layer = True
    paper = VIT_2020
    mixes_blocks = False
    cost_note = "one forward pass, with the chosen block's attention unfused"

    def _chosen(self, model: nn.Module, found: Discovery, params: RawAttentionParams) -> list[Site]:
        if params.layer is None:
            return [found.sites[-1]]
        module = resolve_layer(model, params.layer, method=self.name)
        inside = {id(m) for m in module.modules()}
        hits = [s for s in found.sites if id(s.module) in inside]
        if len(hits) != 1:
            what = (
                "is not an attention block: it neither is nor holds one of the attention "
                "modules this plugin reads"
                if not hits
                else f"holds {len(hits)} attention blocks ({_paths(hits)}); name one"
            )
            raise InvalidParamsError(
                f"Method {self.name!r}: layer {params.layer!r} ({type(module).__name__}) "
                f"{what}. Attention blocks of this model: {_paths(found.sites)}."
            )
        return hits

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        params: RawAttentionParams,
    ) -> MethodResult:
        found, sites = self._sites(model, params)
        calls: list[AttentionCall] = []

        def keep_fused(call: AttentionCall) -> None:
            fused = fuse_heads(call.probs.detach().float(), params.head_fusion)
            calls.append(AttentionCall(call.site, fused, fused))

        with torch.no_grad(), self._capturing(found, sites, keep_fused, inputs) as got:
            model(inputs)
        ran = self._check_run(sites, got)
        last = calls[-1]  # a block called several times: its last call
        layout = token_layout(last.probs.shape[-1], inputs, unwrap(model), self.name, params.tokens)
        class_token = uses_class_token(layout, params.query, self.name)
        extras = self._extras(sites, ran, layout, class_token)
        if len(calls) > 1:
            extras["calls"] = len(calls)
        rows = torch.bmm(query_rows(layout, class_token, last.probs), last.probs)
        return MethodResult(row_map(rows, layout), **extras)


@dataclass
class _Rolled:
    """What rollout keeps while the blocks run: the token count and layout of the first
    call, an error to raise after the pass, and the blocks' factors."""

    n: int = 0
    layout: Layout | None = None
    error: EsegetaError | None = None
    factors: list[torch.Tensor] = field(default_factory=list)


class AttentionRollout(_BlockProduct[RolloutParams]):
    """Attention rollout (Abnar & Zuidema 2020): the blocks' attention, heads fused and
    the residual added as the identity, multiplied from the first block to the last.

    Per block the heads are fused (mean, max or min), the ``discard_ratio`` lowest
    entries dropped (never the class token's attention to itself), the identity added
    and the rows renormalised; the product over the blocks (from ``start_layer``) is read
    at the class token's row over the patch tokens (no class token: the mean of the patch
    tokens' rows). Not target-specific.
    """

    name = "attention.rollout"
    paper = ABNAR_2020
    cost_note = (
        "one forward pass with every block's attention unfused, plus an N x N matrix product "
        "per block and item (N tokens)"
    )

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: RolloutParams
    ) -> MethodResult:
        found, sites = self._sites(model, params)
        rolled = _Rolled()

        def roll(call: AttentionCall) -> None:
            if rolled.error is not None:
                return
            n = call.probs.shape[-1]
            try:  # the grid is needed now (the class token is exempt from discarding)
                if rolled.layout is None:
                    rolled.n = n
                    rolled.layout = self._layout([n], inputs, model, params.tokens)
                elif n != rolled.n:
                    self._layout([rolled.n, n], inputs, model, None)  # raises
            except EsegetaError as exc:  # raised after the pass: a pyramid is said first
                rolled.error = exc
                return
            keep = 0 if rolled.layout.extra else None
            fused = fuse_heads(call.probs.detach().float(), params.head_fusion)
            rolled.factors.append(rollout_matrix(discard_lowest(fused, params.discard_ratio, keep)))

        with torch.no_grad(), self._capturing(found, sites, roll, inputs) as got:
            model(inputs)
        ran = self._check_run(sites, got)
        if rolled.error is not None:
            raise rolled.error
        layout, factors = rolled.layout, rolled.factors
        assert layout is not None  # set by the first call, and a call ran
        class_token = uses_class_token(layout, params.query, self.name)
        rows = rolled_rows(query_rows(layout, class_token, factors[0]), factors)
        return MethodResult(row_map(rows, layout), **self._extras(sites, ran, layout, class_token))


class GenericAttentionExplainability(_BlockProduct[GAEParams]):
    """Chefer et al. 2021's gradient-weighted attention relevance (GAE): R <- R +
    mean_heads((grad A * A)^+) R over the blocks, read at the class token.

    Starting from the identity, each block's attention probabilities A are weighted by the
    gradient of the target's score with respect to them, negative contributions removed and
    the heads averaged; the relevance R accumulates these through the blocks (the rule for
    self-attention of "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers", ICCV 2021). The map is R's class-token row over the
    patch tokens (no class token: the mean of the patch tokens' rows). Target-specific;
    one forward and one backward pass for the whole batch (each item's own target).
    """

    name = "attention.gae"
    paper = CHEFER_2021
    cost_note = (
        "one forward pass with every block's attention unfused and one backward pass from "
        "the target scores down to the first block's attention, plus an N x N matrix product "
        "per block and item (N tokens)"
    )

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, params: GAEParams
    ) -> MethodResult:
        found, sites = self._sites(model, params)
        calls: list[AttentionCall] = []
        x = inputs.detach().requires_grad_(True)  # a graph even when the model is frozen
        with torch.enable_grad(), self._capturing(found, sites, calls.append, inputs) as got:
            scores = model(x)
        ran = self._check_run(sites, got)
        layout = self._layout([c.probs.shape[-1] for c in calls], inputs, model, params.tokens)
        class_token = uses_class_token(layout, params.query, self.name)
        score = gather_target(scores, target).sum()
        grads = torch.autograd.grad(score, [c.source for c in calls], allow_unused=True)
        cams = []
        for call, grad in zip(calls, grads):
            if grad is None:  # this block does not reach the scores: its term is zero
                log.debug("%s: no gradient reaches %s", self.name, sites[call.site].path)
                continue
            attn = call.probs.detach().float()
            cams.append(gae_cam(attn, grad.view(call.probs.shape).float()))
        rows = gae_rows(query_rows(layout, class_token, calls[0].probs), cams)
        return MethodResult(row_map(rows, layout), **self._extras(sites, ran, layout, class_token))


def _paths(sites: Sequence[Site]) -> str:
    paths = [s.path or "(the model)" for s in sites]
    return ", ".join(paths[:8]) + (f", ... ({len(paths)} in all)" if len(paths) > 8 else "")


METHODS: list[type[Explainer]] = [RawAttention, AttentionRollout, GenericAttentionExplainability]

__all__ = [
    "METHODS",
    "AttentionRollout",
    "GenericAttentionExplainability",
    "RawAttention",
]

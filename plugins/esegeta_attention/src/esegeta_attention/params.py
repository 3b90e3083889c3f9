"""Parameters of the attention methods."""

from __future__ import annotations

from pydantic import Field

from esegeta_attention.rollout import HeadFusion, Query
from esegeta_core import MethodParams, ModulePath

_QUERY = (
    "Which query tokens the map is read from. 'auto': the class token's row when the model "
    "has tokens before the patch grid (class, distillation, register tokens; the class "
    "token is the first), else the mean of all patch tokens' rows (MONAI UNETR, ViTs "
    "without a class token). 'class' or 'mean' force one reading; either way the map is "
    "over the patch tokens only."
)

_HEADS = "How the heads of a block are fused: their mean, maximum or minimum."

_TOKENS = (
    "The token layout when it cannot be inferred, as 'EXTRA:GRID': the number of tokens "
    "before the patch grid (class, distillation, register tokens) and the grid, such as "
    "'1:14x14' (a class token and 14x14 patches) or '0:6x6x6' (3D, no class token). None: "
    "inferred from the input's shape and the model's patch embedding."
)


class TokenParams(MethodParams):
    """What every attention method takes: the token layout when it cannot be inferred."""

    tokens: str | None = Field(None, pattern=r"^\d+:\d+(x\d+)*$", description=_TOKENS)


_START = (
    "Index of the first attention block taken into the product (Python indexing over the "
    "attention blocks in definition order: 0 = the first, -1 = the last only); the blocks "
    "before it keep their fused attention and are not read."
)


class RawAttentionParams(TokenParams):
    """One block's attention (``attention.raw``)."""

    layer: ModulePath | None = Field(
        None,
        description="Dotted path of an attention block: the attention module itself "
        "('blocks.3.attn', 'encoder.layers.encoder_layer_3.self_attention') or a block "
        "holding exactly one ('blocks.3'). None: the last attention block.",
    )
    head_fusion: HeadFusion = Field("mean", description=_HEADS)
    query: Query = Field("auto", description=_QUERY)


class RolloutParams(TokenParams):
    """Attention rollout (``attention.rollout``)."""

    head_fusion: HeadFusion = Field("mean", description=_HEADS)
    discard_ratio: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of each block's fused attention entries set to zero before "
        "the identity is added, lowest first (never the class token's attention to itself), "
        "as in jacobgil/vit-explain; 0 is Abnar & Zuidema's rollout.",
    )
    start_layer: int = Field(0, description=_START)
    query: Query = Field("auto", description=_QUERY)


class GAEParams(TokenParams):
    """Chefer et al. 2021's relevance (``attention.gae``)."""

    start_layer: int = Field(0, description=_START)
    query: Query = Field("auto", description=_QUERY)


__all__ = ["GAEParams", "RawAttentionParams", "RolloutParams", "TokenParams"]

"""esegeta-attention: attention maps of vision transformers as esegeta methods.

``attention.raw`` (one block's attention), ``attention.rollout`` (Abnar & Zuidema 2020)
and ``attention.gae`` (Chefer et al. 2021's gradient-weighted relevance), 2D and 3D, on
timm, torchvision, MONAI and Hugging Face transformers. Importing this package imports
none of those libraries: attention modules are recognised by class name.
"""

from __future__ import annotations

from esegeta_attention.methods import (
    METHODS,
    AttentionRollout,
    GenericAttentionExplainability,
    RawAttention,
)
from esegeta_core import Explainer, hookimpl

__all__ = [
    "METHODS",
    "AttentionRollout",
    "GenericAttentionExplainability",
    "RawAttention",
    "esegeta_register_methods",
]


@hookimpl
def esegeta_register_methods() -> list[type[Explainer]]:
    """The attention methods."""
    return list(METHODS)

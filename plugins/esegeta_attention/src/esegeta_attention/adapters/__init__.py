"""One adapter per family of attention modules (see :mod:`.base` for the contract).

=============  ==================================================  =========================
family         modules                                             how the probabilities come
=============  ==================================================  =========================
timm           ``Attention``, ``AttentionRope``, ``EvaAttention``,  ``fused_attn`` off, hook on
               BEiT ``Attention``, ``RelPosAttention``             ``attn_drop``
torch          ``nn.MultiheadAttention`` (torchvision ViT)         ``need_weights=True`` per call
monai          ``SABlock`` (ViT, UNETR)                            flash off, hook on
                                                                   ``drop_weights``
huggingface    ``_can_record_outputs["attentions"]`` modules       ``"eager"`` implementation,
                                                                   hook on the module's output
=============  ==================================================  =========================
"""

from __future__ import annotations

from esegeta_attention.adapters.base import AttentionAdapter, Record
from esegeta_attention.adapters.huggingface import HuggingFaceAdapter
from esegeta_attention.adapters.monai import MonaiAdapter
from esegeta_attention.adapters.timm import TimmAdapter
from esegeta_attention.adapters.torch_mha import TorchMHAAdapter


def adapters() -> list[AttentionAdapter]:
    """Fresh instances of every adapter (some remember what they found)."""
    return [TimmAdapter(), TorchMHAAdapter(), MonaiAdapter(), HuggingFaceAdapter()]


SUPPORTED = (
    "timm Attention, AttentionRope, EvaAttention, BEiT Attention and RelPosAttention (ViT, "
    "DeiT, register-token ViTs, EVA, BEiT); torch.nn.MultiheadAttention (torchvision's "
    "VisionTransformer); MONAI SABlock (ViT, UNETR); Hugging Face attention modules named by "
    "a model's _can_record_outputs['attentions'] (ViT, DeiT, DINOv2, ViT-MAE, ...)"
)
"""The supported modules, in words (for messages)."""

__all__ = [
    "SUPPORTED",
    "AttentionAdapter",
    "HuggingFaceAdapter",
    "MonaiAdapter",
    "Record",
    "TimmAdapter",
    "TorchMHAAdapter",
    "adapters",
]

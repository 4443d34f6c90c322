"""Attention fusions: regions ``[B, K, Dv]`` + words ``[B, T, Dq]`` (or a question vector) ->
``AttentionOutput(fused [B, out_dim], v_attn [B, G, K], q_attn [B, G, T], extras)``.

Importing this package registers every attention fusion with the registry.
"""

from ._base import AttentionFusion, AttentionOutput, check_attention_inputs, resolve_fusion
from .soft import SoftAttention

__all__ = ["AttentionFusion", "AttentionOutput", "check_attention_inputs", "resolve_fusion", "SoftAttention"]

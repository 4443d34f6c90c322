"""Attention fusions: regions ``[B, K, Dv]`` + words ``[B, T, Dq]`` (or a question vector) ->
``AttentionOutput(fused [B, out_dim], v_attn [B, G, K], q_attn [B, G, T], extras)``.

Importing this package registers every attention fusion with the registry.
"""

from ._base import AttentionFusion, AttentionOutput, check_attention_inputs, resolve_fusion
from .soft import SoftAttention
from .memory import DMN
from .stacked import SAN, SLA, SMem
from .updown import MultiSource, UpDown
from .coattention import CoAttention, DualAttention
from .high_order import HighOrderAttention
from .recurrent import DualRecurrentAttention, RecurrentAttentionUnit
from .transformer import LXMERT, MCAN, ViLBERT
from .bilinear_attention import BilinearAttention, BlockAttention, MCBAttention, MFBCoAttention, MFHCoAttention, MLBAttention, MutanAttention
from .ban import BAN, Counter
from .relational import RelationNetwork

__all__ = ["AttentionFusion", "AttentionOutput", "check_attention_inputs", "resolve_fusion", "SoftAttention", "SAN", "SLA", "SMem", "DMN", "UpDown", "MultiSource", "CoAttention", "DualAttention", "DualRecurrentAttention", "RecurrentAttentionUnit", "HighOrderAttention", "ViLBERT", "LXMERT", "MCAN", "MCBAttention", "MLBAttention", "MFBCoAttention", "MFHCoAttention", "BilinearAttention", "MutanAttention", "BlockAttention", "BAN", "Counter", "RelationNetwork"]

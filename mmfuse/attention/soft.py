"""Soft (question-guided) attention over regions.

Papers: Zhu et al., "Visual7W: Grounded question answering in images", CVPR 2016; Xu et al.,
"Show, attend and tell", ICML 2015; Shih et al., "Where to look: Focus regions for visual
question answering", CVPR 2016.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, masked_softmax
from ..layers import ActivationArg, make_activation
from ._base import AttentionFusion, AttentionOutput, resolve_fusion

__all__ = ["SoftAttention", "fusion_num_parameters"]


def fusion_num_parameters(module: nn.Module) -> int:
    """A sub-fusion's stated parameter count, or its registered count for a foreign module."""
    stated = getattr(module, "expected_num_parameters", None)
    return stated() if callable(stated) else sum(p.numel() for p in module.parameters())


@register_fusion(
    "soft_attention",
    kind="attention",
    modalities="2",
    paper="Zhu et al., CVPR 2016 (Visual7W); Xu et al., ICML 2015; Shih et al., CVPR 2016",
    tiny={"hidden_dim": 8},
)
class SoftAttention(AttentionFusion):
    """Question-guided soft attention over regions, with any vector fusion inside.

    For each region ``h_i = σ(f(v_i, q))`` with ``f`` a vector fusion ``(Dv, Dq) -> hidden_dim``,
    scores ``a_{g,i} = w_g^T h_i + b_g`` for ``G`` glimpses, ``α_g = softmax_i(a_g)`` over the
    valid regions, attended vectors ``v̂_g = sum_i α_{g,i} v_i``, and
    ``fused = f_out([v̂_1; ..; v̂_G], q)`` with ``f_out`` a vector fusion ``(G·Dv, Dq) -> out_dim``.
    A question given as words is averaged over its valid words first.

    Args:
        v_dim, q_dim, out_dim: the contract.
        glimpses: G.
        hidden_dim: width of the scoring fusion's output.
        fusion: the scoring fusion ``f``: a registry name (default ``"concat"``, i.e. a Linear on
            ``[v_i; q]``) or a module taking ``(Dv, Dq) -> hidden_dim``.
        output_fusion: ``f_out``, a name or a module ``(G·Dv, Dq) -> out_dim``; ``None`` = the
            same registry name as ``fusion`` (``"concat"`` when ``fusion`` is a module).
        fusion_kwargs: extra knobs for the fusions built by name (e.g. ``{"factor": 5}``).
        activation: σ (tanh).

    Parameters: ``P(f) + (hidden_dim + 1)·G + P(f_out)``, ``P`` the sub-fusions' counts.

    Example::

        att = SoftAttention(2048, 1024, 1000, glimpses=2, fusion="mfb", fusion_kwargs={"factor": 5})
        out = att(v, q, v_mask=mask)       # out.fused [B, 1000], out.v_attn [B, 2, K]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 1,
        hidden_dim: int = 512,
        fusion: str | nn.Module = "concat",
        output_fusion: str | nn.Module | None = None,
        fusion_kwargs: dict[str, Any] | None = None,
        activation: ActivationArg = "tanh",
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim)
        name = self.fusion_name
        check_positive(name, glimpses=glimpses, hidden_dim=hidden_dim)
        self.glimpses, self.hidden_dim = glimpses, hidden_dim
        kw = dict(device=device, dtype=dtype)
        fkw = dict(fusion_kwargs or {})
        self.score_fusion = resolve_fusion(fusion, name, (v_dim, q_dim), hidden_dim, **fkw, **kw)
        if output_fusion is None:
            output_fusion = fusion if isinstance(fusion, str) else "concat"
        self.output_fusion = resolve_fusion(output_fusion, name, (glimpses * v_dim, q_dim), out_dim, **fkw, **kw)
        self.activation = make_activation(activation, name)
        self.score = nn.Linear(hidden_dim, glimpses, **kw)

    def attention(self, v: Tensor, q_vec: Tensor, v_mask: Tensor | None) -> Tensor:
        """``α``: Tensor[B, G, K] from regions [B, K, Dv] and a question vector [B, Dq]."""
        h = self.activation(self.score_fusion(v, q_vec.unsqueeze(1)))  # [B, K, H]
        logits = self.score(h).transpose(1, 2)  # [B, G, K]
        return masked_softmax(logits, None if v_mask is None else v_mask.unsqueeze(1))

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q_vec = self.question_vector(q, q_mask)  # [B, Dq]
        alpha = self.attention(v, q_vec, v_mask)  # [B, G, K]
        v_hat = torch.einsum("bgk,bkd->bgd", alpha, v).flatten(1)  # [B, G*Dv]
        fused = self.output_fusion(v_hat, q_vec)
        return AttentionOutput(fused, alpha, None, {})

    def expected_num_parameters(self) -> int:
        return (
            fusion_num_parameters(self.score_fusion)
            + (self.hidden_dim + 1) * self.glimpses
            + fusion_num_parameters(self.output_fusion)
        )

"""Top-down attention over bottom-up regions, and attention over several visual sources.

Papers:
- Anderson, He, Buehler, Teney, Johnson, Gould & Zhang, "Bottom-up and top-down attention for
  image captioning and visual question answering", CVPR 2018 (``updown``), and the popular
  reimplementation hengyuan-hu/bottom-up-attention-vqa (its ``NewAttention`` model).
- Lu, Li, Zhang, Wang & Wang, "Co-attending free-form regions and detections with multi-modal
  multiplicative feature embedding for visual question answering", AAAI 2018 (``multi_source``;
  reference code lupantech/dual-mfa-vqa).

Axis legend of the einsums: ``b`` batch, ``g`` glimpses, ``k`` regions, ``d`` / ``h`` features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from .._registry import register_fusion
from ..functional import check_positive, l2_normalize, masked_softmax
from ..layers import ConcatLinear, dropout_or_identity
from ._base import AttentionFusion, AttentionOutput, resolve_fusion
from .soft import fusion_num_parameters

__all__ = ["GatedTanh", "UpDown", "MultiSource"]

VARIANTS = ("paper", "hengyuan-hu")


class GatedTanh(nn.Module):
    """The gated hyperbolic tangent of Up-Down: ``y = tanh(W x + b) ⊙ sigmoid(W' x + b')``.

    ``x`` may be given as several tensors whose concatenation is the input (``[v_i; q]``); they
    are not copied when their leading dims only broadcast (see
    :class:`~mmfuse.layers.ConcatLinear`). Tensor[..., D_m] each -> Tensor[..., out_dim].

    Parameters: ``(sum(in_dims) + 1)·2·out_dim`` (``W`` and ``W'`` are held as one Linear).
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int, device=None, dtype=None):
        super().__init__()
        self.in_dims, self.out_dim = tuple(in_dims), out_dim
        self.proj = ConcatLinear(self.in_dims, 2 * out_dim, device=device, dtype=dtype)

    def forward(self, *xs: Tensor) -> Tensor:
        y, gate = self.proj(*xs).chunk(2, dim=-1)
        return torch.tanh(y) * torch.sigmoid(gate)


class _ReluLinear(nn.Module):
    """hengyuan-hu's ``FCNet([d_in, d_out])``: ``ReLU(weight_norm(Linear)(x))``, g a scalar."""

    def __init__(self, d_in: int, d_out: int, device=None, dtype=None):
        super().__init__()
        self.lin = weight_norm(nn.Linear(d_in, d_out, device=device, dtype=dtype), dim=None)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.lin(x))


class _ReluProduct(nn.Module):
    """hengyuan-hu's attention joint representation ``ReLU(W_v v) ⊙ ReLU(W_q q)``."""

    def __init__(self, v_dim: int, q_dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.in_dims, self.out_dim = (v_dim, q_dim), out_dim
        self.v_proj = _ReluLinear(v_dim, out_dim, device, dtype)
        self.q_proj = _ReluLinear(q_dim, out_dim, device, dtype)

    def forward(self, v: Tensor, q: Tensor) -> Tensor:
        return self.v_proj(v) * self.q_proj(q)


def _wn_linear_params(d_in: int, d_out: int) -> int:
    """A weight-normed Linear with ``dim=None``: direction ``v``, scalar ``g``, bias."""
    return d_in * d_out + 1 + d_out


@register_fusion(
    "updown",
    kind="attention",
    modalities="2",
    paper="Anderson et al., CVPR 2018 (Bottom-Up and Top-Down attention)",
    tiny={"hidden_dim": 8},
)
class UpDown(AttentionFusion):
    """Up-Down top-down attention over regions and the product joint embedding.

    ``variant="paper"`` (Anderson et al.; every non-linear layer a gated tanh ``f``)::

        a_{g,i} = w_g^T f_a([v_i; q]) + b_g,   α_g = softmax_i(a_g) over the valid regions
        v̂ = [sum_i α_{1,i} v_i; ..; sum_i α_{G,i} v_i]
        fused = W_o (f_q(q) ⊙ f_v(v̂)) + b_o

    ``variant="hengyuan-hu"`` (hengyuan-hu/bottom-up-attention-vqa, ``NewAttention``): every
    Linear is weight-normed (``weight_norm(dim=None)``, a scalar ``g``), ``f_a`` becomes
    ``ReLU(W_v v_i) ⊙ ReLU(W_q q)`` followed by dropout 0.2, and ``f_q``, ``f_v`` are
    ``ReLU(W x)``; its default width is the repository's 1024.

    ``W_o`` sizes the joint vector to ``out_dim``; the answer classifier (the paper's gated
    tanh + Linear, the reimplementation's two-layer MLP) belongs to the head. A question given
    as words is averaged over its valid words (the GRU question encoder lives upstream).

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] or Tensor[B, Dq] -> ``fused``
    Tensor[B, out_dim]; ``v_attn`` Tensor[B, G, K]; ``q_attn`` None; ``extras`` empty.

    Args:
        v_dim, q_dim, out_dim: the contract.
        glimpses: G (1 in both the paper and the reimplementation).
        hidden_dim: width of every layer; ``None`` = 512 (paper) or 1024 (hengyuan-hu).
        variant: ``"paper"`` or ``"hengyuan-hu"``.
        fusion: replaces ``f_a``: a vector-fusion registry name or a module
            ``(Dv, Dq) -> hidden_dim`` applied to ``(v_i, q)`` (no activation is added after it).
        fusion_kwargs: extra knobs for a fusion built by name.
        dropout_attention: dropout on ``f_a``'s output; ``None`` = 0 (paper) or 0.2 (hengyuan-hu).

    Parameters, ``H = hidden_dim``, ``P(f_a)`` = ``(Dv + Dq + 1)·2H`` (paper),
    ``(Dv + 1)·H + (Dq + 1)·H + 2`` (hengyuan-hu) or the given fusion's count::

        paper:        P(f_a) + (H + 1)·G + (Dq + 1)·2H + (G·Dv + 1)·2H + (H + 1)·out_dim
        hengyuan-hu:  P(f_a) + H·G + 1 + G + (Dq·H + 1 + H) + (G·Dv·H + 1 + H) + (H + 1)·out_dim

    Example::

        att = UpDown(2048, 512, 1000)                                   # the paper
        att = UpDown(2048, 1024, 1000, variant="hengyuan-hu")           # the reimplementation
        att = UpDown(2048, 512, 1000, fusion="mfb", fusion_kwargs={"factor": 5})
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 1,
        hidden_dim: int | None = None,
        variant: str = "paper",
        fusion: str | nn.Module | None = None,
        fusion_kwargs: dict[str, Any] | None = None,
        dropout_attention: float | None = None,
        device=None,
        dtype=None,
    ):
        name = self.fusion_name
        if variant not in VARIANTS:
            raise ValueError(f"{name}: variant must be one of {VARIANTS}, got {variant!r}")
        paper = variant == "paper"
        if dropout_attention is None:
            dropout_attention = 0.0 if paper else 0.2
        super().__init__(v_dim, q_dim, out_dim, dropout_attention=dropout_attention)
        check_positive(name, glimpses=glimpses, hidden_dim=hidden_dim)
        hd = hidden_dim if hidden_dim is not None else (512 if paper else 1024)
        self.glimpses, self.hidden_dim, self.variant = glimpses, hd, variant
        kw = dict(device=device, dtype=dtype)
        self.custom_fusion = fusion is not None
        if fusion is not None:
            self.score_fusion = resolve_fusion(fusion, name, (v_dim, q_dim), hd, **dict(fusion_kwargs or {}), **kw)
        elif paper:
            self.score_fusion = GatedTanh((v_dim, q_dim), hd, **kw)
        else:
            self.score_fusion = _ReluProduct(v_dim, q_dim, hd, **kw)
        self.drop_att = dropout_or_identity(dropout_attention)
        if paper:
            self.score = nn.Linear(hd, glimpses, **kw)
            self.q_net: nn.Module = GatedTanh((q_dim,), hd, **kw)
            self.v_net: nn.Module = GatedTanh((glimpses * v_dim,), hd, **kw)
        else:
            self.score = weight_norm(nn.Linear(hd, glimpses, **kw), dim=None)
            self.q_net = _ReluLinear(q_dim, hd, **kw)
            self.v_net = _ReluLinear(glimpses * v_dim, hd, **kw)
        self.out = nn.Linear(hd, out_dim, **kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q_vec = self.question_vector(q, q_mask)  # [B, Dq]
        joint = self.drop_att(self.score_fusion(v, q_vec.unsqueeze(1)))  # [B, K, H]
        logits = self.score(joint).transpose(1, 2)  # [B, G, K]
        alpha = masked_softmax(logits, None if v_mask is None else v_mask.unsqueeze(1))
        v_hat = torch.einsum("bgk,bkd->bgd", alpha, v).flatten(1)  # [B, G*Dv]
        fused = self.out(self.q_net(q_vec) * self.v_net(v_hat))
        return AttentionOutput(fused, alpha, None, {})

    def expected_num_parameters(self) -> int:
        dv, dq, hd, g = self.v_dim, self.q_dim, self.hidden_dim, self.glimpses
        if self.variant == "paper":
            f_a = (dv + dq + 1) * 2 * hd
            rest = (hd + 1) * g + (dq + 1) * 2 * hd + (g * dv + 1) * 2 * hd
        else:
            f_a = _wn_linear_params(dv, hd) + _wn_linear_params(dq, hd)
            rest = _wn_linear_params(hd, g) + _wn_linear_params(dq, hd) + _wn_linear_params(g * dv, hd)
        if self.custom_fusion:
            f_a = fusion_num_parameters(self.score_fusion)
        return f_a + rest + (hd + 1) * self.out_dim

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, variant={self.variant!r}, glimpses={self.glimpses}, "
            f"hidden_dim={self.hidden_dim}"
        )


def _check_sources(name: str, sources: Sequence[int] | None) -> tuple[int, ...]:
    if sources is None:
        return (-1,)
    if isinstance(sources, (int, str)) or not isinstance(sources, Sequence) or len(sources) == 0:
        raise ValueError(f"{name}: sources must be a non-empty sequence of region counts, got {sources!r}")
    sizes = tuple(sources)
    if not all(isinstance(s, int) and not isinstance(s, bool) and (s > 0 or s == -1) for s in sizes):
        raise ValueError(f"{name}: sources must be positive ints or -1 (the remaining regions), got {sizes}")
    if sizes.count(-1) > 1:
        raise ValueError(f"{name}: at most one source may be -1 (the remaining regions), got {sizes}")
    return sizes


@register_fusion(
    "multi_source",
    kind="attention",
    modalities="2",
    paper="Lu et al., AAAI 2018 (co-attending free-form regions and detections, Dual-MFA)",
    order_free=False,
    tiny={"hidden_dim": 8, "sources": (1, -1)},
)
class MultiSource(AttentionFusion):
    """Attention over several visual sources (grid cells, detections), fused multiplicatively.

    The contract has one ``v``: the sources are consecutive blocks of its K regions, sized by
    ``sources`` (e.g. ``(196, 19)`` for a 14x14 grid followed by 19 detections, or ``(196, -1)``
    where -1 takes the remaining regions; the default ``None`` is one source, all K regions).
    All sources therefore share ``Dv`` (pad or project them to one width upstream). Each source
    ``s`` with regions ``V_s`` is attended with the question and, as in the paper's
    co-attention, with the mean of the other sources' embedded regions::

        c_s   = mean_{j ∉ s, valid} tanh(W^c_s v_j + b)         (left out with one source)
        e_i   = L2(tanh(W^v_s v_i + b) ⊙ tanh(W^q_s q + b) ⊙ c_s)           i ∈ s
        α_s   = softmax_i(W^a_s e_i + b) over the valid regions of s            G glimpses
        F_s   = [tanh(W^g_{s,1} v̂_{s,1} + b); ..; tanh(W^g_{s,G} v̂_{s,G} + b)] ⊙ tanh(W^o_s q + b)
        fused = W_o dropout(sum_s F_s) + b_o,     v̂_{s,g} = sum_{i ∈ s} α_{s,g,i} v_i

    (``e_i`` is the element-wise product of the three embeddings, L2-normalised.) This follows
    the reference code (``MFA1g`` / ``MFA2g`` and the ``ADD`` fusion, its default); dropout
    ``dropout_input`` is applied to every input of the embedding Linears, as there. The paper's
    two sources have different widths (2048 and 4097); here they share ``Dv``. Because the
    source of a region is its position, the output depends on the region order across sources
    (not within one). A source with no valid region gets zero attention and ``v̂ = 0``.

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] or Tensor[B, Dq] -> ``fused``
    Tensor[B, out_dim]; ``v_attn`` Tensor[B, S·G, K]: row ``s·G + g`` is glimpse ``g`` of source
    ``s``, zero outside that source; ``q_attn`` None; ``extras`` empty.

    Args:
        v_dim, q_dim, out_dim: the contract.
        sources: region counts of the sources, in order (at most one -1), or None.
        glimpses: G per source (2).
        hidden_dim: H, the common embedding size (1200).
        dropout_input: dropout before every embedding Linear (0.5).
        dropout_pre_lin: dropout on ``sum_s F_s`` before the output Linear (0.5).

    Parameters, with S sources and ``C = (Dv + 1)·H`` if S > 1 else 0::

        S·((Dv + 1)·H + (Dq + 1)·H + C + (H + 1)·G + G·(Dv + 1)·H + (Dq + 1)·G·H)
        + (G·H + 1)·out_dim

    Example::

        att = MultiSource(2048, 2400, 2000, sources=(196, 19))
        out = att(torch.cat([grid, boxes], 1), q)     # out.v_attn [B, 4, 215]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        sources: Sequence[int] | None = None,
        glimpses: int = 2,
        hidden_dim: int = 1200,
        dropout_input: float = 0.5,
        dropout_pre_lin: float = 0.5,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_input=dropout_input, dropout_pre_lin=dropout_pre_lin)
        name = self.fusion_name
        check_positive(name, glimpses=glimpses, hidden_dim=hidden_dim)
        self.sources = _check_sources(name, sources)
        self.glimpses, self.hidden_dim = glimpses, hidden_dim
        kw = dict(device=device, dtype=dtype)
        n, hd, g = len(self.sources), hidden_dim, glimpses
        self.region_embed = nn.ModuleList(nn.Linear(v_dim, hd, **kw) for _ in range(n))
        self.question_embed = nn.ModuleList(nn.Linear(q_dim, hd, **kw) for _ in range(n))
        self.context_embed = nn.ModuleList(nn.Linear(v_dim, hd, **kw) for _ in range(n)) if n > 1 else None
        self.score = nn.ModuleList(nn.Linear(hd, g, **kw) for _ in range(n))
        self.glimpse_embed = nn.ModuleList(
            nn.ModuleList(nn.Linear(v_dim, hd, **kw) for _ in range(g)) for _ in range(n)
        )
        self.question_out = nn.ModuleList(nn.Linear(q_dim, g * hd, **kw) for _ in range(n))
        self.drop_in = dropout_or_identity(dropout_input)
        self.drop = dropout_or_identity(dropout_pre_lin)
        self.out = nn.Linear(g * hd, out_dim, **kw)

    def spans(self, k: int) -> list[tuple[int, int]]:
        """``[(start, end), ..]``: the regions of each source for K = ``k`` (Python ints)."""
        fixed = sum(s for s in self.sources if s != -1)
        if (-1 in self.sources and fixed > k) or (-1 not in self.sources and fixed != k):
            want = f"at least {fixed}" if -1 in self.sources else f"{fixed}"
            raise ValueError(f"{self.fusion_name}: sources {self.sources} need {want} regions, got K = {k}")
        out, start = [], 0
        for s in self.sources:
            size = k - fixed if s == -1 else s
            out.append((start, start + size))
            start += size
        return out

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        b, k = v.shape[0], v.shape[1]
        spans = self.spans(k)
        q_vec = self.drop_in(self.question_vector(q, q_mask))  # [B, Dq]
        v_in = self.drop_in(v)
        valid = v.new_ones(b, k) if v_mask is None else v_mask.to(v.dtype)  # [B, K]
        total, maps = None, []
        for s, (lo, hi) in enumerate(spans):
            vs, ms = v[:, lo:hi], None if v_mask is None else v_mask[:, lo:hi]
            q_e = torch.tanh(self.question_embed[s](q_vec)).unsqueeze(1)  # [B, 1, H]
            e = torch.tanh(self.region_embed[s](v_in[:, lo:hi])) * q_e  # [B, K_s, H]
            if self.context_embed is not None:
                w = torch.cat([valid[:, :lo], valid[:, hi:]], dim=1)  # [B, K - K_s]
                c = torch.tanh(self.context_embed[s](torch.cat([v_in[:, :lo], v_in[:, hi:]], dim=1)))
                ctx = torch.einsum("bk,bkh->bh", w, c) / w.sum(dim=1, keepdim=True).clamp_min(1.0)
                e = e * ctx.unsqueeze(1)
            logits = self.score[s](l2_normalize(e)).transpose(1, 2)  # [B, G, K_s]
            alpha = masked_softmax(logits, None if ms is None else ms.unsqueeze(1))
            v_hat = torch.einsum("bgk,bkd->bgd", alpha, vs)  # [B, G, Dv]
            att = torch.cat(
                [torch.tanh(lin(self.drop_in(v_hat[:, j]))) for j, lin in enumerate(self.glimpse_embed[s])], dim=-1
            )  # [B, G*H]
            f_s = att * torch.tanh(self.question_out[s](q_vec))
            total = f_s if total is None else total + f_s
            maps.append(F.pad(alpha, (lo, k - hi)))  # [B, G, K], zero outside the source
        fused = self.out(self.drop(total))
        return AttentionOutput(fused, torch.cat(maps, dim=1), None, {})

    def expected_num_parameters(self) -> int:
        dv, dq, hd, g, n = self.v_dim, self.q_dim, self.hidden_dim, self.glimpses, len(self.sources)
        context = (dv + 1) * hd if n > 1 else 0
        per_source = (dv + 1) * hd + (dq + 1) * hd + context + (hd + 1) * g + g * (dv + 1) * hd + (dq + 1) * g * hd
        return n * per_source + (g * hd + 1) * self.out_dim

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, sources={self.sources}, glimpses={self.glimpses}, "
            f"hidden_dim={self.hidden_dim}"
        )

"""Multi-hop (stacked) attention over regions: SAN, SLA and SMem-VQA.

Papers:
- Yang, He, Gao, Deng & Smola, "Stacked attention networks for image question answering",
  CVPR 2016 (``san``; reference code zcyang/imageqa-san).
- Fan & Zhou, "Stacked latent attention for multimodal reasoning", CVPR 2018 (``sla``).
- Xu & Saenko, "Ask, attend and answer: Exploring question-guided spatial attention for visual
  question answering", ECCV 2016 (``smem``; reference code VisionLearningGroup/Ask_Attend_and_Answer).

Axis legend of the einsums: ``b`` batch, ``k`` regions, ``t`` words, ``d`` / ``n`` features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, masked_softmax
from ..fusions._base import linear_params
from ..layers import dropout_or_identity
from ._base import AttentionFusion, AttentionOutput

__all__ = ["SAN", "SLA", "SMem"]


@register_fusion(
    "san",
    kind="attention",
    modalities="2",
    paper="Yang et al., CVPR 2016 (Stacked Attention Networks)",
    tiny={"hidden_dim": 8},
)
class SAN(AttentionFusion):
    """Stacked attention: the question vector queries the regions ``hops`` times, refining itself.

    Regions are first projected to the question space, ``v'_i = tanh(W_v v_i + b_v)`` (Dq
    features). With ``u^0 = q``, hop ``h = 1..L``::

        s^h_i = tanh(W_I^h v'_i + (W_Q^h u^{h-1} + b_A^h))        (hidden_dim features)
        p^h   = softmax_i(w_P^h s^h_i + b_P^h)                      over the valid regions
        u^h   = sum_i p^h_i v'_i + u^{h-1}

    and ``fused = W_o dropout(u^L) + b_o``: SAN's answer layer ``softmax(W_u u^L + b_u)`` without
    the softmax, sized ``out_dim``. ``W_I`` has no bias (the paper puts ``b_A`` on the question
    side). ``b_P`` is kept as in the paper although a softmax ignores it. A question given as
    words is averaged over its valid words (SAN's LSTM / CNN question encoder lives upstream).

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] or Tensor[B, Dq] -> ``fused``
    Tensor[B, out_dim]; ``v_attn`` Tensor[B, hops, K] holds every hop's map (row ``h`` is hop
    ``h + 1``; the last row is the final one); ``q_attn`` None; ``extras`` empty.

    Args:
        v_dim, q_dim, out_dim: the contract.
        hops: number of attention layers L (the paper's best model uses 2).
        hidden_dim: width of the attention layer, ``k`` in the paper (512 in the reference code).
        dropout_pre_lin: dropout on ``u^L`` before the output Linear (0.5 in the reference code).

    Parameters: ``(Dv + 1)·Dq + L·(Dq·H + (Dq + 1)·H + H + 1) + (Dq + 1)·out_dim`` with
    ``H = hidden_dim``, ``L = hops``.

    Example::

        att = SAN(512, 1024, 1000, hops=2)
        out = att(v, q)                 # out.fused [B, 1000], out.v_attn [B, 2, K]
    """

    #: SLA switches this on: hop h > 1 also reads the previous hop's latent ``s^{h-1}_i``.
    carries_latent: bool = False

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        hops: int = 2,
        hidden_dim: int = 512,
        dropout_pre_lin: float = 0.5,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_pre_lin=dropout_pre_lin)
        check_positive(self.fusion_name, hops=hops, hidden_dim=hidden_dim)
        self.hops, self.hidden_dim = hops, hidden_dim
        kw = dict(device=device, dtype=dtype)
        latent = hidden_dim if self.carries_latent else 0
        self.v_proj = nn.Linear(v_dim, q_dim, **kw)
        self.v_att = nn.ModuleList(
            nn.Linear(q_dim + (latent if h > 0 else 0), hidden_dim, bias=False, **kw) for h in range(hops)
        )
        self.q_att = nn.ModuleList(nn.Linear(q_dim, hidden_dim, **kw) for _ in range(hops))
        self.score = nn.ModuleList(nn.Linear(hidden_dim, 1, **kw) for _ in range(hops))
        self.drop = dropout_or_identity(dropout_pre_lin)
        self.out = nn.Linear(q_dim, out_dim, **kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        u = self.question_vector(q, q_mask)  # [B, Dq]
        vp = torch.tanh(self.v_proj(v))  # [B, K, Dq]
        latent: Tensor | None = None
        maps = []
        for h in range(self.hops):
            x = vp if latent is None else torch.cat([vp, latent], dim=-1)  # [B, K, Dq (+H)]
            s = torch.tanh(self.v_att[h](x) + self.q_att[h](u).unsqueeze(1))  # [B, K, H]
            p = masked_softmax(self.score[h](s).squeeze(-1), v_mask)  # [B, K]
            u = torch.einsum("bk,bkd->bd", p, vp) + u
            latent = s if self.carries_latent else None
            maps.append(p)
        fused = self.out(self.drop(u))
        return AttentionOutput(fused, torch.stack(maps, dim=1), None, {})

    def expected_num_parameters(self) -> int:
        dv, dq, hd, n = self.v_dim, self.q_dim, self.hidden_dim, self.hops
        per_hop = dq * hd + linear_params(dq, hd) + linear_params(hd, 1)
        latent = (n - 1) * hd * hd if self.carries_latent else 0
        return linear_params(dv, dq) + n * per_hop + latent + linear_params(dq, self.out_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hops={self.hops}, hidden_dim={self.hidden_dim}"


@register_fusion(
    "sla",
    kind="attention",
    modalities="2",
    paper="Fan & Zhou, CVPR 2018 (Stacked Latent Attention)",
    tiny={"hidden_dim": 8},
)
class SLA(SAN):
    """Stacked latent attention: SAN whose hops pass their latent region features forward.

    As :class:`SAN`, except that from the second hop on each region is scored from its projected
    feature concatenated with the previous hop's pre-softmax hidden feature (its "latent")::

        s^1_i = tanh(W_I^1 v'_i + (W_Q^1 u^0 + b_A^1))
        s^h_i = tanh(W_I^h [v'_i; s^{h-1}_i] + (W_Q^h u^{h-1} + b_A^h))      h = 2..L

    so the spatial reasoning of one hop is not thrown away by the next (in SAN only the pooled
    vector ``u`` crosses hops). Attention, pooling and ``fused`` are SAN's.

    Note: the paper builds this latent pathway from 1x1 convolutions over the feature map and
    also describes a two-stream co-attention variant; only the single-stream form above, as
    written in ``shared/METHODS.md``, is implemented. A 1x1 convolution over a region grid is
    a Linear per region, which is what is used here.

    Shapes and args: as :class:`SAN`.

    Parameters: SAN's count plus ``(L - 1)·H·H`` (the latent columns of ``W_I^h``, h >= 2).

    Example::

        att = SLA(512, 1024, 1000, hops=3)
        out = att(v, q, v_mask=mask)    # out.v_attn [B, 3, K]
    """

    carries_latent = True


@register_fusion(
    "smem",
    kind="attention",
    modalities="2",
    paper="Xu & Saenko, ECCV 2016 (Ask, Attend and Answer: SMem-VQA)",
)
class SMem(AttentionFusion):
    """Spatial memory network (SMem-VQA): word-guided attention, then question-guided hops.

    The joint space is the word space (Dq features, the paper's N = 1000 word embeddings).
    Hop 1 aligns every word with every region and keeps, for each region, its best word::

        C     = (V W_A + b_A) Q^T                 Tensor[K, T]  (valid words only)
        a^1   = softmax_i(max_t C[i, t])          over the valid regions
        E^1   = V W_E^1 + b_E^1                   evidence embedding, Tensor[K, Dq]
        o^1   = sum_i a^1_i E^1_i + q

    and each further hop ``h`` queries the previous hop's evidence embedding with ``o^{h-1}``::

        a^h = softmax_i(E^{h-1}_i · o^{h-1}),   o^h = sum_i a^h_i E^h_i + o^{h-1}

    ``fused = W_o dropout(ReLU(o^L)) + b_o`` (the answer layer without softmax).

    ``q`` is the question vector: the mean of the valid words (the reference code's learned
    per-position weighted sum needs a fixed length T, which this library does not assume);
    a question given as one vector is a one-word question. Masked words are left out of the
    max (the reference code takes it over the zero-padded words too); a question with no
    valid word scores every region 0, i.e. uniform attention over the valid regions.

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] or Tensor[B, Dq] -> ``fused``
    Tensor[B, out_dim]; ``v_attn`` Tensor[B, hops, K] (row ``h`` is hop ``h + 1``); ``q_attn``
    None; ``extras["word_region"]`` Tensor[B, K, T]: the hop-1 correlation C (0 at masked words).

    Args:
        v_dim, q_dim, out_dim: the contract.
        hops: number of hops L (the paper's best model: 2).
        dropout_input: dropout on the region features (0.4 in the reference training net).
        dropout_pre_lin: dropout on ``ReLU(o^L)`` before the output Linear (0.4 there too).

    Parameters: ``(L + 1)·(Dv + 1)·Dq + (Dq + 1)·out_dim`` (``W_A`` and one ``W_E`` per hop).

    Example::

        att = SMem(1024, 1000, 1000, hops=2)
        out = att(v, words, q_mask=word_mask)   # out.extras["word_region"] [B, K, T]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        hops: int = 2,
        dropout_input: float = 0.4,
        dropout_pre_lin: float = 0.4,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_input=dropout_input, dropout_pre_lin=dropout_pre_lin)
        check_positive(self.fusion_name, hops=hops)
        self.hops = hops
        kw = dict(device=device, dtype=dtype)
        self.drop_in = dropout_or_identity(dropout_input)
        self.attn_embed = nn.Linear(v_dim, q_dim, **kw)  # W_A
        self.evidence = nn.ModuleList(nn.Linear(v_dim, q_dim, **kw) for _ in range(hops))  # W_E^h
        self.drop = dropout_or_identity(dropout_pre_lin)
        self.out = nn.Linear(q_dim, out_dim, **kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        words, w_mask = self.question_sequence(q, q_mask)  # [B, T, Dq], [B, T] or None
        o = self.question_vector(q, q_mask)  # [B, Dq]
        v = self.drop_in(v)
        corr = torch.einsum("bkn,btn->bkt", self.attn_embed(v), words)  # [B, K, T]
        if w_mask is None:
            best = corr.amax(dim=-1)  # [B, K]
        else:
            valid = w_mask.unsqueeze(1)  # [B, 1, T]
            best = corr.masked_fill(~valid, torch.finfo(corr.dtype).min).amax(dim=-1)
            best = torch.where(w_mask.any(dim=-1, keepdim=True), best, torch.zeros_like(best))
            corr = corr.masked_fill(~valid, 0.0)
        p = masked_softmax(best, v_mask)  # [B, K]
        e = self.evidence[0](v)  # [B, K, Dq]
        o = torch.einsum("bk,bkn->bn", p, e) + o
        maps = [p]
        for h in range(1, self.hops):
            p = masked_softmax(torch.einsum("bkn,bn->bk", e, o), v_mask)
            e = self.evidence[h](v)
            o = torch.einsum("bk,bkn->bn", p, e) + o
            maps.append(p)
        fused = self.out(self.drop(torch.relu(o)))
        return AttentionOutput(fused, torch.stack(maps, dim=1), None, {"word_region": corr})

    def expected_num_parameters(self) -> int:
        return (self.hops + 1) * linear_params(self.v_dim, self.q_dim) + linear_params(self.q_dim, self.out_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hops={self.hops}"

"""Co-attention: the question guides attention over the image and the image guides attention
over the question.

Papers:
- Lu, Yang, Batra & Parikh, "Hierarchical question-image co-attention for visual question
  answering", NIPS 2016 (HieCoAtt; reference code jiasenlu/HieCoAttenVQA, misc/attention.lua).
- Nam, Ha & Kim, "Dual attention networks for multimodal reasoning and matching", CVPR 2017
  (DAN: r-DAN for reasoning / VQA, m-DAN for image-text matching).

Axis legend: ``B`` batch, ``K`` regions, ``T`` words, ``Dv``/``Dq`` feature widths, ``H`` the
attention (hidden) width, ``S`` DAN hops (the paper's steps).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, masked_softmax
from ..fusions._base import linear_params
from ..layers import dropout_or_identity
from ._base import AttentionFusion, AttentionOutput

__all__ = ["CoAttention", "DualAttention"]


def _pool(attn: Tensor, x: Tensor) -> Tensor:
    """``sum_n attn[b, n] x[b, n]``: Tensor[B, N] and Tensor[B, N, D] -> Tensor[B, D]."""
    return torch.einsum("bn,bnd->bd", attn, x)


def _scores(layer: nn.Linear, h: Tensor, mask: Tensor | None) -> Tensor:
    """Masked softmax over positions of ``layer(h)``: Tensor[B, N, H] -> Tensor[B, N]."""
    return masked_softmax(layer(h).squeeze(-1), mask)


@register_fusion(
    "coattention",
    kind="attention",
    modalities="2",
    paper="Lu et al., NIPS 2016 (Hierarchical question-image co-attention, HieCoAtt)",
    tiny={"hidden_dim": 8},
)
class CoAttention(AttentionFusion):
    """Question-image co-attention of HieCoAtt, parallel or alternating, at one level.

    With regions ``V: Tensor[B, K, Dv]`` and words ``Q: Tensor[B, T, Dq]`` (rows are positions):

    ``mode="parallel"`` (default; the paper's eq. 3-4)::

        C   = tanh(Q (V W_b^T + b_b)^T)                    affinity, Tensor[B, T, K]
        H^v = tanh(V W_v^T + C^T (Q W_q^T))                Tensor[B, K, H]
        H^q = tanh(Q W_q^T + C (V W_v^T))                  Tensor[B, T, H]
        a^v = softmax_k(H^v w_hv),  a^q = softmax_t(H^q w_hq)
        v̂ = sum_k a^v_k v_k,  q̂ = sum_t a^q_t q_t

    ``C`` is zero wherever its word or its region is padding, so padding never enters the sums
    ``C^T (Q W_q^T)`` and ``C (V W_v^T)``.

    ``mode="alternating"`` (eq. 5) with ``Â(X, g)``: ``H = tanh(X W_x^T + 1 (W_g g)^T)``,
    ``a = softmax(H w)``, ``x̂ = sum_i a_i x_i``, each step with its own weights::

        s = Â(Q, 0),  v̂ = Â(V, s),  q̂ = Â(Q, v̂)

    Output, the paper's answer layer at one level (``h^w = tanh(W_w(q̂^w + v̂^w))``)::

        fused = tanh(W_o drop(q̂ + E v̂) + b_o)

    where ``E`` is the identity when ``v_dim == q_dim`` (the paper, whose image features are
    already embedded to the question width) and a bias-free Linear ``Dv -> Dq`` otherwise.
    The word / phrase / question hierarchy of the paper (1-D convolutions with max-pooling, an
    LSTM over the phrases, and the recursive answer MLP) belongs to the model that feeds this
    module one level at a time; it is not part of the fusion.

    Every Linear has a bias, as in the reference code (the paper omits them from its
    equations, and also ``b_b``). Dropout 0.5 on ``H`` before the scoring layer and on
    ``q̂ + E v̂`` follows the reference code. The reference code does not mask the image
    attention; here both attentions take their mask.

    Args:
        v_dim, q_dim, out_dim: the contract.
        mode: ``"parallel"`` or ``"alternating"``.
        hidden_dim: ``H``, the paper's ``k`` (512).
        dropout_attention: on ``H`` before each scoring layer (0.5).
        dropout_pre_lin: on ``q̂ + E v̂`` before ``W_o`` (0.5).

    Shapes: ``v: Tensor[B, K, Dv]``, ``q: Tensor[B, T, Dq]`` (a vector ``[B, Dq]`` is a one-word
    question) -> ``fused: Tensor[B, out_dim]``, ``v_attn: Tensor[B, 1, K]`` (``a^v``),
    ``q_attn: Tensor[B, 1, T]`` (``a^q``; the final question attention ``q̂ = Â(Q, v̂)`` in the
    alternating mode). ``extras``: ``"affinity"`` ``C: Tensor[B, T, K]`` (parallel) or
    ``"q_attn_first"`` ``Tensor[B, 1, T]``, the attention of ``s = Â(Q, 0)`` (alternating).

    Parameters, with ``L(i, o) = (i + 1) o``:
    parallel ``L(Dv, Dq) + L(Dv, H) + L(Dq, H) + 2 L(H, 1)``;
    alternating ``3 L(Dq, H) + 2 L(Dv, H) + 3 L(H, 1)``;
    plus ``Dv Dq`` when ``Dv != Dq`` (``E``) and ``L(Dq, out_dim)``.

    Example::

        att = CoAttention(512, 512, 1000, mode="alternating")
        out = att(v, q, v_mask=vm, q_mask=qm)   # out.fused [B, 1000], out.q_attn [B, 1, T]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        mode: str = "parallel",
        hidden_dim: int = 512,
        dropout_attention: float = 0.5,
        dropout_pre_lin: float = 0.5,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_attention=dropout_attention, dropout_pre_lin=dropout_pre_lin)
        name = self.fusion_name
        if mode not in ("parallel", "alternating"):
            raise ValueError(f"{name}: mode must be 'parallel' or 'alternating', got {mode!r}")
        check_positive(name, hidden_dim=hidden_dim)
        self.mode, self.hidden_dim = mode, hidden_dim
        kw = dict(device=device, dtype=dtype)
        h = hidden_dim
        if mode == "parallel":
            self.affinity = nn.Linear(v_dim, q_dim, **kw)  # W_b
            self.v_proj = nn.Linear(v_dim, h, **kw)  # W_v
            self.q_proj = nn.Linear(q_dim, h, **kw)  # W_q
            self.v_score = nn.Linear(h, 1, **kw)  # w_hv
            self.q_score = nn.Linear(h, 1, **kw)  # w_hq
        else:
            # step 1: s = Â(Q, 0)
            self.q_first_proj = nn.Linear(q_dim, h, **kw)
            self.q_first_score = nn.Linear(h, 1, **kw)
            # step 2: v̂ = Â(V, s)
            self.v_proj = nn.Linear(v_dim, h, **kw)
            self.v_guide = nn.Linear(q_dim, h, **kw)
            self.v_score = nn.Linear(h, 1, **kw)
            # step 3: q̂ = Â(Q, v̂)
            self.q_proj = nn.Linear(q_dim, h, **kw)
            self.q_guide = nn.Linear(v_dim, h, **kw)
            self.q_score = nn.Linear(h, 1, **kw)
        self.v_embed = nn.Identity() if v_dim == q_dim else nn.Linear(v_dim, q_dim, bias=False, **kw)
        self.drop_attn = dropout_or_identity(dropout_attention)
        self.drop_pre = dropout_or_identity(dropout_pre_lin)
        self.linear_out = nn.Linear(q_dim, out_dim, **kw)

    def _parallel(self, v, q, v_mask, q_mask):
        c = torch.tanh(torch.einsum("btd,bkd->btk", q, self.affinity(v)))  # [B, T, K]
        if v_mask is not None or q_mask is not None:
            valid = torch.ones_like(c, dtype=torch.bool)
            if q_mask is not None:
                valid = valid & q_mask.unsqueeze(2)
            if v_mask is not None:
                valid = valid & v_mask.unsqueeze(1)
            c = c.masked_fill(~valid, 0.0)
        wv, wq = self.v_proj(v), self.q_proj(q)  # [B, K, H], [B, T, H]
        h_v = torch.tanh(wv + torch.einsum("btk,bth->bkh", c, wq))  # [B, K, H]
        h_q = torch.tanh(wq + torch.einsum("btk,bkh->bth", c, wv))  # [B, T, H]
        a_v = _scores(self.v_score, self.drop_attn(h_v), v_mask)  # [B, K]
        a_q = _scores(self.q_score, self.drop_attn(h_q), q_mask)  # [B, T]
        return a_v, a_q, {"affinity": c}

    def _alternating(self, v, q, v_mask, q_mask):
        a_s = _scores(self.q_first_score, self.drop_attn(torch.tanh(self.q_first_proj(q))), q_mask)  # [B, T]
        s = _pool(a_s, q)  # [B, Dq]
        h_v = torch.tanh(self.v_proj(v) + self.v_guide(s).unsqueeze(1))  # [B, K, H]
        a_v = _scores(self.v_score, self.drop_attn(h_v), v_mask)  # [B, K]
        h_q = torch.tanh(self.q_proj(q) + self.q_guide(_pool(a_v, v)).unsqueeze(1))  # [B, T, H]
        a_q = _scores(self.q_score, self.drop_attn(h_q), q_mask)  # [B, T]
        return a_v, a_q, {"q_attn_first": a_s.unsqueeze(1)}

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q, q_mask = self.question_sequence(q, q_mask)
        step = self._parallel if self.mode == "parallel" else self._alternating
        a_v, a_q, extras = step(v, q, v_mask, q_mask)
        joint = _pool(a_q, q) + self.v_embed(_pool(a_v, v))  # [B, Dq]
        fused = torch.tanh(self.linear_out(self.drop_pre(joint)))
        return AttentionOutput(fused, a_v.unsqueeze(1), a_q.unsqueeze(1), extras)

    def expected_num_parameters(self) -> int:
        dv, dq, h = self.v_dim, self.q_dim, self.hidden_dim
        if self.mode == "parallel":
            n = linear_params(dv, dq) + linear_params(dv, h) + linear_params(dq, h) + 2 * linear_params(h, 1)
        else:
            n = 3 * linear_params(dq, h) + 2 * linear_params(dv, h) + 3 * linear_params(h, 1)
        embed = 0 if dv == dq else dv * dq
        return n + embed + linear_params(dq, self.out_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}, hidden_dim={self.hidden_dim}"


class _DanStep(nn.Module):
    """The weights of one DAN hop ``k``: visual attention, ``P^(k)`` and textual attention."""

    def __init__(self, v_dim: int, q_dim: int, hidden_dim: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.v_feat = nn.Linear(v_dim, hidden_dim, **kw)  # W_v^(k)
        self.v_memory = nn.Linear(q_dim, hidden_dim, **kw)  # W_{v,m}^(k)
        self.v_score = nn.Linear(hidden_dim, 1, **kw)  # w_{v,h}^(k)
        self.v_out = nn.Linear(v_dim, q_dim, **kw)  # P^(k)
        self.q_feat = nn.Linear(q_dim, hidden_dim, **kw)  # W_u^(k)
        self.q_memory = nn.Linear(q_dim, hidden_dim, **kw)  # W_{u,m}^(k)
        self.q_score = nn.Linear(hidden_dim, 1, **kw)  # w_{u,h}^(k)


@register_fusion(
    "dan",
    kind="attention",
    modalities="2",
    paper="Nam et al., CVPR 2017 (Dual Attention Networks)",
    tiny={"hidden_dim": 8},
)
class DualAttention(AttentionFusion):
    """Dual Attention Networks: visual and textual attention steered by memories over S hops.

    With regions ``v_n`` (``n = 1..K``) and word features ``u_t`` (the paper's bi-LSTM states)::

        v^0 = tanh(P^0 mean_n v_n),   u^0 = mean_t u_t            (means over valid positions)
        hop (the paper's step) k = 1..S, each with its own weights:
          h_n = tanh(W_v v_n) ⊙ tanh(W_vm m_v^{k-1}),   α_v = softmax_n(w_vh^T h_n)
          v^k = tanh(P^k sum_n α_{v,n} v_n)
          h_t = tanh(W_u u_t) ⊙ tanh(W_um m_u^{k-1}),   α_u = softmax_t(w_uh^T h_t)
          u^k = sum_t α_{u,t} u_t                       (no projection, no tanh)

    ``mode="reasoning"`` (r-DAN, default) shares one memory ``m_v = m_u = m``:
    ``m^0 = v^0 ⊙ u^0``, ``m^k = m^{k-1} + v^k ⊙ u^k``, and
    ``fused = W_o m^S + b_o`` (the paper's answer layer ``softmax(W_ans m^S)`` without the
    softmax: with ``out_dim`` = number of answers it is the paper's logits).

    ``mode="matching"`` (m-DAN) keeps two memories ``m_v^0 = v^0``, ``m_v^k = m_v^{k-1} + v^k``,
    ``m_u^0 = u^0``, ``m_u^k = m_u^{k-1} + u^k``, and scores the pair by (the paper's ``S``)
    ``sim = sum_{k=0}^{S} v^k · u^k`` (= ``z_v · z_u`` with ``z_v = [v^0; ..; v^S]``,
    ``z_u = [u^0; ..; u^S]``), returned in ``extras["similarity"]``. Its ``fused`` is a joint
    vector for heads that need one: ``W_o [m_v^S; m_u^S] + b_o``.

    The memories live in the word-feature space (``Dq``): ``P^k`` maps ``Dv -> Dq``. Every
    Linear has a bias (the paper omits them from its equations). The paper reports dropout 0.5
    without saying where; here ``dropout_attention`` acts on ``h`` before the scoring layer.
    The bi-LSTM that makes ``u_t`` belongs to the model.

    Args:
        v_dim, q_dim, out_dim: the contract.
        mode: ``"reasoning"`` (r-DAN) or ``"matching"`` (m-DAN).
        hops: ``S``, the number of attention steps (the paper's ``K = 2``); ``hops`` is the
            name the other multi-step attentions (san, smem, dmn) use.
        hidden_dim: width of ``h`` (512 in the paper, like every hidden layer there).
        dropout_attention: on ``h`` before each scoring layer (0.5).

    Shapes: ``v: Tensor[B, K, Dv]``, ``q: Tensor[B, T, Dq]`` (a vector ``[B, Dq]`` is a one-word
    text) -> ``fused: Tensor[B, out_dim]``; ``v_attn: Tensor[B, 1, K]`` and
    ``q_attn: Tensor[B, 1, T]`` are the last hop's maps; ``extras``: ``"v_attn_hops"``
    ``Tensor[B, S, K]`` and ``"q_attn_hops"`` ``Tensor[B, S, T]`` (every hop, in order),
    ``"memory"`` ``Tensor[B, Dq]`` (``m^S``; ``[B, 2 Dq]`` = ``[m_v^S; m_u^S]`` when matching) and,
    when matching, ``"similarity"`` ``Tensor[B]`` and ``"hop_similarity"`` ``Tensor[B, S+1]``.

    Parameters, with ``L(i, o) = (i + 1) o``:
    ``L(Dv, Dq) + S (L(Dv, H) + 3 L(Dq, H) + 2 L(H, 1) + L(Dv, Dq)) + L(c Dq, out_dim)``
    with ``c = 1`` (reasoning) or ``c = 2`` (matching).

    Example::

        dan = DualAttention(2048, 512, 2000, hops=2)               # r-DAN for VQA
        out = dan(v, u, v_mask=vm, q_mask=um)                      # out.fused [B, 2000]
        m = DualAttention(2048, 512, 512, mode="matching")(v, u)   # m.extras["similarity"] [B]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        mode: str = "reasoning",
        hops: int = 2,
        hidden_dim: int = 512,
        dropout_attention: float = 0.5,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_attention=dropout_attention)
        name = self.fusion_name
        if mode not in ("reasoning", "matching"):
            raise ValueError(f"{name}: mode must be 'reasoning' or 'matching', got {mode!r}")
        check_positive(name, hops=hops, hidden_dim=hidden_dim)
        self.mode, self.hops, self.hidden_dim = mode, hops, hidden_dim
        kw = dict(device=device, dtype=dtype)
        self.v_init = nn.Linear(v_dim, q_dim, **kw)  # P^(0)
        self.steps = nn.ModuleList(_DanStep(v_dim, q_dim, hidden_dim, **kw) for _ in range(hops))
        self.drop_attn = dropout_or_identity(dropout_attention)
        width = q_dim if mode == "reasoning" else 2 * q_dim
        self.linear_out = nn.Linear(width, out_dim, **kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        u, u_mask = self.question_sequence(q, q_mask)  # [B, T, Dq]
        # question_vector is the masked mean over dim 1, for regions as for words
        v_k = torch.tanh(self.v_init(self.question_vector(v, v_mask)))  # v^0 [B, Dq]
        u_k = self.question_vector(u, u_mask)  # u^0 [B, Dq]
        reasoning = self.mode == "reasoning"
        if reasoning:
            m_v = m_u = v_k * u_k  # m^0
        else:
            m_v, m_u = v_k, u_k  # m_v^0, m_u^0
        sims = [(v_k * u_k).sum(-1)]  # s^0 (matching only)
        v_maps, u_maps = [], []
        for step in self.steps:
            h_v = torch.tanh(step.v_feat(v)) * torch.tanh(step.v_memory(m_v)).unsqueeze(1)  # [B, K, H]
            a_v = _scores(step.v_score, self.drop_attn(h_v), v_mask)  # [B, K]
            h_u = torch.tanh(step.q_feat(u)) * torch.tanh(step.q_memory(m_u)).unsqueeze(1)  # [B, T, H]
            a_u = _scores(step.q_score, self.drop_attn(h_u), u_mask)  # [B, T]
            v_k = torch.tanh(step.v_out(_pool(a_v, v)))  # [B, Dq]
            u_k = _pool(a_u, u)  # [B, Dq]
            if reasoning:
                m_v = m_u = m_v + v_k * u_k
            else:
                m_v, m_u = m_v + v_k, m_u + u_k
                sims.append((v_k * u_k).sum(-1))
            v_maps.append(a_v)
            u_maps.append(a_u)
        v_steps, u_steps = torch.stack(v_maps, 1), torch.stack(u_maps, 1)  # [B, S, K], [B, S, T]
        memory = m_v if reasoning else torch.cat([m_v, m_u], dim=-1)
        extras = {"v_attn_hops": v_steps, "q_attn_hops": u_steps, "memory": memory}
        if not reasoning:
            step_sim = torch.stack(sims, dim=1)  # [B, S+1]
            extras["hop_similarity"] = step_sim
            extras["similarity"] = step_sim.sum(1)
        fused = self.linear_out(memory)
        return AttentionOutput(fused, v_steps[:, -1:], u_steps[:, -1:], extras)

    def expected_num_parameters(self) -> int:
        dv, dq, h = self.v_dim, self.q_dim, self.hidden_dim
        per_step = linear_params(dv, h) + 3 * linear_params(dq, h) + 2 * linear_params(h, 1) + linear_params(dv, dq)
        width = dq if self.mode == "reasoning" else 2 * dq
        return linear_params(dv, dq) + self.hops * per_step + linear_params(width, self.out_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}, hops={self.hops}, hidden_dim={self.hidden_dim}"

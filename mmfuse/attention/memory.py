"""Episodic-memory attention over regions: DMN+.

Paper: Xiong, Merity & Socher, "Dynamic memory networks for visual and textual question
answering", ICML 2016 (DMN+).

The recurrences here (the input-fusion bi-GRU and the attention GRU) are sequential by
definition, so they are Python loops over the K regions; everything that does not depend on the
previous step (the input-side projections of every region, the attention gates of a pass) is
computed for all regions at once outside the loops. Under ``torch.compile`` / ``torch.export``
the loops unroll, so a graph is specialised to K.

Axis legend: ``b`` batch, ``k`` regions, ``h`` hidden features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, masked_softmax
from ..layers import dropout_or_identity
from ._base import AttentionFusion, AttentionOutput

__all__ = ["DMN", "masked_gru_scan"]


def masked_gru_scan(cell: nn.GRUCell, x: Tensor, mask: Tensor | None, reverse: bool = False) -> Tensor:
    """Run ``cell`` over ``x`` along dim 1, skipping masked steps (they keep the previous state).

    The state starts at zero; at a step with ``mask == False`` it is carried over unchanged, so a
    padded position, wherever it sits, never reaches a valid one, and the states at the valid
    positions equal those of the sequence with the padding removed. The gates follow
    ``nn.GRUCell`` (``h' = (1 - z) ⊙ n + z ⊙ h``); the input half of every gate is computed for
    all steps in one matmul.

    Args:
        cell: holds the weights (``weight_ih`` [3H, D], ``weight_hh`` [3H, H] and biases).
        x: Tensor[B, K, D].
        mask: bool Tensor[B, K] (True = valid) or None.
        reverse: scan from the last step to the first.
    Returns:
        Tensor[B, K, H]: the state after each step (at a masked step, the carried state).
    """
    gi = F.linear(x, cell.weight_ih, cell.bias_ih)  # [B, K, 3H]
    h = gi.new_zeros(x.shape[0], cell.hidden_size)  # [B, H]
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    states: list[Tensor] = [h] * x.shape[1]
    for k in steps:
        gh = F.linear(h, cell.weight_hh, cell.bias_hh)  # [B, 3H]
        i_r, i_z, i_n = gi[:, k].chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        new = (1 - z) * n + z * h
        h = new if mask is None else torch.where(mask[:, k, None], new, h)
        states[k] = h
    return torch.stack(states, dim=1)


@register_fusion(
    "dmn",
    kind="attention",
    modalities="2",
    paper="Xiong et al., ICML 2016 (DMN+)",
    order_free=False,
    tiny={"hidden_dim": 6},
)
class DMN(AttentionFusion):
    """DMN+ episodic memory over regions, with an input-fusion bi-GRU and an attention GRU.

    Input module: regions are projected, ``x_i = tanh(W_v v_i + b_v)`` (H features), and an
    input-fusion bidirectional GRU reads them in the given order; the facts are the sums of the
    two directions, ``f_i = GRU_fwd(x)_i + GRU_bwd(x)_i``. The order matters (the paper reads a
    14x14 grid in a snake-like order; arrange ``v`` upstream), so this fusion is not order-free.
    Masked regions are skipped by both recurrences: they never reach a valid fact, wherever
    they sit, and their facts are 0.

    Episodic memory, ``m^0 = q``, passes ``t = 1..T``::

        z_i = [f_i ⊙ q; f_i ⊙ m^{t-1}; |f_i - q|; |f_i - m^{t-1}|]          Tensor[4H]
        g_i = softmax_i(W_2 tanh(W_1 z_i + b_1) + b_2)                       over valid regions
        r_i = sigmoid(W_r f_i + U_r h_{i-1} + b_r)
        h~_i = tanh(W f_i + r_i ⊙ (U h_{i-1}) + b_h)
        h_i = g_i h~_i + (1 - g_i) h_{i-1}          (attention GRU, h_0 = 0; c^t = h_K)
        m^t = ReLU(W^t [m^{t-1}; c^t; q] + b^t)     (untied: one W^t per pass)

    and ``fused = W_o dropout([m^T; q]) + b_o`` (DMN+'s answer module reads the final memory
    and the question). The gate network and the attention GRU are shared by the passes, the
    memory update is not, as in the paper. ``b_2`` is kept as in the paper although a softmax
    ignores it. ``q`` is the question vector (the mean of the valid words; DMN+'s question GRU
    lives upstream); it is used as is when ``hidden_dim`` equals ``q_dim`` (the paper's case:
    the regions are projected into the question space) and otherwise projected,
    ``q <- tanh(W_q q + b_q)``.

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] or Tensor[B, Dq] -> ``fused``
    Tensor[B, out_dim]; ``v_attn`` Tensor[B, hops, K]: the gates ``g`` of every pass; ``q_attn``
    None; ``extras`` empty.

    Args:
        v_dim, q_dim, out_dim: the contract.
        hops: the number of passes T (3).
        hidden_dim: H; ``None`` = ``q_dim`` (the paper uses 512 throughout its VQA model).
        dropout_pre_lin: dropout on ``[m^T; q]`` before the output Linear (0: the value the
            paper used for VQA could not be confirmed).

    Parameters, with ``H = hidden_dim``, ``P = (Dq + 1)·H`` if ``H != Dq`` else 0::

        (Dv + 1)·H + P + 2·(6·H·H + 6·H)       projection, bi-GRU
        + (4·H + 1)·H + (H + 1)                gate network
        + 4·H·H + 2·H                          attention GRU
        + T·(3·H + 1)·H + (2·H + 1)·out_dim    memory updates, output

    Example::

        att = DMN(512, 512, 1000, hops=3)
        out = att(v, q, v_mask=mask)       # out.v_attn [B, 3, K]: the attention gates
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        hops: int = 3,
        hidden_dim: int | None = None,
        dropout_pre_lin: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_pre_lin=dropout_pre_lin)
        check_positive(self.fusion_name, hops=hops, hidden_dim=hidden_dim)
        hd = q_dim if hidden_dim is None else hidden_dim
        self.hops, self.hidden_dim = hops, hd
        kw = dict(device=device, dtype=dtype)
        self.v_proj = nn.Linear(v_dim, hd, **kw)
        self.q_proj = nn.Identity() if hd == q_dim else nn.Sequential(nn.Linear(q_dim, hd, **kw), nn.Tanh())
        self.fuse_fwd = nn.GRUCell(hd, hd, **kw)
        self.fuse_bwd = nn.GRUCell(hd, hd, **kw)
        self.gate_hidden = nn.Linear(4 * hd, hd, **kw)  # W_1, b_1
        self.gate_score = nn.Linear(hd, 1, **kw)  # W_2, b_2
        self.agru_input = nn.Linear(hd, 2 * hd, **kw)  # [W_r; W], [b_r; b_h]
        self.agru_hidden = nn.Linear(hd, 2 * hd, bias=False, **kw)  # [U_r; U]
        self.memory = nn.ModuleList(nn.Linear(3 * hd, hd, **kw) for _ in range(hops))
        self.drop = dropout_or_identity(dropout_pre_lin)
        self.out = nn.Linear(2 * hd, out_dim, **kw)

    def facts(self, v: Tensor, v_mask: Tensor | None) -> Tensor:
        """The input module: Tensor[B, K, Dv] -> facts Tensor[B, K, H] (0 at masked regions)."""
        x = torch.tanh(self.v_proj(v))
        f = masked_gru_scan(self.fuse_fwd, x, v_mask) + masked_gru_scan(self.fuse_bwd, x, v_mask, reverse=True)
        return f if v_mask is None else f * v_mask.unsqueeze(-1).to(f.dtype)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        qv = self.q_proj(self.question_vector(q, q_mask))  # [B, H]
        f = self.facts(v, v_mask)  # [B, K, H]
        gx_r, gx_n = self.agru_input(f).chunk(2, dim=-1)  # [B, K, H] each, for every pass
        fq, dq = f * qv.unsqueeze(1), (f - qv.unsqueeze(1)).abs()
        m = qv
        gates = []
        for t in range(self.hops):
            z = torch.cat([fq, f * m.unsqueeze(1), dq, (f - m.unsqueeze(1)).abs()], dim=-1)  # [B, K, 4H]
            g = masked_softmax(self.gate_score(torch.tanh(self.gate_hidden(z))).squeeze(-1), v_mask)  # [B, K]
            h = f.new_zeros(f.shape[0], self.hidden_dim)
            for k in range(f.shape[1]):
                uh_r, uh_n = self.agru_hidden(h).chunk(2, dim=-1)
                r = torch.sigmoid(gx_r[:, k] + uh_r)
                h_tilde = torch.tanh(gx_n[:, k] + r * uh_n)
                gk = g[:, k, None]
                h = gk * h_tilde + (1 - gk) * h
            m = torch.relu(self.memory[t](torch.cat([m, h, qv], dim=-1)))
            gates.append(g)
        fused = self.out(self.drop(torch.cat([m, qv], dim=-1)))
        return AttentionOutput(fused, torch.stack(gates, dim=1), None, {})

    def expected_num_parameters(self) -> int:
        dv, dq, hd, n = self.v_dim, self.q_dim, self.hidden_dim, self.hops
        proj_q = 0 if hd == dq else (dq + 1) * hd
        return (
            (dv + 1) * hd
            + proj_q
            + 2 * (6 * hd * hd + 6 * hd)
            + (4 * hd + 1) * hd
            + (hd + 1)
            + 4 * hd * hd
            + 2 * hd
            + n * (3 * hd + 1) * hd
            + (2 * hd + 1) * self.out_dim
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hops={self.hops}, hidden_dim={self.hidden_dim}"

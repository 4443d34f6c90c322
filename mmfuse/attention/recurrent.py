"""Recurrent attention: an LSTM reads the fused sequence and emits the attention logits.

Paper: Osman & Samek, "DRAU: Dual recurrent attention units for visual question answering",
Computer Vision and Image Understanding 185, 2019 (arXiv:1802.00209).

Axis legend: ``B`` batch, ``N`` positions of the attended sequence (``K`` regions or ``T``
words), ``D`` features, ``H`` hidden width, ``G`` glimpses.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, masked_softmax
from ..fusions._base import linear_params
from ..layers import ActivationArg, make_activation
from ._base import AttentionFusion, AttentionOutput, resolve_fusion
from .soft import fusion_num_parameters

__all__ = ["SequenceLSTM", "RecurrentAttentionUnit", "DualRecurrentAttention"]


class SequenceLSTM(nn.Module):
    """A one-layer, one-direction LSTM over ``Tensor[B, N, in_dim] -> Tensor[B, N, hidden_dim]``.

    The parametrisation and initialisation of ``nn.LSTM(in_dim, hidden_dim, batch_first=True)``
    (gates ``i, f, g, o`` stacked in ``weight_ih: Tensor[4H, in_dim]``,
    ``weight_hh: Tensor[4H, H]``, two biases ``Tensor[4H]``; all ``U(-1/sqrt(H), 1/sqrt(H))``),
    zero initial state::

        i, f, g, o = split(W_ih x_n + b_ih + W_hh h_{n-1} + b_hh)
        c_n = σ(f) ⊙ c_{n-1} + σ(i) ⊙ tanh(g),   h_n = σ(o) ⊙ tanh(c_n)

    It calls ``torch.lstm`` on its own parameters instead of holding an ``nn.LSTM``, because
    Dynamo refuses to trace ``nn.LSTM`` modules (``torch.compile(fullgraph=True)`` fails) while
    it traces the ``torch.lstm`` op; ``torch.export`` and autocast handle both.

    Parameters: ``4H (in_dim + H + 2)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.in_dim, self.hidden_dim = in_dim, hidden_dim
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_dim, in_dim, **kw))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_dim, hidden_dim, **kw))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_dim, **kw))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_dim, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_dim)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        h0 = x.new_zeros(1, x.shape[0], self.hidden_dim)  # (layers, B, H)
        weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        # args: has_biases, num_layers, dropout, train, bidirectional, batch_first
        out, _, _ = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)
        return out

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden_dim={self.hidden_dim}"


class RecurrentAttentionUnit(nn.Module):
    """One RAU: attention over a sequence ``x`` guided by a vector ``g``, computed by an LSTM.

    ::

        s_n = σ(W_x x_n + b_x) ⊙ σ(W_g g + b_g)       the fused sequence, Tensor[B, N, H]
        (h_1, .., h_N) = LSTM(s_1, .., s_N)            over the valid positions, in order
        α_g = softmax_n(w_g^T h_n + c_g)               G glimpses, Tensor[B, G, N]

    Padding: before the LSTM the valid positions are moved to the front (a stable sort of the
    mask, so their order is kept) and the logits are put back in place afterwards; since the
    LSTM runs forward only, a valid position's state depends on the valid positions before it
    and on nothing else, wherever the padding sits (with right-padding the sort is the
    identity). Padded positions then get exactly zero attention from the masked softmax.

    Parameters: ``(Dx + 1) H + (Dg + 1) H + 4H (2H + 2) + (H + 1) G``.
    """

    def __init__(
        self,
        x_dim: int,
        g_dim: int,
        hidden_dim: int,
        glimpses: int,
        activation: ActivationArg = "relu",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_positive("RecurrentAttentionUnit", x_dim=x_dim, g_dim=g_dim, hidden_dim=hidden_dim, glimpses=glimpses)
        self.x_dim, self.g_dim, self.hidden_dim, self.glimpses = x_dim, g_dim, hidden_dim, glimpses
        kw = dict(device=device, dtype=dtype)
        self.x_proj = nn.Linear(x_dim, hidden_dim, **kw)
        self.g_proj = nn.Linear(g_dim, hidden_dim, **kw)
        self.activation = make_activation(activation, "RecurrentAttentionUnit")
        self.lstm = SequenceLSTM(hidden_dim, hidden_dim, **kw)
        self.score = nn.Linear(hidden_dim, glimpses, **kw)

    def forward(self, x: Tensor, g: Tensor, mask: Tensor | None) -> Tensor:
        """``α``: Tensor[B, G, N] from ``x: Tensor[B, N, Dx]``, ``g: Tensor[B, Dg]``, bool mask [B, N]."""
        s = self.activation(self.x_proj(x)) * self.activation(self.g_proj(g)).unsqueeze(1)  # [B, N, H]
        if mask is None:
            logits = self.score(self.lstm(s))  # [B, N, G]
        else:
            order = torch.argsort((~mask).to(torch.int32), dim=1, stable=True)  # valid first, [B, N]
            s = s.gather(1, order.unsqueeze(-1).expand_as(s))
            packed = self.score(self.lstm(s))  # [B, N, G], position j holds original order[j]
            logits = torch.zeros_like(packed).scatter(1, order.unsqueeze(-1).expand_as(packed), packed)
        return masked_softmax(logits.transpose(1, 2), None if mask is None else mask.unsqueeze(1))

    def expected_num_parameters(self) -> int:
        h = self.hidden_dim
        lstm = 4 * h * (2 * h + 2)
        return linear_params(self.x_dim, h) + linear_params(self.g_dim, h) + lstm + linear_params(h, self.glimpses)

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, g_dim={self.g_dim}, hidden_dim={self.hidden_dim}, glimpses={self.glimpses}"


@register_fusion(
    "drau",
    kind="attention",
    modalities="2",
    paper="Osman & Samek, CVIU 2019 (DRAU: Dual Recurrent Attention Units)",
    order_free=False,
    tiny={"hidden_dim": 8},
)
class DualRecurrentAttention(AttentionFusion):
    """Dual recurrent attention: a visual and a textual RAU in parallel, then a vector fusion.

    With regions ``v_k``, words ``q_t``, the question vector ``q̄`` (masked mean of the words)
    and the image vector ``v̄`` (masked mean of the regions)::

        α^v = RAU_v(x = v, g = q̄)   Tensor[B, G, K]   (an LSTM over v_k ⊙ q̄, after projections)
        α^q = RAU_q(x = q, g = v̄)   Tensor[B, G, T]   (an LSTM over q_t ⊙ v̄)
        v̂_g = sum_k α^v_{g,k} v_k,   q̂_g = sum_t α^q_{g,t} q_t
        fused = f([v̂_1; ..; v̂_G], [q̂_1; ..; q̂_G])

    See :class:`RecurrentAttentionUnit` for the unit and for how padding is kept out of the
    LSTM. The attention depends on the order of the regions (the LSTM reads them in order).
    ``f`` is a vector fusion ``(G·Dv, G·Dq) -> out_dim``: the paper fuses with bilinear pooling
    (MCB, or MLB in its VQA 2.0 model); the default here is ``"product"`` until the bilinear
    family is registered, then pass ``fusion="mcb"`` or ``fusion="mlb"``.

    Where this departs from the text or could not be checked: the paper's RAU reads 1x1
    convolutions over the image grid; on a set of regions a 1x1 convolution is the Linear
    ``W_x`` here. The RAU's activation (``σ``) and widths are not spelled out in the sources
    available to us; ReLU and one ``hidden_dim`` for the projections and the LSTM are our
    choice. The paper's question vector comes from its question LSTM; here the contract's
    words are averaged (a vector question ``[B, Dq]`` is taken as is, and is also the single
    word the textual RAU attends over).

    Args:
        v_dim, q_dim, out_dim: the contract.
        glimpses: ``G``, for both units (2).
        hidden_dim: ``H``, width of the fused sequences and of both LSTMs (1024).
        activation: ``σ`` on the projections (ReLU).
        fusion: ``f``: a registry name or a module ``(G·Dv, G·Dq) -> out_dim`` (``"product"``).
        fusion_kwargs: extra knobs for ``f`` when built by name.

    Shapes: ``v: Tensor[B, K, Dv]``, ``q: Tensor[B, T, Dq]`` or ``[B, Dq]`` ->
    ``fused: Tensor[B, out_dim]``, ``v_attn: Tensor[B, G, K]``, ``q_attn: Tensor[B, G, T]``,
    ``extras = {}``.

    Parameters: ``P(RAU_v) + P(RAU_q) + P(f)`` with
    ``P(RAU_v) = (Dv + 1) H + (Dq + 1) H + 4H (2H + 2) + (H + 1) G``,
    ``P(RAU_q) = (Dq + 1) H + (Dv + 1) H + 4H (2H + 2) + (H + 1) G`` and ``P(f)`` the
    fusion's own count.

    Example::

        att = DualRecurrentAttention(2048, 1024, 3000, glimpses=2, fusion="product")
        out = att(v, q, v_mask=vm, q_mask=qm)   # out.v_attn [B, 2, K], out.q_attn [B, 2, T]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 2,
        hidden_dim: int = 1024,
        activation: ActivationArg = "relu",
        fusion: str | nn.Module = "product",
        fusion_kwargs: dict[str, Any] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim)
        name = self.fusion_name
        check_positive(name, glimpses=glimpses, hidden_dim=hidden_dim)
        self.glimpses, self.hidden_dim = glimpses, hidden_dim
        kw = dict(device=device, dtype=dtype)
        self.v_unit = RecurrentAttentionUnit(v_dim, q_dim, hidden_dim, glimpses, activation, **kw)
        self.q_unit = RecurrentAttentionUnit(q_dim, v_dim, hidden_dim, glimpses, activation, **kw)
        dims = (glimpses * v_dim, glimpses * q_dim)
        self.fusion = resolve_fusion(fusion, name, dims, out_dim, **dict(fusion_kwargs or {}), **kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q_vec = self.question_vector(q, q_mask)  # [B, Dq]
        words, w_mask = self.question_sequence(q, q_mask)  # [B, T, Dq]
        v_vec = self.question_vector(v, v_mask)  # masked mean of the regions, [B, Dv]
        a_v = self.v_unit(v, q_vec, v_mask)  # [B, G, K]
        a_q = self.q_unit(words, v_vec, w_mask)  # [B, G, T]
        v_hat = torch.einsum("bgk,bkd->bgd", a_v, v).flatten(1)  # [B, G*Dv]
        q_hat = torch.einsum("bgt,btd->bgd", a_q, words).flatten(1)  # [B, G*Dq]
        return AttentionOutput(self.fusion(v_hat, q_hat), a_v, a_q, {})

    def expected_num_parameters(self) -> int:
        return (
            self.v_unit.expected_num_parameters()
            + self.q_unit.expected_num_parameters()
            + fusion_num_parameters(self.fusion)
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, glimpses={self.glimpses}, hidden_dim={self.hidden_dim}"

"""Relation network: a question-conditioned MLP over every pair of regions, summed.

Santoro, Raposo, Barrett, Malinowski, Pascanu, Battaglia, Lillicrap, "A simple neural network
module for relational reasoning", NeurIPS 2017. Sort-of-CLEVR, the main job's data, was made for
it: on 2D scenes the paper's CNN + RN answers relational questions ("the shape of the object
closest to the red one") at > 94% where a CNN + MLP gets 63%.

It is not one of the survey's attention fusions: it has no attention map. It sits beside them
because it takes the same inputs (regions and a question) and is the reference model for
relational questions, which score-based attention answers only as well as its scores separate
distances (docs/BENCHMARKS.md, "The main job").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive
from ..fusions._base import linear_params
from ..layers import dropout_or_identity
from ._base import AttentionFusion, AttentionOutput

__all__ = ["RelationNetwork"]

REDUCTIONS = ("sum", "mean")


@register_fusion(
    "relation_network",
    kind="attention",
    modalities="2",
    paper="Santoro et al., NeurIPS 2017 (Relation Networks)",
    tiny={"hidden_dim": 8, "g_layers": 2, "f_dims": [8]},
)
class RelationNetwork(AttentionFusion):
    """Relation network over regions ``o_i`` and a question vector ``q``::

        RN(O, q) = f_φ( Σ_{i,j} g_θ([o_i; o_j; q]) )

    ``g_θ``: ``g_layers`` Linear + ReLU layers of width ``hidden_dim`` applied to every ordered
    pair of valid regions, ``i = j`` included (the paper's "all pairs"); ``f_φ``: Linear + ReLU
    layers of widths ``f_dims``, dropout, then a Linear to ``out_dim`` (the paper's answer layer:
    with ``out_dim`` = number of answers it is the paper's logits). The sum runs over the pairs
    whose two regions are valid (``reduction="mean"`` divides by their number).

    The first layer of ``g_θ`` is linear in the concatenation, ``W [o_i; o_j; q] + b =
    A o_i + B o_j + C q + b``, so it is computed per region and broadcast over the pairs
    (``K`` rows, not ``K²``); the other layers run on ``B·K²`` rows. Memory: the activations
    are ``B·K²·hidden_dim`` per layer (64 x 25² x 256 floats = 39 MiB per layer for the paper's
    Sort-of-CLEVR: batch 64, a 5 x 5 grid of cells; 100 regions take 16 times that).

    Paper defaults (Sort-of-CLEVR): ``g_θ`` 4 x 256, ``f_φ`` 256, 256, dropout 0.5 before the last
    layer, a sum over pairs. The question is the model's LSTM state there; here ``q`` may be that
    vector ``[B, Dq]`` or words ``[B, T, Dq]`` (averaged over the valid ones). The paper tags each
    CNN cell with its coordinates; region encoders here do that.

    Args:
        v_dim, q_dim, out_dim: the contract.
        hidden_dim: width of ``g_θ`` (256).
        g_layers: number of ``g_θ`` layers (4).
        f_dims: hidden widths of ``f_φ`` ((256, 256); empty = a single Linear).
        dropout: before ``f_φ``'s last layer (0.5).
        reduction: ``"sum"`` (the paper) or ``"mean"`` over the valid pairs.

    Shapes: ``v: Tensor[B, K, Dv]``, ``q: Tensor[B, Dq]`` or ``Tensor[B, T, Dq]`` ->
    ``fused: Tensor[B, out_dim]``; ``v_attn`` and ``q_attn`` are None (no attention);
    ``extras["relations"]``: ``Tensor[B, hidden_dim]``, the reduced ``g_θ`` output fed to ``f_φ``.

    Parameters, with ``L(i, o) = (i + 1) o`` and ``H = hidden_dim``:
    ``L(Dv, H) + Dv·H + Dq·H + (g_layers - 1) L(H, H) + Σ L(f_in, f_out) + L(f_last, out_dim)``
    (``f_in`` runs over ``H, f_dims[:-1]``; ``f_last`` = ``f_dims[-1]``, or ``H`` if empty).

    Example::

        rn = RelationNetwork(26, 128, 10)                     # the paper's Sort-of-CLEVR sizes
        out = rn(objects, question, v_mask=mask)              # out.fused [B, 10]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 256,
        g_layers: int = 4,
        f_dims: Sequence[int] = (256, 256),
        dropout: float = 0.5,
        reduction: str = "sum",
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout=dropout)
        name = self.fusion_name
        check_positive(name, hidden_dim=hidden_dim, g_layers=g_layers)
        f_dims = tuple(f_dims)
        if any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in f_dims):
            raise ValueError(f"{name}: f_dims must be positive ints, got {list(f_dims)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.hidden_dim, self.g_layers, self.f_dims, self.reduction = hidden_dim, g_layers, f_dims, reduction
        kw = dict(device=device, dtype=dtype)
        # g_θ's first layer, split by the parts of [o_i; o_j; q]: one bias for the three
        self.g_left = nn.Linear(v_dim, hidden_dim, **kw)
        self.g_right = nn.Linear(v_dim, hidden_dim, bias=False, **kw)
        self.g_question = nn.Linear(q_dim, hidden_dim, bias=False, **kw)
        self.g_rest = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim, **kw) for _ in range(g_layers - 1))
        layers: list[nn.Module] = []
        for a, b in zip((hidden_dim, *f_dims[:-1]), f_dims):
            layers += [nn.Linear(a, b, **kw), nn.ReLU()]
        self.f_hidden = nn.Sequential(*layers)
        self.drop = dropout_or_identity(dropout)
        self.linear_out = nn.Linear(f_dims[-1] if f_dims else hidden_dim, out_dim, **kw)

    def relations(self, v: Tensor, qv: Tensor, v_mask: Tensor | None) -> Tensor:
        """``Σ_{i,j} g_θ([o_i; o_j; q])`` (or the mean) over the valid pairs: Tensor[B, hidden_dim]."""
        h = self.g_left(v).unsqueeze(2) + self.g_right(v).unsqueeze(1)  # [B, K, K, H]: o_i (rows), o_j
        h = torch.relu(h + self.g_question(qv)[:, None, None])
        for layer in self.g_rest:
            h = torch.relu(layer(h))
        if v_mask is None:
            total = h.sum(dim=(1, 2))
            return total / (v.shape[1] ** 2) if self.reduction == "mean" else total
        pairs = (v_mask.unsqueeze(2) & v_mask.unsqueeze(1)).to(h.dtype)  # [B, K, K]
        total = torch.einsum("bijh,bij->bh", h, pairs)
        if self.reduction == "mean":
            total = total / pairs.sum(dim=(1, 2)).clamp(min=1).unsqueeze(-1)
        return total

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        rel = self.relations(v, self.question_vector(q, q_mask), v_mask)  # [B, H]
        fused = self.linear_out(self.drop(self.f_hidden(rel)))
        return AttentionOutput(fused, None, None, {"relations": rel})

    def expected_num_parameters(self) -> int:
        dv, dq, h = self.v_dim, self.q_dim, self.hidden_dim
        n = linear_params(dv, h) + dv * h + dq * h + (self.g_layers - 1) * linear_params(h, h)
        widths = (h, *self.f_dims)
        n += sum(linear_params(a, b) for a, b in zip(widths[:-1], widths[1:]))
        return n + linear_params(widths[-1], self.out_dim)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, g_layers={self.g_layers}, "
                f"f_dims={list(self.f_dims)}, reduction={self.reduction!r}")

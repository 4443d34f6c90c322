"""High-order attention: each modality's attention comes from unary, pairwise and ternary
potentials that tie it to the other modalities.

Paper: Schwartz, Schwing & Hazan, "High-order attention models for visual question answering",
NIPS 2017 (reference code idansc/HighOrderAtten, misc/attention.lua and misc/vqa_model.lua).

Axis legend: ``B`` batch, ``M`` modalities, ``N_m`` positions of modality ``m`` (``K`` regions,
``T`` words, ``A`` answers, ...), ``D_m`` its features, ``H`` the embedding width.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, masked_softmax
from ..fusions._base import linear_params
from ..layers import dropout_or_identity
from ._base import AttentionFusion, AttentionOutput, check_attention_inputs, resolve_fusion
from .soft import fusion_num_parameters

__all__ = ["HighOrderAttention"]


def _uniform_scale(shape: Sequence[int], device=None, dtype=None) -> nn.Parameter:
    """The reference code's ``nn.CMul`` init: ``U(-1/sqrt(n), 1/sqrt(n))``, ``n`` its entries."""
    w = torch.empty(*shape, device=device, dtype=dtype)
    bound = 1.0 / math.sqrt(w.numel())
    return nn.Parameter(nn.init.uniform_(w, -bound, bound))


def _joint_valid(masks: Sequence[Tensor | None], sizes: Sequence[int]) -> Tensor | None:
    """``valid[b, i, j, ..] = masks[0][b, i] & masks[1][b, j] & ..``, or None without masks."""
    if all(m is None for m in masks):
        return None
    valid = None
    for axis, (m, n) in enumerate(zip(masks, sizes)):
        if m is None:
            continue
        shape = [m.shape[0]] + [n if a == axis else 1 for a in range(len(sizes))]
        term = m.view(shape)
        valid = term if valid is None else valid & term
    return valid


class _Unary(nn.Module):
    """``θ(x_i) = w^T drop(tanh(W x_i + b)) + c``: Tensor[B, N, D] -> Tensor[B, N]."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Linear(dim, hidden_dim, device=device, dtype=dtype)
        self.score = nn.Linear(hidden_dim, 1, device=device, dtype=dtype)
        self.drop = dropout_or_identity(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.score(self.drop(torch.tanh(self.proj(x)))).squeeze(-1)


class _Correlation(nn.Module):
    """Pairwise (2 factors) or ternary (3 factors) potentials, marginalised onto each factor.

    For factors ``x^1..x^F`` (``F`` = 2 or 3) with embeddings ``e^f_i = W_f x^f_i + b_f``::

        C[i, j(, k)] = S[i, j(, k)] · sum_h e^1_{i,h} e^2_{j,h} (e^3_{k,h})
        θ_f(i_f) = tanh(sum_{other indices} w_f[others] C[..] + c_f)

    ``S`` is a learned per-entry scale of the maximum sizes; inputs with fewer positions use
    its leading block (identical to zero-padding up to the maximum, since padded entries
    contribute nothing). Entries with any padded index are zero before the marginalisation.
    ``w_f`` is the reference code's ``nn.Linear(prod(other max sizes), 1)``.

    Parameters: ``sum_f (D_f + 1) H + prod_f N_f + sum_f (prod_{g != f} N_g + 1)``.
    """

    def __init__(self, dims: Sequence[int], sizes: Sequence[int], hidden_dim: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.sizes = tuple(sizes)
        self.proj = nn.ModuleList(nn.Linear(d, hidden_dim, **kw) for d in dims)
        self.scale = _uniform_scale(self.sizes, **kw)
        others = [[n for g, n in enumerate(self.sizes) if g != f] for f in range(len(self.sizes))]
        self.marginal = nn.ModuleList(nn.Linear(math.prod(o), 1, **kw) for o in others)

    def forward(self, xs: Sequence[Tensor], masks: Sequence[Tensor | None]) -> list[Tensor]:
        es = [p(x) for p, x in zip(self.proj, xs)]  # each [B, N_f, H]
        ns = [x.shape[1] for x in xs]
        letters = "ijk"[: len(xs)]
        corr = torch.einsum(",".join(f"b{c}h" for c in letters) + f"->b{letters}", *es)  # [B, N_1, .., N_F]
        corr = corr * self.scale[tuple(slice(0, n) for n in ns)]
        valid = _joint_valid(masks, ns)
        if valid is not None:
            corr = corr.masked_fill(~valid, 0.0)
        out = []
        for f, lin in enumerate(self.marginal):
            other_max = [n for g, n in enumerate(self.sizes) if g != f]
            other_now = [n for g, n in enumerate(ns) if g != f]
            w = lin.weight.view(other_max)[tuple(slice(0, n) for n in other_now)]  # [N_others..]
            rest = "".join(c for g, c in enumerate(letters) if g != f)
            spec = f"b{letters},{rest}->b{letters[f]}"
            out.append(torch.tanh(torch.einsum(spec, corr, w) + lin.bias))  # [B, N_f]
        return out


@register_fusion(
    "high_order",
    kind="attention",
    modalities="2+",
    paper="Schwartz et al., NIPS 2017 (High-order attention models for VQA)",
    order_free=False,
    tiny={"hidden_dim": 8, "max_regions": 6, "max_words": 5},
)
class HighOrderAttention(AttentionFusion):
    """High-order attention over any number of modalities, from unary, pairwise and ternary
    potentials, followed by a vector fusion of the attended vectors.

    Modalities ``X^1 = V`` (regions), ``X^2 = Q`` (words), then any extra ones ``X^3..X^M``
    (e.g. the embedded multiple-choice answers of the paper), ``X^m: Tensor[B, N_m, D_m]``.
    For each modality ``m`` and position ``i``::

        unary     θ_m(i)      = w_m^T tanh(W_m x^m_i + b_m) + c_m
        pairwise  θ_{m|n}(i)  = tanh(sum_j w_{mn}[j] S_{mn}[i, j] (U_m x^m_i + u_m)^T (U_n x^n_j + u_n) + c_{mn})
        ternary   θ_{m|np}(i) = tanh(sum_{j,k} w_{mnp}[j, k] S_{mnp}[i, j, k]
                                      sum_h e^m_{i,h} e^n_{j,h} e^p_{k,h} + c_{mnp})
        α_m       = softmax_i(a_m^T [θ_m(i); θ_{m|n}(i) for n != m; θ_{m|np}(i) for n < p] + d_m)
        x̂_m       = sum_i α_{m,i} x^m_i
        fused     = f(x̂_1, x̂_2, .., x̂_M)

    one pairwise factor per pair and one ternary factor per triple of modalities, each with its
    own embeddings (as in misc/attention.lua), a learned per-entry scale ``S`` and learned
    marginalisation weights ``w`` over the other indices (the sums run over valid positions
    only, so padding never enters a potential). ``order`` caps the potentials
    (1: unary only, 2: + pairwise, 3: + ternary, which needs three modalities).

    Fixed sizes: ``S`` and ``w`` are indexed by position, so the module is built for maximum
    sizes ``max_regions``, ``max_words`` and ``other_sizes``; shorter inputs are treated as
    padded up to them (padding contributes zero), and masks mark padding inside them. The
    attention therefore depends on the order of the positions.

    Extra modalities: build with ``other_dims=(D_3, ..)`` and ``other_sizes=(N_3, ..)`` and call
    ``att(v, q, v_mask, q_mask, others=[x3, ..], others_mask=[m3 or None, ..])``. The two-modality
    call ``att(v, q, v_mask, q_mask)`` is the attention contract.

    Final fusion: the paper combines the attended vectors with cascaded MCB, each followed by
    signed square root and L2 normalisation (``MCB(MCB(â, v̂), MCB(q̂, v̂))`` with three
    modalities); here ``f`` is one vector fusion of all ``M`` attended vectors, a registry name
    or a module ``(D_1, .., D_M) -> out_dim``. The default is ``"product"`` until the bilinear
    family lands; then ``fusion="mcb"`` (an ``M``-way MCB) is the paper's closest choice.
    The reference code embeds every modality to one width beforehand (512); here each factor
    has its own ``D_m -> H`` embedding, so raw features of different widths can be given.

    Args:
        v_dim, q_dim, out_dim: the contract.
        max_regions, max_words: the largest ``K`` and ``T`` accepted (196 = 14x14 grid cells,
            26 = the reference preprocessing's question length).
        other_dims, other_sizes: widths and maximum lengths of the extra modalities.
        order: highest order of the potentials, 1, 2 or 3 (3).
        hidden_dim: ``H`` (512).
        dropout_attention: on ``tanh(W_m x^m_i + b_m)`` in the unary potentials (0.5).
        fusion, fusion_kwargs: ``f`` and extra knobs when it is built by name.

    Shapes: ``v: Tensor[B, K, Dv]`` (``K <= max_regions``), ``q: Tensor[B, T, Dq]``
    (``T <= max_words``; a vector ``[B, Dq]`` is a one-word question) -> ``fused:
    Tensor[B, out_dim]``, ``v_attn: Tensor[B, 1, K]``, ``q_attn: Tensor[B, 1, T]``; ``extras``:
    ``"other_attn_{i}": Tensor[B, 1, N_{i+3}]`` for each extra modality ``i = 0, 1, ..``.

    Parameters, with ``L(i, o) = (i + 1) o``, ``P`` the set of modality pairs and ``R`` of
    triples (``R`` empty unless ``order = 3``, ``P`` empty when ``order = 1``)::

        sum_m (L(D_m, H) + L(H, 1))                                         unary
        + sum_{(a,b) in P} (L(D_a, H) + L(D_b, H) + N_a N_b + L(N_b, 1) + L(N_a, 1))
        + sum_{(a,b,c) in R} (L(D_a, H) + L(D_b, H) + L(D_c, H) + N_a N_b N_c
                              + L(N_b N_c, 1) + L(N_a N_c, 1) + L(N_a N_b, 1))
        + sum_m L(1 + [order>=2](M-1) + [order>=3](M-1)(M-2)/2, 1)         merge
        + P(f)

    Example::

        att = HighOrderAttention(2048, 1024, 3000, max_regions=36, max_words=14,
                                 other_dims=(300,), other_sizes=(18,), fusion="product")
        out = att(v, q, v_mask=vm, q_mask=qm, others=[answers])   # out.extras["other_attn_0"]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        max_regions: int = 196,
        max_words: int = 26,
        other_dims: Sequence[int] = (),
        other_sizes: Sequence[int] = (),
        order: int = 3,
        hidden_dim: int = 512,
        dropout_attention: float = 0.5,
        fusion: str | nn.Module = "product",
        fusion_kwargs: dict[str, Any] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_attention=dropout_attention)
        name = self.fusion_name
        check_positive(name, max_regions=max_regions, max_words=max_words, hidden_dim=hidden_dim)
        other_dims, other_sizes = tuple(other_dims), tuple(other_sizes)
        if len(other_dims) != len(other_sizes):
            raise ValueError(
                f"{name}: other_dims and other_sizes must have the same length, got {other_dims} and {other_sizes}"
            )
        check_positive(name, **{f"other_dims[{i}]": d for i, d in enumerate(other_dims)})
        check_positive(name, **{f"other_sizes[{i}]": n for i, n in enumerate(other_sizes)})
        if order not in (1, 2, 3):
            raise ValueError(f"{name}: order must be 1, 2 or 3, got {order!r}")
        self.max_regions, self.max_words, self.order, self.hidden_dim = max_regions, max_words, order, hidden_dim
        self.other_dims, self.other_sizes = other_dims, other_sizes
        self.dims = (v_dim, q_dim, *other_dims)
        self.sizes = (max_regions, max_words, *other_sizes)
        m = len(self.dims)
        kw = dict(device=device, dtype=dtype)
        self.unary = nn.ModuleList(_Unary(d, hidden_dim, dropout_attention, **kw) for d in self.dims)
        self.pair_index = list(itertools.combinations(range(m), 2)) if order >= 2 else []
        self.triple_index = list(itertools.combinations(range(m), 3)) if order >= 3 else []
        self.pairwise = nn.ModuleList(self._factor(ix, kw) for ix in self.pair_index)
        self.ternary = nn.ModuleList(self._factor(ix, kw) for ix in self.triple_index)
        self.merge = nn.ModuleList(nn.Linear(self._num_potentials(), 1, **kw) for _ in range(m))
        self.fusion = resolve_fusion(fusion, name, self.dims, out_dim, **dict(fusion_kwargs or {}), **kw)

    def _factor(self, index: tuple[int, ...], kw: dict) -> _Correlation:
        return _Correlation([self.dims[i] for i in index], [self.sizes[i] for i in index], self.hidden_dim, **kw)

    def _num_potentials(self) -> int:
        """Potentials per modality: unary, one per other modality, one per pair of others."""
        m = len(self.dims)
        return 1 + (m - 1) * (self.order >= 2) + (m - 1) * (m - 2) // 2 * (self.order >= 3)

    # ------------------------------------------------------------------ inputs

    def _check_length(self, what: str, x: Tensor, limit: int, knob: str) -> None:
        if x.shape[1] > limit:
            raise ValueError(
                f"{self.fusion_name}: expected at most {limit} {what} ({knob}={limit}), got shape {tuple(x.shape)}"
            )

    def _check_others(self, b: int, others, others_mask) -> tuple[list[Tensor], list[Tensor | None]]:
        name, n = self.fusion_name, len(self.other_dims)
        others = list(others) if others is not None else []
        if len(others) != n:
            raise ValueError(
                f"{name}: expected {n} extra modalities in others (other_dims={self.other_dims}), got {len(others)}"
            )
        masks = list(others_mask) if others_mask is not None else [None] * n
        if len(masks) != n:
            raise ValueError(f"{name}: expected {n} entries in others_mask, got {len(masks)}")
        for i, (x, mask, d, size) in enumerate(zip(others, masks, self.other_dims, self.other_sizes)):
            ok = isinstance(x, Tensor) and x.dim() == 3 and x.is_floating_point()
            if not (ok and x.shape[0] == b and x.shape[2] == d):
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"{name}: expected others[{i}] float of shape [{b}, N, {d}], got {got}")
            self._check_length(f"positions in others[{i}]", x, size, f"other_sizes[{i}]")
            if mask is not None and (
                not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2])
            ):
                got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"{name}: expected others_mask[{i}] bool of shape {tuple(x.shape[:2])}, got {got}")
        return others, masks

    def forward(
        self,
        v: Tensor,
        q: Tensor,
        v_mask: Tensor | None = None,
        q_mask: Tensor | None = None,
        *,
        others: Sequence[Tensor] | None = None,
        others_mask: Sequence[Tensor | None] | None = None,
    ) -> AttentionOutput:
        """Attend and fuse; ``others``/``others_mask`` carry the extra modalities, in order."""
        check_attention_inputs(self.fusion_name, v, q, v_mask, q_mask, self.v_dim, self.q_dim)
        self._check_length("regions", v, self.max_regions, "max_regions")
        if q.dim() == 3:
            self._check_length("words", q, self.max_words, "max_words")
        xs, masks = self._check_others(v.shape[0], others, others_mask)
        words, w_mask = self.question_sequence(q, q_mask)
        return self._attend_all([v, words, *xs], [v_mask, w_mask, *masks])

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        words, w_mask = self.question_sequence(q, q_mask)
        xs, masks = self._check_others(v.shape[0], None, None)
        return self._attend_all([v, words, *xs], [v_mask, w_mask, *masks])

    # ------------------------------------------------------------------ the model

    def potentials(self, xs: Sequence[Tensor], masks: Sequence[Tensor | None]) -> list[Tensor]:
        """Stacked potentials per modality: ``Tensor[B, N_m, P]`` each, in the merge order."""
        pots: list[list[Tensor]] = [[u(x)] for u, x in zip(self.unary, xs)]
        for index, factor in itertools.chain(zip(self.pair_index, self.pairwise), zip(self.triple_index, self.ternary)):
            for m, p in zip(index, factor([xs[i] for i in index], [masks[i] for i in index])):
                pots[m].append(p)
        return [torch.stack(p, dim=-1) for p in pots]

    def _attend_all(self, xs: list[Tensor], masks: list[Tensor | None]) -> AttentionOutput:
        attn, hats = [], []
        for x, mask, pot, merge in zip(xs, masks, self.potentials(xs, masks), self.merge):
            a = masked_softmax(merge(pot).squeeze(-1), mask)  # [B, N_m]
            attn.append(a.unsqueeze(1))
            hats.append(torch.einsum("bn,bnd->bd", a, x))
        extras = {f"other_attn_{i}": a for i, a in enumerate(attn[2:])}
        return AttentionOutput(self.fusion(*hats), attn[0], attn[1], extras)

    def expected_num_parameters(self) -> int:
        h, dims, sizes = self.hidden_dim, self.dims, self.sizes
        total = sum(linear_params(d, h) + linear_params(h, 1) for d in dims)
        for index in [*self.pair_index, *self.triple_index]:
            ns = [sizes[i] for i in index]
            total += sum(linear_params(dims[i], h) for i in index) + math.prod(ns)
            total += sum(linear_params(math.prod(ns) // n, 1) for n in ns)
        total += len(dims) * linear_params(self._num_potentials(), 1)
        return total + fusion_num_parameters(self.fusion)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, max_regions={self.max_regions}, max_words={self.max_words}, "
            f"other_dims={self.other_dims}, other_sizes={self.other_sizes}, order={self.order}, "
            f"hidden_dim={self.hidden_dim}"
        )

"""Bilinear pooling with attention: MCB, MLB, MFB / MFH co-attention, MUTAN and BLOCK attention.

Papers:
- Fukui, Park, Yang, Rohrbach, Darrell & Rohrbach, "Multimodal compact bilinear pooling for
  visual question answering and visual grounding", EMNLP 2016 (``mcb_attention``; reference
  code akirafukui/vqa-mcb, ``train/multi_att_2_glove``).
- Kim, On, Lim, Kim, Ha & Zhang, "Hadamard product for low-rank bilinear pooling", ICLR 2017
  (``mlb_attention``; reference code jnhwkim/MulLowBiVQA, ``netdef/MLB.lua``).
- Yu, Yu, Fan & Tao, "Multi-modal factorized bilinear pooling with co-attention learning for
  visual question answering", ICCV 2017 (``mfb_coattention``), and Yu, Yu, Xiang, Fan & Tao,
  "Beyond bilinear: generalized multimodal factorized high-order pooling for visual question
  answering", TNNLS 2018 (``mfh_coattention``); reference code yuzcccc/vqa-mfb
  (``mf[bh]_coatt_glove``) and MILVLG/openvqa (``models/mfb``).
- Ben-younes, Cadene, Cord & Thome, "MUTAN: Multimodal Tucker fusion for visual question
  answering", ICCV 2017 (``mutan_attention``; reference code Cadene/vqa.pytorch), and
  Ben-younes, Cadene, Thome & Cord, "BLOCK: Bilinear superdiagonal fusion for visual question
  answering and visual relationship detection", AAAI 2019 (``block_attention``; reference code
  Cadene/block.bootstrap.pytorch, ``models/networks/vqa_net.py``).

Every method here scores each region with a vector fusion of the region and the question,
takes ``G`` softmax glimpses over the regions, and fuses the attended vectors with the question
by a second vector fusion. Both fusions are registry names (or modules), so any registered
vector fusion can be swapped in with ``fusion=`` / ``fusion_kwargs=``; the paper's knobs are
only added when the paper's own fusion is chosen.

Axis legend of the einsums and shape notes: ``b`` / ``B`` batch, ``g`` / ``G`` glimpses,
``k`` / ``K`` regions, ``t`` / ``T`` words, ``d`` / ``D`` features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, check_probability, masked_softmax
from ..fusions.factorized import ChunkLinear
from ..layers import MLP, ActivationArg, dropout_or_identity, make_activation
from ._base import AttentionFusion, AttentionOutput, resolve_fusion
from .soft import fusion_num_parameters

__all__ = [
    "WordAttention",
    "glimpse_pool",
    "MCBAttention",
    "MLBAttention",
    "MFBCoAttention",
    "MFHCoAttention",
    "BilinearAttention",
    "MutanAttention",
    "BlockAttention",
]


# ------------------------------------------------------------------ shared pieces


def glimpse_pool(alpha: Tensor, x: Tensor) -> Tensor:
    """Attended vectors of every glimpse, concatenated.

    Args:
        alpha: Tensor[B, G, N] attention weights; x: Tensor[B, N, D].
    Returns:
        Tensor[B, G·D]: ``[sum_n α_{1,n} x_n; ..; sum_n α_{G,n} x_n]``.
    """
    return torch.einsum("bgn,bnd->bgd", alpha, x).flatten(1)


def mlp_num_parameters(in_dim: int, dims: Sequence[int]) -> int:
    """Parameters of :class:`~mmfuse.layers.MLP` ``in_dim -> dims``: ``sum (d_in + 1)·d_out``."""
    sizes = [in_dim, *dims]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def _score_dims(mlp_dim: int | None, glimpses: int) -> tuple[int, ...]:
    return (glimpses,) if mlp_dim is None else (mlp_dim, glimpses)


def _with_defaults(spec: Any, paper_name: str, defaults: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    """``user`` kwargs on top of the paper's ``defaults`` when ``spec`` is the paper's fusion name."""
    base = dict(defaults) if isinstance(spec, str) and spec == paper_name else {}
    return {**base, **dict(user or {})}


class WordAttention(nn.Module):
    """Question self-attention: ``α_{g,t} = softmax_t(MLP(q_t)_g)``, ``q̂ = [Σ_t α_{1,t} q_t; ..]``.

    The MLP is ``Linear(Dq, mlp_dim) -> activation -> dropout -> Linear(mlp_dim, G)`` (MFB's
    ``qatt_conv1 / relu / qatt_conv2``, block.bootstrap's ``q_att_linear0 / relu / q_att_linear1``);
    the softmax runs over the valid words only.

    Shapes: ``q`` Tensor[B, T, Dq], ``q_mask`` bool Tensor[B, T] or None ->
    ``(q̂ Tensor[B, G·Dq], α Tensor[B, G, T])``.

    Parameters: ``(Dq + 1)·mlp_dim + (mlp_dim + 1)·G``.

    Example::

        att = WordAttention(1024, glimpses=2)
        q_hat, alpha = att(words, word_mask)      # [B, 2048], [B, 2, T]
    """

    def __init__(
        self,
        q_dim: int,
        glimpses: int,
        mlp_dim: int = 512,
        activation: ActivationArg = "relu",
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.q_dim, self.glimpses, self.mlp_dim = q_dim, glimpses, mlp_dim
        self.mlp = MLP(q_dim, (mlp_dim, glimpses), activation, dropout, device=device, dtype=dtype)

    def forward(self, q: Tensor, q_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        logits = self.mlp(q).transpose(1, 2)  # [B, G, T]
        alpha = masked_softmax(logits, None if q_mask is None else q_mask.unsqueeze(1))
        return glimpse_pool(alpha, q), alpha

    def num_parameters(self) -> int:
        return mlp_num_parameters(self.q_dim, (self.mlp_dim, self.glimpses))


def _region_attention(logits: Tensor, v_mask: Tensor | None) -> Tensor:
    """Tensor[B, K, G] scores -> Tensor[B, G, K] softmax over the valid regions."""
    return masked_softmax(logits.transpose(1, 2), None if v_mask is None else v_mask.unsqueeze(1))


# ------------------------------------------------------------------ MCB


@register_fusion(
    "mcb_attention",
    kind="attention",
    modalities="2",
    paper="Fukui et al., EMNLP 2016 (MCB with attention)",
    # a sketch small enough that every bin receives terms (see the mcb fusion)
    tiny={"hidden_dim": 4, "mlp_dim": 8},
)
class MCBAttention(AttentionFusion):
    """MCB with attention: compact bilinear scores per region, then compact bilinear fusion.

    ::

        z_i   = norm(MCB(v_i, q))                         (sketch of v_i ⊗ q, d = hidden_dim)
        α_g   = softmax_i(w_g^T ReLU(W_1 z_i + b_1) + c_g) over the valid regions, g = 1..G
        fused = MCB_out([Σ_i α_{1,i} v_i; ..; Σ_i α_{G,i} v_i], q)

    ``norm`` is signed sqrt + L2 per region followed by dropout 0.1 (the mcb fusion with
    ``output_linear=False``); the two-layer scorer is the reference code's two 1x1
    convolutions (512 channels, ReLU, G channels). ``MCB_out`` is the mcb fusion with its output
    Linear: sketch, signed sqrt, L2, dropout 0.1, ``Linear(d, out_dim)`` — with ``out_dim`` the
    number of answers this is exactly the paper's prediction layer. A question given as words
    is averaged over its valid words (the paper feeds its 2-layer LSTM's final states).

    Checked against the reference code (vqa-mcb ``multi_att_2_glove/train_att_bc.py``): its
    ``L2Normalize`` after the first MCB normalises the whole ``16000×14×14`` map of an image
    at once, and its data layer L2-normalises the whole ``2048×14×14`` image feature map; here
    the norm is per region (the paper's MCB module, and padding cannot leak into valid
    regions), and normalising image features is the encoder's job.

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] or Tensor[B, Dq] -> ``fused``
    Tensor[B, out_dim]; ``v_attn`` Tensor[B, G, K]; ``q_attn`` None; ``extras`` empty.

    Args:
        v_dim, q_dim, out_dim: the contract.
        glimpses: G (2).
        hidden_dim: d, the sketch size of both MCBs (16000); with another ``fusion`` the width
            of its output ``z_i``.
        mlp_dim: the scorer's hidden width (512); ``None`` scores with one Linear ``d -> G``.
        activation, dropout_attention: inside the scorer (ReLU, 0).
        fusion: the scoring fusion ``(Dv, Dq) -> hidden_dim``, a registry name or a module
            (``"mcb"`` gets ``hidden_dim=d, output_linear=False``).
        output_fusion: ``(G·Dv, Dq) -> out_dim``; ``None`` = the same name as ``fusion``
            (``"mcb"`` when ``fusion`` is a module); ``"mcb"`` gets ``hidden_dim=d``.
        fusion_kwargs / output_fusion_kwargs: extra knobs for the fusions built by name
            (``output_fusion_kwargs=None`` reuses ``fusion_kwargs``).

    Parameters, with ``M = mlp_dim``: ``P(f) + (d + 1)·M + (M + 1)·G + P(f_out)``
    (``P(f) + (d + 1)·G + P(f_out)`` without the hidden layer), ``P`` the sub-fusions' counts:
    for MCB ``P(f) = 0`` and ``P(f_out) = (d + 1)·out_dim``.

    Example::

        att = MCBAttention(2048, 2048, 3000)            # the paper: d = 16000, G = 2
        out = att(v, q_vec, v_mask=mask)                  # fused [B, 3000], v_attn [B, 2, K]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 2,
        hidden_dim: int = 16000,
        mlp_dim: int | None = 512,
        activation: ActivationArg = "relu",
        dropout_attention: float = 0.0,
        fusion: str | nn.Module = "mcb",
        output_fusion: str | nn.Module | None = None,
        fusion_kwargs: dict[str, Any] | None = None,
        output_fusion_kwargs: dict[str, Any] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_attention=dropout_attention)
        name = self.fusion_name
        check_positive(name, glimpses=glimpses, hidden_dim=hidden_dim, mlp_dim=mlp_dim)
        self.glimpses, self.hidden_dim, self.mlp_dim = glimpses, hidden_dim, mlp_dim
        kw = dict(device=device, dtype=dtype)
        inner = _with_defaults(fusion, "mcb", {"hidden_dim": hidden_dim, "output_linear": False}, fusion_kwargs)
        self.score_fusion = resolve_fusion(fusion, name, (v_dim, q_dim), hidden_dim, **inner, **kw)
        self.score = MLP(hidden_dim, _score_dims(mlp_dim, glimpses), activation, dropout_attention, **kw)
        if output_fusion is None:
            output_fusion = fusion if isinstance(fusion, str) else "mcb"
        outer = _with_defaults(
            output_fusion, "mcb", {"hidden_dim": hidden_dim},
            fusion_kwargs if output_fusion_kwargs is None else output_fusion_kwargs,
        )
        self.output_fusion = resolve_fusion(output_fusion, name, (glimpses * v_dim, q_dim), out_dim, **outer, **kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q_vec = self.question_vector(q, q_mask)  # [B, Dq]
        z = self.score_fusion(v, q_vec.unsqueeze(1))  # [B, K, d]
        alpha = _region_attention(self.score(z), v_mask)  # [B, G, K]
        fused = self.output_fusion(glimpse_pool(alpha, v), q_vec)
        return AttentionOutput(fused, alpha, None, {})

    def expected_num_parameters(self) -> int:
        return (
            fusion_num_parameters(self.score_fusion)
            + mlp_num_parameters(self.hidden_dim, _score_dims(self.mlp_dim, self.glimpses))
            + fusion_num_parameters(self.output_fusion)
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, glimpses={self.glimpses}, hidden_dim={self.hidden_dim}, mlp_dim={self.mlp_dim}"


# ------------------------------------------------------------------ MLB


@register_fusion(
    "mlb_attention",
    kind="attention",
    modalities="2",
    paper="Kim et al., ICLR 2017 (MLB with attention)",
    tiny={"hidden_dim": 8},
)
class MLBAttention(AttentionFusion):
    """Multimodal low-rank bilinear attention (MLB attention networks).

    ::

        α_g   = softmax_i(P_g^T (σ(U^T q) ⊙ σ(V^T v_i)) + c_g)       over the valid regions
        v̂_g   = Σ_i α_{g,i} v_i,                                      g = 1..G
        fused = P^T (σ(W q) ⊙ [σ(V_1^T v̂_1); ..; σ(V_G^T v̂_G)]) + b

    ``σ = tanh`` on each projection, none on the product; the scores are the mlb fusion
    ``(Dv, Dq) -> G`` (its ``P`` has one column per glimpse). ``W q`` has ``G·hidden_dim``
    features and each glimpse has its own ``V_g``. Dropout 0.5 on every input of a projection
    and on the output product, none on the attention product, as in the reference code
    (MulLowBiVQA ``netdef/MLB.lua``; the registry ``mlb`` default puts dropout on its product, so
    the scorer is built with ``dropout_pre_lin=0``). A question given as words is averaged
    over its valid words (the paper feeds its GRU's final state).

    The output is built here rather than by the ``mlb`` fusion because the glimpse
    projections ``V_g`` form a block-diagonal map of ``[v̂_1; ..; v̂_G]``; ``output_fusion=``
    replaces it with any vector fusion ``(G·Dv, Dq) -> out_dim``.

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] or Tensor[B, Dq] -> ``fused``
    Tensor[B, out_dim]; ``v_attn`` Tensor[B, G, K]; ``q_attn`` None; ``extras`` empty.

    Args:
        v_dim, q_dim, out_dim: the contract.
        glimpses: G (2); hidden_dim: H, the joint width (1200); activation: σ (tanh).
        dropout_input: before every projection (0.5); dropout_pre_lin: on the output product (0.5).
        fusion: the scoring fusion ``(Dv, Dq) -> G`` (``"mlb"`` gets ``hidden_dim``,
            ``activation``, ``dropout_input`` and ``dropout_pre_lin=0``); fusion_kwargs: its knobs.
        output_fusion: ``None`` (the paper's output above) or a registry name / module
            ``(G·Dv, Dq) -> out_dim``; output_fusion_kwargs: its knobs.

    Parameters: ``P(f) + G·(Dv + 1)·H + (Dq + 1)·G·H + (G·H + 1)·out_dim`` (with an
    ``output_fusion``: ``P(f) + P(f_out)``); for MLB ``P(f) = (Dv + 1)·H + (Dq + 1)·H + (H + 1)·G``.

    Example::

        att = MLBAttention(2048, 2400, 2000)            # the paper: H = 1200, G = 2
        out = att(v, q_vec, v_mask=mask)                  # fused [B, 2000], v_attn [B, 2, K]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 2,
        hidden_dim: int = 1200,
        activation: ActivationArg = "tanh",
        dropout_input: float = 0.5,
        dropout_pre_lin: float = 0.5,
        fusion: str | nn.Module = "mlb",
        fusion_kwargs: dict[str, Any] | None = None,
        output_fusion: str | nn.Module | None = None,
        output_fusion_kwargs: dict[str, Any] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_input=dropout_input, dropout_pre_lin=dropout_pre_lin)
        name = self.fusion_name
        check_positive(name, glimpses=glimpses, hidden_dim=hidden_dim)
        self.glimpses, self.hidden_dim = glimpses, hidden_dim
        kw = dict(device=device, dtype=dtype)
        paper = {"hidden_dim": hidden_dim, "activation": activation, "dropout_input": dropout_input, "dropout_pre_lin": 0.0}
        self.score_fusion = resolve_fusion(
            fusion, name, (v_dim, q_dim), glimpses, **_with_defaults(fusion, "mlb", paper, fusion_kwargs), **kw
        )
        self.custom_output = output_fusion is not None
        if self.custom_output:
            self.output_fusion = resolve_fusion(
                output_fusion, name, (glimpses * v_dim, q_dim), out_dim, **dict(output_fusion_kwargs or {}), **kw
            )
        else:
            self.glimpse_proj = ChunkLinear(glimpses, v_dim, hidden_dim, **kw)  # V_g: [G, Dv, H]
            self.q_proj = nn.Linear(q_dim, glimpses * hidden_dim, **kw)  # W
            self.out = nn.Linear(glimpses * hidden_dim, out_dim, **kw)  # P
            self.activation = make_activation(activation, name)
            self.drop_in = dropout_or_identity(dropout_input)
            self.drop_pre = dropout_or_identity(dropout_pre_lin)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q_vec = self.question_vector(q, q_mask)  # [B, Dq]
        alpha = _region_attention(self.score_fusion(v, q_vec.unsqueeze(1)), v_mask)  # [B, G, K]
        if self.custom_output:
            return AttentionOutput(self.output_fusion(glimpse_pool(alpha, v), q_vec), alpha, None, {})
        v_hat = torch.einsum("bgk,bkd->gbd", alpha, v)  # [G, B, Dv], glimpse-major for ChunkLinear
        hv = self.activation(self.glimpse_proj(self.drop_in(v_hat))).transpose(0, 1).flatten(1)  # [B, G*H]
        hq = self.activation(self.q_proj(self.drop_in(q_vec)))  # [B, G*H]
        fused = self.out(self.drop_pre(hq * hv))
        return AttentionOutput(fused, alpha, None, {})

    def expected_num_parameters(self) -> int:
        dv, dq, h, g = self.v_dim, self.q_dim, self.hidden_dim, self.glimpses
        if self.custom_output:
            out = fusion_num_parameters(self.output_fusion)
        else:
            out = g * (dv + 1) * h + (dq + 1) * g * h + (g * h + 1) * self.out_dim
        return fusion_num_parameters(self.score_fusion) + out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, glimpses={self.glimpses}, hidden_dim={self.hidden_dim}"


# ------------------------------------------------------------------ MFB / MFH co-attention


@register_fusion(
    "mfb_coattention",
    kind="attention",
    modalities="2",
    paper="Yu et al., ICCV 2017 (MFB with co-attention)",
    tiny={"hidden_dim": 4, "factor": 2, "mlp_dim": 8},
)
class MFBCoAttention(AttentionFusion):
    """MFB with co-attention: question self-attention, MFB image attention, MFB (or MFH) fusion.

    ::

        β_{h,t} = softmax_t(MLP_q(q_t)_h),        q̂ = [Σ_t β_{1,t} q_t; ..; Σ_t β_{G_q,t} q_t]
        z_i     = MFB(v_i, q̂)                     (sum-pooled, signed sqrt + L2 per region)
        α_{g,i} = softmax_i(MLP_v(z_i)_g),        v̂ = [Σ_i α_{1,i} v_i; ..; Σ_i α_{G,i} v_i]
        fused   = f(v̂, q̂)                         f = MFB (``mfb_coattention``) or MFH (``mfh_coattention``)

    Both MLPs are ``Linear -> ReLU -> Linear`` with ``mlp_dim`` = 512 hidden units; the softmaxes
    run over the valid words / regions. The image attention uses MFB even in the MFH model (as
    in the MFH paper and its reference code). ``f`` ends with its output Linear to ``out_dim`` (with
    ``out_dim`` the number of answers, the papers' prediction layer); pass
    ``fusion_kwargs={"output_linear": False}`` and ``out_dim = hidden_dim`` (MFB) or
    ``order·hidden_dim`` (MFH) for the pooled vector itself. Dropout: 0.1 on MFB's expanded
    vectors (the mfb / mfh default), none in the MLPs or on the features, as in both reference
    codes (openvqa has the MLP dropout commented out).

    Checked against the reference codes: both L2-normalise the image-attention MFB output of
    an image over all its regions at once (caffe ``L2Normalize`` on the ``1000×14×14`` blob,
    openvqa ``F.normalize(z.view(batch, -1))``); here it is per region (the paper's MFB
    module; it also keeps padded regions from changing valid ones). Neither masks padded words
    in the question softmax; here they get zero weight.

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] (a vector Tensor[B, Dq] is a
    one-word question) -> ``fused`` Tensor[B, out_dim]; ``v_attn`` Tensor[B, G, K];
    ``q_attn`` Tensor[B, G_q, T]; ``extras`` empty.

    Args:
        v_dim, q_dim, out_dim: the contract.
        glimpses: G, image glimpses (2); q_glimpses: G_q, question glimpses (2).
        hidden_dim: o, MFB's output width (1000); factor: k (5).
        mlp_dim: both attention MLPs' hidden width (512); activation; dropout_attention: in them (0).
        fusion: the final fusion ``(G·Dv, G_q·Dq) -> out_dim`` (``"mfb"``; ``"mfb"`` / ``"mfh"``
            get ``hidden_dim`` and ``factor``); fusion_kwargs: its knobs (e.g. MFH's ``order``).
        attention_fusion: the image-attention fusion ``(Dv, G_q·Dq) -> hidden_dim`` (``"mfb"``
            gets ``hidden_dim``, ``factor`` and ``output_linear=False``); attention_fusion_kwargs.

    Parameters, with ``M = mlp_dim``::

        (Dq + 1)·M + (M + 1)·G_q + P(f_att) + (o + 1)·M + (M + 1)·G + P(f)
        MFB: P(f_att) = (Dv + 1)·k·o + (G_q·Dq + 1)·k·o
             P(f)     = (G·Dv + 1)·k·o + (G_q·Dq + 1)·k·o + (o + 1)·out_dim     (MFH: p·k·o, p·o)

    Example::

        att = MFBCoAttention(2048, 1024, 3000)          # o = 1000, k = 5, G = G_q = 2
        out = att(v, words, v_mask=vm, q_mask=qm)         # v_attn [B, 2, K], q_attn [B, 2, T]
    """

    default_fusion = "mfb"

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 2,
        q_glimpses: int = 2,
        hidden_dim: int = 1000,
        factor: int = 5,
        mlp_dim: int = 512,
        activation: ActivationArg = "relu",
        dropout_attention: float = 0.0,
        fusion: str | nn.Module | None = None,
        fusion_kwargs: dict[str, Any] | None = None,
        attention_fusion: str | nn.Module = "mfb",
        attention_fusion_kwargs: dict[str, Any] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout_attention=dropout_attention)
        name = self.fusion_name
        check_positive(
            name, glimpses=glimpses, q_glimpses=q_glimpses, hidden_dim=hidden_dim, factor=factor, mlp_dim=mlp_dim
        )
        self.glimpses, self.q_glimpses, self.hidden_dim, self.factor, self.mlp_dim = (
            glimpses, q_glimpses, hidden_dim, factor, mlp_dim,
        )
        kw = dict(device=device, dtype=dtype)
        mf = {"hidden_dim": hidden_dim, "factor": factor}
        self.q_attention = WordAttention(q_dim, q_glimpses, mlp_dim, activation, dropout_attention, **kw)
        att_kwargs = _with_defaults(attention_fusion, "mfb", {**mf, "output_linear": False}, attention_fusion_kwargs)
        self.attention_fusion = resolve_fusion(
            attention_fusion, name, (v_dim, q_glimpses * q_dim), hidden_dim, **att_kwargs, **kw
        )
        self.v_score = MLP(hidden_dim, (mlp_dim, glimpses), activation, dropout_attention, **kw)
        fusion = self.default_fusion if fusion is None else fusion
        out_kwargs = dict(fusion_kwargs or {})
        if isinstance(fusion, str) and fusion in ("mfb", "mfh"):
            out_kwargs = {**mf, **out_kwargs}
        self.output_fusion = resolve_fusion(
            fusion, name, (glimpses * v_dim, q_glimpses * q_dim), out_dim, **out_kwargs, **kw
        )

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q, q_mask = self.question_sequence(q, q_mask)
        q_hat, beta = self.q_attention(q, q_mask)  # [B, G_q*Dq], [B, G_q, T]
        z = self.attention_fusion(v, q_hat.unsqueeze(1))  # [B, K, o]
        alpha = _region_attention(self.v_score(z), v_mask)  # [B, G, K]
        fused = self.output_fusion(glimpse_pool(alpha, v), q_hat)
        return AttentionOutput(fused, alpha, beta, {})

    def expected_num_parameters(self) -> int:
        return (
            self.q_attention.num_parameters()
            + fusion_num_parameters(self.attention_fusion)
            + mlp_num_parameters(self.hidden_dim, (self.mlp_dim, self.glimpses))
            + fusion_num_parameters(self.output_fusion)
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, glimpses={self.glimpses}, q_glimpses={self.q_glimpses}, "
            f"hidden_dim={self.hidden_dim}, factor={self.factor}, mlp_dim={self.mlp_dim}"
        )


@register_fusion(
    "mfh_coattention",
    kind="attention",
    modalities="2",
    paper="Yu et al., TNNLS 2018 (MFH with co-attention)",
    tiny={"hidden_dim": 4, "factor": 2, "mlp_dim": 8},
)
class MFHCoAttention(MFBCoAttention):
    """MFH with co-attention: :class:`MFBCoAttention` whose final fusion is MFH.

    ``fused = MFH(v̂, q̂)``: ``order`` (p = 2) cascaded MFB blocks, ``z = W_o [z_1; z_2] + b``
    (the reference code concatenates the two pooled, normalised blocks before its prediction
    layer). The image attention still uses MFB. Everything else, the shapes and the
    parameter count are :class:`MFBCoAttention`'s with ``P(f)`` the MFH count
    ``(G·Dv + 1)·p·k·o + (G_q·Dq + 1)·p·k·o + (p·o + 1)·out_dim``.

    Example::

        att = MFHCoAttention(2048, 1024, 3000)                            # p = 2
        att = MFHCoAttention(2048, 1024, 3000, fusion_kwargs={"order": 3})
    """

    default_fusion = "mfh"


# ------------------------------------------------------------------ MUTAN / BLOCK (generic)


class BilinearAttention(AttentionFusion):
    """Bilinear attention with any vector fusion: block.bootstrap's VQA net.

    ::

        q̄       = [Σ_t β_{1,t} q_t; ..; Σ_t β_{G_q,t} q_t]   (G_q > 0: :class:`WordAttention`)
                   or the mean of the valid words              (G_q = 0)
        α_{g,i} = softmax_i(MLP(f(q̄, v_i))_g)                  over the valid regions, g = 1..G
        fused   = f_out(q̄, [Σ_i α_{1,i} v_i; ..; Σ_i α_{G,i} v_i])

    ``f`` and ``f_out`` are vector fusions given by registry name (any: ``"block"``,
    ``"mutan"``, ``"mlb"``, ``"mfh"``, ``"concat_mlp"``, ...) or as modules; the question comes
    first, as in block.bootstrap (``fusion([q, v])``). With ``attention_dim`` an int, ``f``
    outputs ``attention_dim`` features followed by ``Linear(attention_dim, mlp_dim) -> ReLU ->
    Linear(mlp_dim, G)`` (block.bootstrap's ``Attention`` with ``mlp_glimpses``); with
    ``attention_dim=None``, ``f`` outputs the ``G`` scores itself (the MUTAN paper's attention,
    whose fused vector goes through one 1x1 convolution to the glimpses).

    The two registered presets are :class:`BlockAttention` and :class:`MutanAttention`; this
    class is the generic "bilinear attention with fusion X"::

        att = BilinearAttention(2048, 1024, 3000, fusion="mfh", fusion_kwargs={"factor": 5})

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] or Tensor[B, Dq] -> ``fused``
    Tensor[B, out_dim]; ``v_attn`` Tensor[B, G, K]; ``q_attn`` Tensor[B, G_q, T] (None when
    G_q = 0); ``extras`` empty.

    Args:
        v_dim, q_dim, out_dim: the contract.
        glimpses: G; q_glimpses: G_q (0: no question self-attention); q_mlp_dim: its MLP width.
        attention_dim: ``f``'s output width before the scoring MLP, or None (``f`` -> G scores).
        mlp_dim: the scoring MLP's hidden width (unused with ``attention_dim=None``).
        fusion: ``f``, a name or a module ``(Q̄, Dv) -> attention_dim or G`` with ``Q̄ = G_q·Dq``
            (``Dq`` when G_q = 0); output_fusion: ``f_out`` ``(Q̄, G·Dv) -> out_dim``
            (``None`` = the same name as ``fusion``).
        hidden_dim, rank: passed to both fusions built by name when not None (their joint
            width and rank).
        fusion_kwargs / output_fusion_kwargs: more knobs for the fusions built by name
            (``output_fusion_kwargs=None`` reuses ``fusion_kwargs``).

    Parameters, with ``A = attention_dim``, ``M = mlp_dim``, ``M_q = q_mlp_dim``::

        [(Dq + 1)·M_q + (M_q + 1)·G_q  if G_q > 0] + P(f) + [(A + 1)·M + (M + 1)·G  if A] + P(f_out)
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 2,
        q_glimpses: int = 0,
        q_mlp_dim: int = 512,
        attention_dim: int | None = 1000,
        mlp_dim: int = 512,
        fusion: str | nn.Module = "block",
        output_fusion: str | nn.Module | None = None,
        hidden_dim: int | None = None,
        rank: int | None = None,
        fusion_kwargs: dict[str, Any] | None = None,
        output_fusion_kwargs: dict[str, Any] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim)
        name = self.fusion_name
        check_positive(
            name, glimpses=glimpses, q_mlp_dim=q_mlp_dim, attention_dim=attention_dim, mlp_dim=mlp_dim,
            hidden_dim=hidden_dim, rank=rank,
        )
        if not isinstance(q_glimpses, int) or isinstance(q_glimpses, bool) or q_glimpses < 0:
            raise ValueError(f"{name}: q_glimpses must be a non-negative int, got {q_glimpses!r}")
        self.glimpses, self.q_glimpses, self.q_mlp_dim = glimpses, q_glimpses, q_mlp_dim
        self.attention_dim, self.mlp_dim, self.hidden_dim, self.rank = attention_dim, mlp_dim, hidden_dim, rank
        kw = dict(device=device, dtype=dtype)
        q_width = q_dim * max(q_glimpses, 1)
        self.q_attention = (
            WordAttention(q_dim, q_glimpses, q_mlp_dim, **kw) if q_glimpses > 0 else None
        )
        common = {k: x for k, x in (("hidden_dim", hidden_dim), ("rank", rank)) if x is not None}
        f_kw = {**common, **dict(fusion_kwargs or {})} if isinstance(fusion, str) else {}
        self.score_fusion = resolve_fusion(
            fusion, name, (q_width, v_dim), glimpses if attention_dim is None else attention_dim, **f_kw, **kw
        )
        self.score = None if attention_dim is None else MLP(attention_dim, (mlp_dim, glimpses), "relu", **kw)
        if output_fusion is None:
            if not isinstance(fusion, str):
                raise ValueError(f"{name}: give output_fusion when fusion is a module")
            output_fusion = fusion
        o_user = fusion_kwargs if output_fusion_kwargs is None else output_fusion_kwargs
        o_kw = {**common, **dict(o_user or {})} if isinstance(output_fusion, str) else {}
        self.output_fusion = resolve_fusion(output_fusion, name, (q_width, glimpses * v_dim), out_dim, **o_kw, **kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        if self.q_attention is None:
            q_bar, beta = self.question_vector(q, q_mask), None  # [B, Dq]
        else:
            words, words_mask = self.question_sequence(q, q_mask)
            q_bar, beta = self.q_attention(words, words_mask)  # [B, G_q*Dq], [B, G_q, T]
        z = self.score_fusion(q_bar.unsqueeze(1), v)  # [B, K, A] or [B, K, G]
        alpha = _region_attention(z if self.score is None else self.score(z), v_mask)  # [B, G, K]
        fused = self.output_fusion(q_bar, glimpse_pool(alpha, v))
        return AttentionOutput(fused, alpha, beta, {})

    def expected_num_parameters(self) -> int:
        n = fusion_num_parameters(self.score_fusion) + fusion_num_parameters(self.output_fusion)
        if self.q_attention is not None:
            n += self.q_attention.num_parameters()
        if self.attention_dim is not None:
            n += mlp_num_parameters(self.attention_dim, (self.mlp_dim, self.glimpses))
        return n

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, glimpses={self.glimpses}, q_glimpses={self.q_glimpses}, "
            f"attention_dim={self.attention_dim}, mlp_dim={self.mlp_dim}"
        )


@register_fusion(
    "block_attention",
    kind="attention",
    modalities="2",
    paper="Ben-younes et al., AAAI 2019 (BLOCK, block.bootstrap VQA net with attention)",
    tiny={"hidden_dim": 10, "rank": 2, "attention_dim": 6, "mlp_dim": 8, "q_mlp_dim": 8, "fusion_kwargs": {"chunks": 3}},
)
class BlockAttention(BilinearAttention):
    """BLOCK attention: :class:`BilinearAttention` with the BLOCK fusion, block.bootstrap's VQA2 setup.

    ``q̄`` = 2 question self-attention glimpses (``self_q_att: True``; ``Linear(Dq, 512) -> ReLU
    -> Linear(512, 2)``, masked softmax over words), ``f = BLOCK(q̄, v_i) -> 1000`` then
    ``Linear(1000, 512) -> ReLU -> Linear(512, 2)``, softmax over regions, and
    ``fused = BLOCK(q̄, [v̂_1; v̂_2]) -> out_dim`` (``out_dim`` = 3000 answers there). Both BLOCKs
    use the paper's VQA settings: ``hidden_dim=1600``, ``chunks=18`` (the block fusion's
    default), ``rank=15``, dropout 0.1 on the projections, none before the output Linear
    (block.bootstrap ``options/vqa2/block.yaml``). Any other vector fusion can be passed as
    ``fusion=``; ``hidden_dim`` and ``rank`` are passed to every fusion built by name, so set
    ``rank=None`` for one without a rank (e.g. ``fusion="mfb", rank=None``).

    Shapes, arguments and the parameter count: :class:`BilinearAttention`'s with
    ``P(BLOCK)`` = ``(Q̄ + 1)·H + (D + 1)·H + 2·Σ_c (s_c + 1)·R·s_c + (H + 1)·out`` per fusion.

    Example::

        att = BlockAttention(2048, 2400, 3000)
        out = att(v, words, v_mask=vm, q_mask=qm)         # v_attn [B, 2, K], q_attn [B, 2, T]
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 2,
        q_glimpses: int = 2,
        q_mlp_dim: int = 512,
        attention_dim: int | None = 1000,
        mlp_dim: int = 512,
        fusion: str | nn.Module = "block",
        output_fusion: str | nn.Module | None = None,
        hidden_dim: int | None = 1600,
        rank: int | None = 15,
        fusion_kwargs: dict[str, Any] | None = None,
        output_fusion_kwargs: dict[str, Any] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(
            v_dim, q_dim, out_dim, glimpses=glimpses, q_glimpses=q_glimpses, q_mlp_dim=q_mlp_dim,
            attention_dim=attention_dim, mlp_dim=mlp_dim, fusion=fusion, output_fusion=output_fusion,
            hidden_dim=hidden_dim, rank=rank, fusion_kwargs=fusion_kwargs, output_fusion_kwargs=output_fusion_kwargs,
            device=device, dtype=dtype,
        )


@register_fusion(
    "mutan_attention",
    kind="attention",
    modalities="2",
    paper="Ben-younes et al., ICCV 2017 (MUTAN with attention)",
    tiny={"hidden_dim": 4, "rank": 2, "projected_dim": 3},
)
class MutanAttention(BilinearAttention):
    """MUTAN attention: :class:`BilinearAttention` with MUTAN fusions, the MUTAN paper's sizes.

    ::

        α_{g,i} = softmax_i(MUTAN_att(q̄, v_i)_g)                       (t_q = t_v = 310, t_o = 510, R = 5)
        fused   = MUTAN_out(q̄, [v̂_1; ..; v̂_G])                         (t_q = 310, t_v = 310·G, t_o = 510, R = 5)

    where ``q̄`` is the question vector (the mean of the valid words; the paper uses its GRU's
    last state) and each MUTAN is the registry fusion with tanh projections, dropout 0.5 on
    its inputs and before its output Linear (``Cadene/vqa.pytorch`` ``MutanAtt``: the
    attention's 510-d fused vector goes through dropout 0.5 and a 1x1 convolution to the G
    glimpses — MUTAN_att's output Linear here — so there is no scoring MLP:
    ``attention_dim=None``).

    Deviations, both from sharing block.bootstrap's structure: the paper projects each glimpse
    with its own ``tanh(W_g v̂_g)`` (310 each) where MUTAN_out projects the concatenation with
    one ``tanh(W [v̂_1; ..; v̂_G])`` (620), a superset of the block-diagonal map; and the paper's
    classifier applies tanh to the 510-d vector before its dropout and Linear, which here is
    MUTAN_out's output Linear without that tanh.

    Args: :class:`BilinearAttention`'s, with ``fusion="mutan"``, ``hidden_dim`` t_o (510),
    ``rank`` R (5), and ``projected_dim`` t (310): MUTAN's projected widths ``(t, t)`` for
    ``f`` and ``(t, G·t)`` for ``f_out`` (ignored when ``fusion`` is not ``"mutan"``).

    Parameters: :class:`BilinearAttention`'s with ``P(MUTAN) = (Q̄ + 1)·t_q + (D + 1)·t_v +
    (t_q + 1)·R·t_o + (t_v + 1)·R·t_o + (t_o + 1)·out`` per fusion.

    Example::

        att = MutanAttention(2048, 2400, 3000)
        att = MutanAttention(2048, 2400, 3000, q_glimpses=2)      # with question self-attention
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 2,
        q_glimpses: int = 0,
        q_mlp_dim: int = 512,
        attention_dim: int | None = None,
        mlp_dim: int = 512,
        fusion: str | nn.Module = "mutan",
        output_fusion: str | nn.Module | None = None,
        hidden_dim: int | None = 510,
        rank: int | None = 5,
        projected_dim: int = 310,
        fusion_kwargs: dict[str, Any] | None = None,
        output_fusion_kwargs: dict[str, Any] | None = None,
        device=None,
        dtype=None,
    ):
        check_positive(self.fusion_name, projected_dim=projected_dim, glimpses=glimpses)
        out_name = fusion if output_fusion is None else output_fusion
        fusion_kwargs = _with_defaults(fusion, "mutan", {"projected_dims": (projected_dim, projected_dim)}, fusion_kwargs)
        output_fusion_kwargs = _with_defaults(
            out_name, "mutan", {"projected_dims": (projected_dim, glimpses * projected_dim)},
            output_fusion_kwargs,
        )
        super().__init__(
            v_dim, q_dim, out_dim, glimpses=glimpses, q_glimpses=q_glimpses, q_mlp_dim=q_mlp_dim,
            attention_dim=attention_dim, mlp_dim=mlp_dim, fusion=fusion, output_fusion=output_fusion,
            hidden_dim=hidden_dim, rank=rank, fusion_kwargs=fusion_kwargs, output_fusion_kwargs=output_fusion_kwargs,
            device=device, dtype=dtype,
        )
        self.projected_dim = projected_dim

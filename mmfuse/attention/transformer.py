"""Co-attentional transformer fusions: ViLBERT, LXMERT and MCAN.

Papers:

- Lu, Batra, Parikh & Lee, "ViLBERT: Pretraining task-agnostic visiolinguistic representations
  for vision-and-language tasks", NeurIPS 2019 (reference code: facebookresearch/vilbert-multi-task).
- Tan & Bansal, "LXMERT: Learning cross-modality encoder representations from transformers",
  EMNLP 2019 (reference code: airsplay/lxmert).
- Yu, Yu, Cui, Tao & Tian, "Deep modular co-attention networks for visual question answering",
  CVPR 2019 (reference code: MILVLG/mcan-vqa, encoder-decoder variant).

Axis legend of the shape notes: ``B`` batch, ``K`` regions, ``T`` words, ``N`` / ``M`` a query /
key sequence (either modality), ``D`` hidden_dim, ``H`` heads, ``d = D / H`` head width,
``F`` ffn_dim, ``G`` glimpses, ``L`` cross-modal layers.

The three methods are built from one set of pieces:

- :class:`MultiHeadAttention`: ``softmax(Q K^T / sqrt(d)) V`` per head on
  ``torch.nn.functional.scaled_dot_product_attention``; bool key masks, True = valid.
- :class:`AttentionSublayer`, :class:`FeedForwardSublayer`: the post-norm residual
  ``x <- LayerNorm(x + Dropout(f(x)))`` around attention / the position-wise FFN.
- :class:`TransformerLayer`: self-attention sublayer then FFN sublayer (BERT's layer, ViLBERT's
  TRM, LXMERT's single-modality layer, MCAN's SA unit).
- :class:`AttFlat`: MCAN's attentional reduction of a sequence to a vector (also a masked mean).

No positional encodings are added anywhere: the regions are a set, so every method here is
equivariant to permuting regions and its ``fused`` output invariant to it (``order_free=True``).
Word order reaches the model only through the word features the caller passes (LSTM / BERT
states, as in the papers, where words carry position embeddings before the first layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, masked_softmax
from ..layers import ActivationArg, dropout_or_identity, make_activation
from ._base import AttentionFusion, AttentionOutput

__all__ = [
    "MultiHeadAttention",
    "AttentionSublayer",
    "FeedForward",
    "FeedForwardSublayer",
    "TransformerLayer",
    "AttFlat",
    "TransformerSpec",
    "ViLBERTBlock",
    "LXMERTLayer",
    "SGALayer",
    "ViLBERT",
    "LXMERT",
    "MCAN",
]


# ---------------------------------------------------------------- shared pieces


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention of queries ``x`` over a context ``c``.

    ``head_h = softmax_j((x W_q)_h (c W_k)_h^T / sqrt(d)) (c W_v)_h``,
    ``out = [head_1; ..; head_H] W_o + b_o``, softmax over the valid keys only.

    Without ``need_weights`` it runs ``F.scaled_dot_product_attention`` with a bool mask. SDPA
    gives NaN for a query whose keys are all masked; such rows attend to every key inside SDPA
    and their result is then multiplied by 0, so a fully masked row yields ``head = 0`` (``out =
    b_o``), exactly as the explicit path, where :func:`~mmfuse.functional.masked_softmax` gives an
    all-zero row. A padding key always gets exactly zero weight (and zero gradient). With
    ``need_weights`` the attention is computed explicitly so that the map can be returned.

    Args:
        dim: D, the width of queries, keys, values and output.
        heads: H (must divide ``dim``).
        dropout: on the attention weights (training only).

    Shapes:
        x: Tensor[B, N, D]; c: Tensor[B, M, D]; c_mask: bool Tensor[B, M] or None.
        Returns ``(Tensor[B, N, D], Tensor[B, N, M] | None)``: the output and, with
        ``need_weights``, the attention weights averaged over heads (before dropout).

    Parameters: ``4·D·(D + 1)`` (``W_q, W_k, W_v, W_o`` with biases).

    Example::

        mha = MultiHeadAttention(64, heads=8)
        out, w = mha(x, c, c_mask, need_weights=True)   # [B, N, 64], [B, N, M]
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, *, device=None, dtype=None):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"MultiHeadAttention: heads ({heads}) must divide the width ({dim})")
        kw = dict(device=device, dtype=dtype)
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.query = nn.Linear(dim, dim, **kw)
        self.key = nn.Linear(dim, dim, **kw)
        self.value = nn.Linear(dim, dim, **kw)
        self.out = nn.Linear(dim, dim, **kw)

    @staticmethod
    def num_parameters(dim: int) -> int:
        return 4 * dim * (dim + 1)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, H, N, d]

    def forward(
        self, x: Tensor, c: Tensor, c_mask: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(c)), self._heads(self.value(c))  # [B, H, *, d]
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, N, M]
            attn = masked_softmax(scores, None if c_mask is None else c_mask[:, None, None, :])
            heads = F.dropout(attn, p, self.training) @ v  # [B, H, N, d]
            weights = attn.mean(dim=1)  # [B, N, M]
        elif c_mask is None:
            heads = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            any_valid = c_mask.any(dim=-1)  # [B]
            safe = (c_mask | ~any_valid[:, None])[:, None, None, :]  # [B, 1, 1, M]
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, dropout_p=p)
            heads = heads * any_valid[:, None, None, None].to(heads.dtype)  # fully masked rows -> 0
        return self.out(heads.transpose(1, 2).flatten(2)), weights  # [B, N, D]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, dropout={self.dropout}"


@dataclass(frozen=True)
class TransformerSpec:
    """The hyper-parameters shared by every sublayer of one model.

    Attributes:
        dim: D, the hidden width of both streams.
        heads: H.
        ffn_dim: F, the FFN's inner width.
        dropout: on attention weights and on each sublayer's output before the residual add.
        activation: the FFN's nonlinearity.
        ffn_dropout: dropout after the FFN's activation (MCAN's FC has it; BERT's FFN has not).
        eps: LayerNorm epsilon.
        norm_first: pre-norm sublayers, ``x <- x + Dropout(f(LN(x)))`` (Xiong et al., ICML 2020,
            "On layer normalization in the transformer architecture"), instead of the papers'
            post-norm ``x <- LN(x + Dropout(f(x)))``; the model then owes a final LayerNorm per
            stream. Same parameters either way.

    Parameters it implies: :meth:`attention_params`, :meth:`ffn_params`, :meth:`layer_params`.

    Example::

        spec = TransformerSpec(dim=512, heads=8, ffn_dim=2048, activation="relu", ffn_dropout=0.1)
        layer = TransformerLayer(spec)
    """

    dim: int
    heads: int
    ffn_dim: int
    dropout: float = 0.1
    activation: ActivationArg = "gelu"
    ffn_dropout: float = 0.0
    eps: float = 1e-12
    norm_first: bool = False

    def attention_params(self) -> int:
        """Parameters of one :class:`AttentionSublayer`: ``4·D·(D + 1) + 2·D``."""
        return MultiHeadAttention.num_parameters(self.dim) + 2 * self.dim

    def ffn_params(self) -> int:
        """Parameters of one :class:`FeedForwardSublayer`: ``(D + 1)·F + (F + 1)·D + 2·D``."""
        return (self.dim + 1) * self.ffn_dim + (self.ffn_dim + 1) * self.dim + 2 * self.dim

    def layer_params(self) -> int:
        """Parameters of one :class:`TransformerLayer`."""
        return self.attention_params() + self.ffn_params()


class AttentionSublayer(nn.Module):
    """``x <- LayerNorm(x + Dropout(MHA(x, c, c_mask)))``: self-attention when ``c is x``.

    Shapes: x Tensor[B, N, D], c Tensor[B, M, D], c_mask bool Tensor[B, M] or None ->
    ``(Tensor[B, N, D], Tensor[B, N, M] | None)`` (the head-averaged map with ``need_weights``).

    Parameters: ``4·D·(D + 1) + 2·D``.

    Example::

        sub = AttentionSublayer(TransformerSpec(dim=64, heads=8, ffn_dim=256))
        x, _ = sub(x, x, x_mask)                              # self-attention
        x, w = sub(x, y, y_mask, need_weights=True)           # x attends to y
    """

    def __init__(self, spec: TransformerSpec, *, device=None, dtype=None):
        super().__init__()
        self.attention = MultiHeadAttention(spec.dim, spec.heads, spec.dropout, device=device, dtype=dtype)
        self.dropout = dropout_or_identity(spec.dropout)
        self.norm = nn.LayerNorm(spec.dim, eps=spec.eps, device=device, dtype=dtype)
        self.norm_first = spec.norm_first

    def forward(
        self, x: Tensor, c: Tensor, c_mask: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        if self.norm_first:  # the context of self-attention is the normalised x; a cross context is used as given
            xn = self.norm(x)
            h, weights = self.attention(xn, xn if c is x else c, c_mask, need_weights)
            return x + self.dropout(h), weights
        h, weights = self.attention(x, c, c_mask, need_weights)
        return self.norm(x + self.dropout(h)), weights


class FeedForward(nn.Module):
    """Position-wise ``FFN(x) = W_2 Dropout(σ(W_1 x + b_1)) + b_2``.

    Shapes: Tensor[..., D] -> Tensor[..., D]. Parameters: ``(D + 1)·F + (F + 1)·D``.

    Example::

        ffn = FeedForward(512, 2048, activation="relu", dropout=0.1)   # MCAN's FFN
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        activation: ActivationArg = "gelu",
        dropout: float = 0.0,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim, device=device, dtype=dtype)
        self.activation = make_activation(activation, "FeedForward")
        self.dropout = dropout_or_identity(dropout)
        self.fc2 = nn.Linear(ffn_dim, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class FeedForwardSublayer(nn.Module):
    """``x <- LayerNorm(x + Dropout(FFN(x)))``. Tensor[B, N, D] -> Tensor[B, N, D].

    Parameters: ``(D + 1)·F + (F + 1)·D + 2·D``.

    Example::

        sub = FeedForwardSublayer(TransformerSpec(dim=64, heads=8, ffn_dim=256))
        x = sub(x)
    """

    def __init__(self, spec: TransformerSpec, *, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.ffn = FeedForward(spec.dim, spec.ffn_dim, spec.activation, spec.ffn_dropout, **kw)
        self.dropout = dropout_or_identity(spec.dropout)
        self.norm = nn.LayerNorm(spec.dim, eps=spec.eps, **kw)
        self.norm_first = spec.norm_first

    def forward(self, x: Tensor) -> Tensor:
        if self.norm_first:
            return x + self.dropout(self.ffn(self.norm(x)))
        return self.norm(x + self.dropout(self.ffn(x)))


class TransformerLayer(nn.Module):
    """Self-attention sublayer then FFN sublayer (post-norm), on one stream.

    ``x <- LN(x + MHA(x, x)); x <- LN(x + FFN(x))``: BERT's layer, ViLBERT's TRM, LXMERT's
    single-modality layer and MCAN's SA unit. Tensor[B, N, D] with a bool mask Tensor[B, N]
    -> Tensor[B, N, D].

    Parameters: ``4·D·(D + 1) + 2·D + (D + 1)·F + (F + 1)·D + 2·D``.

    Example::

        layer = TransformerLayer(TransformerSpec(dim=512, heads=8, ffn_dim=2048))
        x = layer(x, x_mask)
    """

    def __init__(self, spec: TransformerSpec, *, device=None, dtype=None):
        super().__init__()
        self.self_attention = AttentionSublayer(spec, device=device, dtype=dtype)
        self.ffn = FeedForwardSublayer(spec, device=device, dtype=dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.ffn(self.self_attention(x, x, mask)[0])


class AttFlat(nn.Module):
    """MCAN's attentional reduction of a sequence to one vector.

    ``α_g = softmax_i(MLP(x_i)_g)`` over the valid positions (MLP: ``Linear(D, mlp_dim) -> ReLU ->
    Dropout -> Linear(mlp_dim, G)``), ``out = W_m [Σ_i α_{1,i} x_i; ..; Σ_i α_{G,i} x_i] + b_m``.
    With ``mlp_dim=None`` the weights are uniform over the valid positions (a masked mean,
    ``G = 1``), so the same module also gives ``Linear(masked_mean(x))``.

    Shapes: x Tensor[B, N, D], mask bool Tensor[B, N] or None ->
    ``(Tensor[B, out_dim], α Tensor[B, G, N])``; a fully masked row has ``α = 0``.

    Parameters: ``(D + 1)·mlp_dim + (mlp_dim + 1)·G`` (none for the mean) ``+ (G·D + 1)·out_dim``.

    Example::

        flat = AttFlat(512, 1024, glimpses=1, mlp_dim=512, dropout=0.1)
        vec, alpha = flat(x, x_mask)        # [B, 1024], [B, 1, N]
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        *,
        glimpses: int = 1,
        mlp_dim: int | None = 512,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if mlp_dim is None and glimpses != 1:
            raise ValueError(f"AttFlat: a masked mean has 1 glimpse, got glimpses={glimpses}")
        kw = dict(device=device, dtype=dtype)
        self.dim, self.out_dim, self.glimpses, self.mlp_dim = dim, out_dim, glimpses, mlp_dim
        self.mlp = (
            None
            if mlp_dim is None
            else nn.Sequential(
                nn.Linear(dim, mlp_dim, **kw),
                nn.ReLU(),
                dropout_or_identity(dropout),
                nn.Linear(mlp_dim, glimpses, **kw),
            )
        )
        self.merge = nn.Linear(glimpses * dim, out_dim, **kw)

    @staticmethod
    def num_parameters(dim: int, out_dim: int, glimpses: int, mlp_dim: int | None) -> int:
        mlp = 0 if mlp_dim is None else (dim + 1) * mlp_dim + (mlp_dim + 1) * glimpses
        return mlp + (glimpses * dim + 1) * out_dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.mlp is None:
            scores = x.new_zeros(x.shape[0], 1, x.shape[1])  # [B, 1, N]: uniform
        else:
            scores = self.mlp(x).transpose(1, 2)  # [B, G, N]
        alpha = masked_softmax(scores, None if mask is None else mask.unsqueeze(1))  # [B, G, N]
        pooled = torch.einsum("bgn,bnd->bgd", alpha, x).flatten(1)  # [B, G*D]
        return self.merge(pooled), alpha

    def extra_repr(self) -> str:
        return f"dim={self.dim}, out_dim={self.out_dim}, glimpses={self.glimpses}, mlp_dim={self.mlp_dim}"


class _Embed(nn.Module):
    """Input projection to the hidden width: ``Dropout(LN(W x + b))`` (BERT-style) or ``W x + b``."""

    def __init__(self, in_dim: int, dim: int, norm: bool, dropout: float, eps: float, *, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.proj = nn.Linear(in_dim, dim, **kw)
        self.norm = nn.LayerNorm(dim, eps=eps, **kw) if norm else nn.Identity()
        self.dropout = dropout_or_identity(dropout)

    @staticmethod
    def num_parameters(in_dim: int, dim: int, norm: bool) -> int:
        return (in_dim + 1) * dim + (2 * dim if norm else 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.norm(self.proj(x)))


def _stack_maps(maps: list[Tensor], like: Tensor, rows: int, cols: int) -> Tensor:
    """Per-layer maps ``[B, N, M]`` -> ``[B, L, N, M]`` (``[B, 0, N, M]`` for no layers)."""
    if not maps:
        return like.new_zeros(like.shape[0], 0, rows, cols)
    return torch.stack(maps, dim=1)


def _zero_padded_rows(maps: Tensor, row_mask: Tensor | None) -> Tensor:
    """Zero the rows of ``maps [B, L, N, M]`` whose query position ``row_mask [B, N]`` is padding."""
    return maps if row_mask is None else maps * row_mask[:, None, :, None].to(maps.dtype)


class _TransformerFusion(AttentionFusion):
    """Knob checks shared by ViLBERT, LXMERT and MCAN."""

    _POOLINGS = ("mean", "attflat")

    def _check_knobs(
        self,
        *,
        hidden_dim: int,
        heads: int,
        ffn_dim: int,
        num_layers: int,
        glimpses: int,
        flat_mlp_dim: int,
        pooling: str = "attflat",
        **counts: int,
    ) -> None:
        name = self.fusion_name
        check_positive(
            name, hidden_dim=hidden_dim, heads=heads, ffn_dim=ffn_dim, num_layers=num_layers,
            glimpses=glimpses, flat_mlp_dim=flat_mlp_dim,
        )
        for key, n in counts.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"{name}: {key} must be a non-negative int, got {n!r}")
        if hidden_dim % heads != 0:
            raise ValueError(f"{name}: heads ({heads}) must divide hidden_dim ({hidden_dim})")
        if pooling not in self._POOLINGS:
            raise ValueError(f"{name}: pooling must be one of {self._POOLINGS}, got {pooling!r}")
        if pooling == "mean" and glimpses != 1:
            raise ValueError(f"{name}: pooling='mean' has 1 glimpse, got glimpses={glimpses} (use pooling='attflat')")

    def _flat(self, pooling: str, out_dim: int, glimpses: int, flat_mlp_dim: int, dropout: float, kw) -> AttFlat:
        mlp = None if pooling == "mean" else flat_mlp_dim
        return AttFlat(self.hidden_dim, out_dim, glimpses=glimpses, mlp_dim=mlp, dropout=dropout, **kw)

    def _flat_params(self) -> int:
        mlp = None if self.pooling == "mean" else self.flat_mlp_dim
        return AttFlat.num_parameters(self.hidden_dim, self.out_dim, self.glimpses, mlp)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, heads={self.heads}, "
            f"ffn_dim={self.ffn_dim}, num_layers={self.num_layers}"
        )


# ---------------------------------------------------------------- ViLBERT


class ViLBERTBlock(nn.Module):
    """One ViLBERT block on both streams: Co-TRM (co-attention + FFN) then TRM.

    Co-TRM: ``v <- LN(v + MHA_v(v, q))``, ``q <- LN(q + MHA_q(q, v))`` computed from the same
    inputs (each stream queries with its own Q and the other stream's K, V), then
    ``x <- LN(x + FFN_x(x))`` per stream; then a TRM (:class:`TransformerLayer`) per stream.

    Shapes: v Tensor[B, K, D], q Tensor[B, T, D] and their masks -> ``(v, q, a_vq [B, K, T],
    a_qv [B, T, K])`` with the head-averaged co-attention maps.

    Parameters: ``4·(4·D·(D + 1) + 2·D + (D + 1)·F + (F + 1)·D + 2·D)``.

    Example::

        block = ViLBERTBlock(TransformerSpec(dim=64, heads=8, ffn_dim=64))
        v, q, a_vq, a_qv = block(v, q, v_mask, q_mask)
    """

    def __init__(self, spec: TransformerSpec, *, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.v_cross, self.q_cross = AttentionSublayer(spec, **kw), AttentionSublayer(spec, **kw)
        self.v_ffn, self.q_ffn = FeedForwardSublayer(spec, **kw), FeedForwardSublayer(spec, **kw)
        self.v_layer, self.q_layer = TransformerLayer(spec, **kw), TransformerLayer(spec, **kw)

    def forward(self, v: Tensor, q: Tensor, v_mask: Tensor | None, q_mask: Tensor | None):
        v_new, a_vq = self.v_cross(v, q, q_mask, need_weights=True)  # regions query words
        q_new, a_qv = self.q_cross(q, v, v_mask, need_weights=True)  # words query regions
        v, q = self.v_ffn(v_new), self.q_ffn(q_new)
        return self.v_layer(v, v_mask), self.q_layer(q, q_mask), a_vq, a_qv


@register_fusion(
    "vilbert",
    kind="attention",
    modalities="2",
    paper="Lu et al., NeurIPS 2019 (ViLBERT)",
    tiny={"hidden_dim": 8, "heads": 2, "ffn_dim": 16, "num_layers": 2, "flat_mlp_dim": 8},
)
class ViLBERT(_TransformerFusion):
    """ViLBERT's two-stream co-attentional transformer, with its product pooling.

    Streams ``V^0 = Dropout(LN(W_v V))``, ``Q^0 = Dropout(LN(W_q Q))`` (``[B, K, D]``, ``[B, T, D]``),
    optional single-stream TRM layers, then ``L`` blocks (:class:`ViLBERTBlock`), each

        V' = LN(V + MHA_v(V, Q)),  Q' = LN(Q + MHA_q(Q, V))     (Co-TRM: own Q, other's K, V)
        V' = LN(V' + FFN_v(V')),   Q' = LN(Q' + FFN_q(Q'))
        V  = TRM_v(V'),            Q  = TRM_q(Q')               (self-attention + FFN)

    and ``fused = ReLU(W_pq pool(Q) + b) ⊙ ReLU(W_pv pool(V) + b)``, the paper's VQA input
    (element-wise product of ``h_CLS`` and ``h_IMG`` after their ReLU poolers).

    Paper vs. here (checked against facebookresearch/vilbert-multi-task, bert_base_6layer_6conect):

    - The reference runs, per stream, Co-TRM -> FFN -> TRM k times (its encoder interleaves the
      ``v_layer`` / ``layer`` TRMs after each connection layer); that is the block above. The
      text stream first runs ``12 - k`` BERT layers: those are the pretrained text encoder and
      not built by default (``num_q_layers`` adds such layers, trained from scratch).
    - One width ``D`` for both streams and the co-attention (the paper: text 768 with 12 heads
      and FFN 3072; visual and co-attention 1024 with 8 heads and FFN 1024); the defaults are the
      visual / co-attention ones.
    - The paper pools the outputs at the ``[CLS]`` word and the ``[IMG]`` region (whose input is
      the mean region feature). The inputs here carry no such tokens, so ``pool`` is the masked
      mean of the last layer (``pooling="mean"``, default) or an :class:`AttFlat` reduction
      (``pooling="attflat"``); both are a weighted sum ``Σ_i α_i x_i`` followed by the pooler's
      Linear. No region box embedding: pass box features concatenated to ``v``.
    - ``out_dim`` is the pooled width (``bi_hidden_size`` = 1024 in the paper), the input of the
      answer MLP. Dead parameters of the reference (``q_dense1/2`` in ``BertBiOutput``) are not built.

    Args:
        v_dim, q_dim, out_dim: the contract.
        hidden_dim: D (1024). heads: H (8). ffn_dim: F (``None`` = D, the paper's 1024).
        num_layers: L, the number of Co-TRM + TRM blocks (6).
        num_q_layers, num_v_layers: TRM layers on each stream before the first block (0, 0).
        dropout: attention-weight and hidden dropout (0.1). activation: the FFN's (GELU).
        pooling: ``"mean"`` or ``"attflat"``; glimpses, flat_mlp_dim: the AttFlat's G (1) and
            MLP width (512), used with ``pooling="attflat"``.

    Returns ``AttentionOutput``: ``fused`` Tensor[B, out_dim]; ``v_attn`` Tensor[B, G, K] and
    ``q_attn`` Tensor[B, G, T], the pooling weights (uniform over the valid positions for the
    mean); ``extras["v2q_attn"]`` Tensor[B, L, K, T] (regions attending to words) and
    ``extras["q2v_attn"]`` Tensor[B, L, T, K] (words attending to regions), the co-attention of
    each block averaged over heads, with zero rows at padding queries.

    Parameters (``A = 4·D·(D + 1) + 2·D`` attention sublayer, ``Φ = (D + 1)·F + (F + 1)·D + 2·D``
    FFN sublayer, ``P_flat`` = AttFlat's count): ``(v_dim + 1)·D + (q_dim + 1)·D + 4·D
    + (num_q_layers + num_v_layers)·(A + Φ) + 4·L·(A + Φ) + 2·P_flat``, where for the mean
    ``P_flat = (D + 1)·out_dim``.

    Example::

        att = ViLBERT(2048, 768, 1024)                  # 6 blocks, D = 1024
        out = att(v, q, v_mask=vm, q_mask=qm)           # out.fused [B, 1024]
        out.extras["v2q_attn"]                          # [B, 6, K, T]
    """

    _norm_eps = 1e-12

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 1024,
        heads: int = 8,
        ffn_dim: int | None = None,
        num_layers: int = 6,
        num_q_layers: int = 0,
        num_v_layers: int = 0,
        dropout: float = 0.1,
        activation: ActivationArg = "gelu",
        pooling: str = "mean",
        glimpses: int = 1,
        flat_mlp_dim: int = 512,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout=dropout)
        ffn_dim = hidden_dim if ffn_dim is None else ffn_dim
        self._check_knobs(
            hidden_dim=hidden_dim, heads=heads, ffn_dim=ffn_dim, num_layers=num_layers, glimpses=glimpses,
            flat_mlp_dim=flat_mlp_dim, pooling=pooling, num_q_layers=num_q_layers, num_v_layers=num_v_layers,
        )
        self.hidden_dim, self.heads, self.ffn_dim, self.num_layers = hidden_dim, heads, ffn_dim, num_layers
        self.num_q_layers, self.num_v_layers = num_q_layers, num_v_layers
        self.pooling, self.glimpses, self.flat_mlp_dim = pooling, glimpses, flat_mlp_dim
        kw = dict(device=device, dtype=dtype)
        self.spec = TransformerSpec(hidden_dim, heads, ffn_dim, dropout, activation, 0.0, self._norm_eps)
        self.v_embed = _Embed(v_dim, hidden_dim, True, dropout, self._norm_eps, **kw)
        self.q_embed = _Embed(q_dim, hidden_dim, True, dropout, self._norm_eps, **kw)
        self.v_layers = nn.ModuleList(TransformerLayer(self.spec, **kw) for _ in range(num_v_layers))
        self.q_layers = nn.ModuleList(TransformerLayer(self.spec, **kw) for _ in range(num_q_layers))
        self.blocks = nn.ModuleList(ViLBERTBlock(self.spec, **kw) for _ in range(num_layers))
        self.v_pool = self._flat(pooling, out_dim, glimpses, flat_mlp_dim, dropout, kw)
        self.q_pool = self._flat(pooling, out_dim, glimpses, flat_mlp_dim, dropout, kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q, q_mask = self.question_sequence(q, q_mask)
        hv, hq = self.v_embed(v), self.q_embed(q)  # [B, K, D], [B, T, D]
        for layer in self.v_layers:
            hv = layer(hv, v_mask)
        for layer in self.q_layers:
            hq = layer(hq, q_mask)
        v2q, q2v = [], []
        for block in self.blocks:
            hv, hq, a_vq, a_qv = block(hv, hq, v_mask, q_mask)
            v2q.append(a_vq)
            q2v.append(a_qv)
        pv, v_attn = self.v_pool(hv, v_mask)  # [B, out], [B, G, K]
        pq, q_attn = self.q_pool(hq, q_mask)  # [B, out], [B, G, T]
        fused = F.relu(pq) * F.relu(pv)
        extras = {
            "v2q_attn": _zero_padded_rows(torch.stack(v2q, dim=1), v_mask),  # [B, L, K, T]
            "q2v_attn": _zero_padded_rows(torch.stack(q2v, dim=1), q_mask),  # [B, L, T, K]
        }
        return AttentionOutput(fused, v_attn, q_attn, extras)

    def expected_num_parameters(self) -> int:
        d, layer = self.hidden_dim, self.spec.layer_params()
        return (
            _Embed.num_parameters(self.v_dim, d, True)
            + _Embed.num_parameters(self.q_dim, d, True)
            + (self.num_q_layers + self.num_v_layers) * layer
            + 4 * self.num_layers * layer
            + 2 * self._flat_params()
        )


# ---------------------------------------------------------------- LXMERT


class LXMERTLayer(nn.Module):
    """One LXMERT cross-modality layer.

    ``Q' = LN(Q + MHA_x(Q, V))`` and ``V' = LN(V + MHA_x'(V, Q))`` from the same inputs
    (bi-directional cross-attention; ``x' = x`` when shared), then per stream self-attention and
    FFN, each ``x <- LN(x + f(x))`` (a :class:`TransformerLayer`).

    With ``update_v=False`` (the last layer, whose visual output nothing reads) only the language
    stream is updated and the visual sublayers are not built.

    Shapes: v Tensor[B, K, D], q Tensor[B, T, D] and masks -> ``(v, q, a_vq [B, K, T] | None,
    a_qv [B, T, K])``.

    Parameters: ``c·A + 2·(A + Φ)`` (``c`` = 1 shared, 2 not), or ``2·A + Φ`` with ``update_v=False``
    (``A``, ``Φ`` as in :class:`LXMERT`).

    Example::

        layer = LXMERTLayer(TransformerSpec(dim=64, heads=8, ffn_dim=256))
        v, q, a_vq, a_qv = layer(v, q, v_mask, q_mask)
    """

    def __init__(
        self, spec: TransformerSpec, *, shared_cross: bool = True, update_v: bool = True, device=None, dtype=None
    ):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.update_v = update_v
        self.q_cross = AttentionSublayer(spec, **kw)  # language queries vision (and vice versa when shared)
        self.v_cross = AttentionSublayer(spec, **kw) if (update_v and not shared_cross) else None
        self.q_layer = TransformerLayer(spec, **kw)
        self.v_layer = TransformerLayer(spec, **kw) if update_v else None

    def forward(self, v: Tensor, q: Tensor, v_mask: Tensor | None, q_mask: Tensor | None):
        q_new, a_qv = self.q_cross(q, v, v_mask, need_weights=True)  # words query regions
        a_vq = None
        if self.v_layer is not None:
            cross = self.q_cross if self.v_cross is None else self.v_cross
            v_new, a_vq = cross(v, q, q_mask, need_weights=True)  # regions query words
            v = self.v_layer(v_new, v_mask)
        return v, self.q_layer(q_new, q_mask), a_vq, a_qv


@register_fusion(
    "lxmert",
    kind="attention",
    modalities="2",
    paper="Tan & Bansal, EMNLP 2019 (LXMERT)",
    tiny={
        "hidden_dim": 8, "heads": 2, "ffn_dim": 16, "num_layers": 2,
        "num_q_layers": 1, "num_v_layers": 1, "flat_mlp_dim": 8,
    },
)
class LXMERT(_TransformerFusion):
    """LXMERT's encoder: single-modality encoders, cross-modality layers, language-side pooling.

    Streams ``V^0 = Dropout(LN(W_v V))``, ``Q^0 = Dropout(LN(W_q Q))``, then ``N_L`` transformer
    layers on words and ``N_R`` on regions (the language and object-relationship encoders), then
    ``L = N_X`` cross-modality layers (:class:`LXMERTLayer`), each

        Q' = LN(Q + MHA_x(Q, V)),   V' = LN(V + MHA_x(V, Q))    (bi-directional cross-attention)
        Q  = TRM_q(Q'),             V  = TRM_v(V')              (self-attention, then FFN)

    and ``fused = tanh(W_p pool(Q) + b_p)``: like the paper, the output is the language stream's
    pooled vector (the "cross-modality output", BERT's tanh pooler), so regions reach it only
    through cross-attention.

    Paper vs. here (checked against airsplay/lxmert, src/lxrt/modeling.py):

    - The reference uses ONE cross-attention sublayer (``visual_attention``: attention, output
      dense and LayerNorm) for both directions; ``shared_cross_attention=True`` does the same,
      ``False`` gives each direction its own.
    - The paper pools the output at the ``[CLS]`` word; the inputs here carry no such token, so
      ``pool`` is the masked mean of the words (``pooling="mean"``, default) or an
      :class:`AttFlat` reduction (``pooling="attflat"``).
    - In the last cross-modality layer the visual self-attention and FFN (and, unshared, the
      vision-to-language cross-attention) produce an output nothing reads; they are not built
      (they would never get a gradient), so ``extras["v2q_attn"]`` has ``L - 1`` layers.
    - Words enter through ``Linear + LayerNorm`` (standing in for BERT's embeddings), regions
      through ``LN(W_f f)``, the reference's feature branch (its box branch is left to the caller).
    - One width for both streams, as in the paper (768).

    Args:
        v_dim, q_dim, out_dim: the contract (``out_dim`` is the pooled width, 768 in the paper).
        hidden_dim: D (768). heads: H (12). ffn_dim: F (``None`` = 4·D = 3072).
        num_layers: N_X, cross-modality layers (5).
        num_q_layers: N_L, language layers (9). num_v_layers: N_R, object-relationship layers (5).
        shared_cross_attention: one cross-attention sublayer for both directions (True).
        dropout: attention-weight and hidden dropout (0.1). activation: the FFN's (GELU).
        pooling, glimpses, flat_mlp_dim: as in :class:`ViLBERT`.

    Returns ``AttentionOutput``: ``fused`` Tensor[B, out_dim]; ``v_attn`` None (no pooling over
    regions); ``q_attn`` Tensor[B, G, T] the pooling weights; ``extras["q2v_attn"]``
    Tensor[B, L, T, K] (words attending to regions) and ``extras["v2q_attn"]``
    Tensor[B, L - 1, K, T] (regions attending to words), averaged over heads, zero rows at
    padding queries.

    Parameters (``A = 4·D·(D + 1) + 2·D``, ``Φ = (D + 1)·F + (F + 1)·D + 2·D``, ``c`` = 1 shared /
    2 not): ``(v_dim + 1)·D + (q_dim + 1)·D + 4·D + (N_L + N_R)·(A + Φ)
    + (L - 1)·(c·A + 2·(A + Φ)) + 2·A + Φ + P_flat``.

    Example::

        att = LXMERT(2048, 768, 768)                    # 9 + 5 single-modality, 5 cross layers
        out = att(v, q, v_mask=vm, q_mask=qm)           # out.fused [B, 768]
        out.extras["q2v_attn"]                          # [B, 5, T, K]
    """

    _norm_eps = 1e-12

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 768,
        heads: int = 12,
        ffn_dim: int | None = None,
        num_layers: int = 5,
        num_q_layers: int = 9,
        num_v_layers: int = 5,
        shared_cross_attention: bool = True,
        dropout: float = 0.1,
        activation: ActivationArg = "gelu",
        pooling: str = "mean",
        glimpses: int = 1,
        flat_mlp_dim: int = 512,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout=dropout)
        ffn_dim = 4 * hidden_dim if ffn_dim is None else ffn_dim
        self._check_knobs(
            hidden_dim=hidden_dim, heads=heads, ffn_dim=ffn_dim, num_layers=num_layers, glimpses=glimpses,
            flat_mlp_dim=flat_mlp_dim, pooling=pooling, num_q_layers=num_q_layers, num_v_layers=num_v_layers,
        )
        self.hidden_dim, self.heads, self.ffn_dim, self.num_layers = hidden_dim, heads, ffn_dim, num_layers
        self.num_q_layers, self.num_v_layers = num_q_layers, num_v_layers
        self.shared_cross_attention = bool(shared_cross_attention)
        self.pooling, self.glimpses, self.flat_mlp_dim = pooling, glimpses, flat_mlp_dim
        kw = dict(device=device, dtype=dtype)
        self.spec = TransformerSpec(hidden_dim, heads, ffn_dim, dropout, activation, 0.0, self._norm_eps)
        self.v_embed = _Embed(v_dim, hidden_dim, True, dropout, self._norm_eps, **kw)
        self.q_embed = _Embed(q_dim, hidden_dim, True, dropout, self._norm_eps, **kw)
        self.q_layers = nn.ModuleList(TransformerLayer(self.spec, **kw) for _ in range(num_q_layers))
        self.v_layers = nn.ModuleList(TransformerLayer(self.spec, **kw) for _ in range(num_v_layers))
        self.x_layers = nn.ModuleList(
            LXMERTLayer(self.spec, shared_cross=self.shared_cross_attention, update_v=i < num_layers - 1, **kw)
            for i in range(num_layers)
        )
        self.q_pool = self._flat(pooling, out_dim, glimpses, flat_mlp_dim, dropout, kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q, q_mask = self.question_sequence(q, q_mask)
        hv, hq = self.v_embed(v), self.q_embed(q)  # [B, K, D], [B, T, D]
        for layer in self.q_layers:
            hq = layer(hq, q_mask)
        for layer in self.v_layers:
            hv = layer(hv, v_mask)
        v2q, q2v = [], []
        for layer in self.x_layers:
            hv, hq, a_vq, a_qv = layer(hv, hq, v_mask, q_mask)
            q2v.append(a_qv)
            if a_vq is not None:
                v2q.append(a_vq)
        pq, q_attn = self.q_pool(hq, q_mask)  # [B, out], [B, G, T]
        k, t = hv.shape[1], hq.shape[1]
        extras = {
            "v2q_attn": _zero_padded_rows(_stack_maps(v2q, hv, k, t), v_mask),  # [B, L-1, K, T]
            "q2v_attn": _zero_padded_rows(torch.stack(q2v, dim=1), q_mask),  # [B, L, T, K]
        }
        return AttentionOutput(torch.tanh(pq), None, q_attn, extras)

    def expected_num_parameters(self) -> int:
        d, s = self.hidden_dim, self.spec
        a, layer = s.attention_params(), s.layer_params()
        c = 1 if self.shared_cross_attention else 2
        return (
            _Embed.num_parameters(self.v_dim, d, True)
            + _Embed.num_parameters(self.q_dim, d, True)
            + (self.num_q_layers + self.num_v_layers) * layer
            + (self.num_layers - 1) * (c * a + 2 * layer)
            + a + layer
            + self._flat_params()
        )


# ---------------------------------------------------------------- MCAN


class SGALayer(nn.Module):
    """MCAN's self-guided-attention unit on regions, guided by the words ``Q``.

    ``V <- LN(V + MHA_s(V, V))``, ``V <- LN(V + MHA_g(V, Q))``, ``V <- LN(V + FFN(V))``.
    Shapes: v Tensor[B, K, D], q Tensor[B, T, D] and masks -> ``(v, a_vq [B, K, T])``.

    Parameters: ``2·A + Φ`` (``A``, ``Φ`` as in :class:`MCAN`).

    Example::

        sga = SGALayer(TransformerSpec(dim=64, heads=8, ffn_dim=256, activation="relu"))
        v, a_vq = sga(v, q_encoded, v_mask, q_mask)
    """

    def __init__(self, spec: TransformerSpec, *, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.self_attention = AttentionSublayer(spec, **kw)
        self.guided_attention = AttentionSublayer(spec, **kw)
        self.ffn = FeedForwardSublayer(spec, **kw)

    def forward(self, v: Tensor, q: Tensor, v_mask: Tensor | None, q_mask: Tensor | None):
        v = self.self_attention(v, v, v_mask)[0]
        v, a_vq = self.guided_attention(v, q, q_mask, need_weights=True)
        return self.ffn(v), a_vq


@register_fusion(
    "mcan",
    kind="attention",
    modalities="2",
    paper="Yu et al., CVPR 2019 (MCAN, encoder-decoder; MILVLG/mcan-vqa)",
    tiny={"hidden_dim": 8, "heads": 2, "ffn_dim": 16, "num_layers": 2, "flat_mlp_dim": 8},
)
class MCAN(_TransformerFusion):
    """MCAN, encoder-decoder: L SA layers on words, L SGA layers on regions, AttFlat fusion.

    ``Q^0 = W_q Q + b``, ``V^0 = W_v V + b``; encoder ``Q^l = SA(Q^{l-1})`` (self-attention then
    FFN, each ``x <- LN(x + f(x))``); decoder ``V^l = SGA(V^{l-1}, Q^L)`` (self-attention, then
    attention guided by the FINAL encoder output ``Q^L``, then FFN, each with residual + LN);

        fused = LayerNorm(AttFlat_v(V^L) + AttFlat_q(Q^L))

    with ``AttFlat(X) = W_m [Σ_i α_{g,i} x_i]_g``, ``α_g = softmax_i(MLP(x_i)_g)`` over the valid
    positions, MLP = ``Linear(D, 512) -> ReLU -> Dropout -> Linear(512, G)``. ``out_dim`` is the
    flat size (1024 in MCAN-small, 2048 in MCAN-large), the input of the answer classifier.

    Paper vs. here (checked against MILVLG/mcan-vqa, core/model/{mca,net,net_utils}.py):

    - The reference's LayerNorm is ``a·(x - mean)/(std + 1e-6) + b`` with the unbiased std; here
      it is ``nn.LayerNorm(eps=1e-6)`` (the paper's LayerNorm; outputs differ by a factor
      ``sqrt((D - 1)/D)`` on the normalised part).
    - Words enter through a Linear ``q_dim -> D`` (the reference feeds its LSTM's D-dim states
      directly); regions through ``img_feat_linear`` as in the reference.
    - Masks are given, not derived from all-zero features.
    - ``norm_first=True`` (not in the paper) makes every sublayer pre-norm and adds a final
      LayerNorm to the encoder output (before the decoder's guided attention reads it) and to the
      decoder output: on Sort-of-CLEVR the post-norm model at lr 1e-3 sat at chance for 4 epochs
      before it started to learn (docs/BENCHMARKS.md, the main job).

    Args:
        v_dim, q_dim, out_dim: the contract.
        hidden_dim: D (512). heads: H (8). ffn_dim: F (``None`` = 4·D = 2048).
        num_layers: L, for the encoder and the decoder alike (6).
        dropout: every dropout of the model (0.1). activation: the FFN's (ReLU).
        glimpses: G of both AttFlats (1). flat_mlp_dim: their MLP width (512).
        norm_first: pre-norm sublayers plus two final LayerNorms (False, the paper's post-norm).

    Returns ``AttentionOutput``: ``fused`` Tensor[B, out_dim]; ``v_attn`` Tensor[B, G, K] and
    ``q_attn`` Tensor[B, G, T], the AttFlat weights; ``extras["v2q_attn"]`` Tensor[B, L, K, T],
    each SGA layer's guided attention (regions attending to the encoded words) averaged over
    heads, zero rows at padding regions.

    Parameters (``A = 4·D·(D + 1) + 2·D``, ``Φ = (D + 1)·F + (F + 1)·D + 2·D``,
    ``P_flat = (D + 1)·M + (M + 1)·G + (G·D + 1)·out_dim`` with ``M = flat_mlp_dim``):
    ``(v_dim + 1)·D + (q_dim + 1)·D + L·(A + Φ) + L·(2·A + Φ) + 2·P_flat + 2·out_dim``, plus
    ``4·D`` with ``norm_first``.

    Example::

        att = MCAN(2048, 512, 1024)                     # MCAN-small
        out = att(v, q, v_mask=vm, q_mask=qm)           # out.fused [B, 1024], out.v_attn [B, 1, K]
        out.extras["v2q_attn"]                          # [B, 6, K, T]
    """

    _norm_eps = 1e-6

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 512,
        heads: int = 8,
        ffn_dim: int | None = None,
        num_layers: int = 6,
        dropout: float = 0.1,
        activation: ActivationArg = "relu",
        glimpses: int = 1,
        flat_mlp_dim: int = 512,
        norm_first: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__(v_dim, q_dim, out_dim, dropout=dropout)
        ffn_dim = 4 * hidden_dim if ffn_dim is None else ffn_dim
        self._check_knobs(
            hidden_dim=hidden_dim, heads=heads, ffn_dim=ffn_dim, num_layers=num_layers, glimpses=glimpses,
            flat_mlp_dim=flat_mlp_dim,
        )
        if not isinstance(norm_first, bool):
            raise ValueError(f"{self.fusion_name}: norm_first must be a bool, got {norm_first!r}")
        self.norm_first = norm_first
        self.hidden_dim, self.heads, self.ffn_dim, self.num_layers = hidden_dim, heads, ffn_dim, num_layers
        self.pooling, self.glimpses, self.flat_mlp_dim = "attflat", glimpses, flat_mlp_dim
        kw = dict(device=device, dtype=dtype)
        self.spec = TransformerSpec(hidden_dim, heads, ffn_dim, dropout, activation, dropout, self._norm_eps, norm_first)
        self.v_embed = _Embed(v_dim, hidden_dim, False, 0.0, self._norm_eps, **kw)
        self.q_embed = _Embed(q_dim, hidden_dim, False, 0.0, self._norm_eps, **kw)
        self.encoder = nn.ModuleList(TransformerLayer(self.spec, **kw) for _ in range(num_layers))
        self.decoder = nn.ModuleList(SGALayer(self.spec, **kw) for _ in range(num_layers))
        final = (lambda: nn.LayerNorm(hidden_dim, eps=self._norm_eps, **kw)) if norm_first else nn.Identity
        self.q_final_norm, self.v_final_norm = final(), final()
        self.v_flat = self._flat("attflat", out_dim, glimpses, flat_mlp_dim, dropout, kw)
        self.q_flat = self._flat("attflat", out_dim, glimpses, flat_mlp_dim, dropout, kw)
        self.norm = nn.LayerNorm(out_dim, eps=self._norm_eps, **kw)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        q, q_mask = self.question_sequence(q, q_mask)
        hv, hq = self.v_embed(v), self.q_embed(q)  # [B, K, D], [B, T, D]
        for layer in self.encoder:
            hq = layer(hq, q_mask)
        hq = self.q_final_norm(hq)
        maps = []
        for layer in self.decoder:
            hv, a_vq = layer(hv, hq, v_mask, q_mask)
            maps.append(a_vq)
        hv = self.v_final_norm(hv)
        pv, v_attn = self.v_flat(hv, v_mask)  # [B, out], [B, G, K]
        pq, q_attn = self.q_flat(hq, q_mask)  # [B, out], [B, G, T]
        extras = {"v2q_attn": _zero_padded_rows(torch.stack(maps, dim=1), v_mask)}  # [B, L, K, T]
        return AttentionOutput(self.norm(pv + pq), v_attn, q_attn, extras)

    def expected_num_parameters(self) -> int:
        d, s, L = self.hidden_dim, self.spec, self.num_layers
        a, phi = s.attention_params(), s.ffn_params()
        return (
            _Embed.num_parameters(self.v_dim, d, False)
            + _Embed.num_parameters(self.q_dim, d, False)
            + L * (a + phi)
            + L * (2 * a + phi)
            + 2 * self._flat_params()
            + 2 * self.out_dim
            + (4 * d if self.norm_first else 0)
        )

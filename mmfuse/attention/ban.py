"""Bilinear Attention Networks, with the counting module as an option.

Papers:
- Kim, Jun & Zhang, "Bilinear attention networks", NeurIPS 2018 (``ban``; reference code
  jnhwkim/ban-vqa: ``bc.py`` BCNet, ``attention.py`` BiAttention, ``base_model.py`` BanModel,
  ``fc.py`` FCNet).
- Zhang, Hare & Prügel-Bennett, "Learning to count objects in natural images for visual
  question answering", ICLR 2018 (:class:`Counter`; reference code Cyanogenoid/vqa-counting,
  copied into ban-vqa as ``counting.py``).

Axis legend of the shape notes: ``B`` batch, ``G`` glimpses, ``K`` regions, ``T`` words,
``R`` the map's rank (``map_factor · hidden_dim``), ``H`` hidden_dim, ``n`` counted boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from .._registry import register_fusion
from ..functional import check_positive, masked_softmax, sum_pool
from ..layers import dropout_or_identity
from ._base import AttentionFusion, AttentionOutput, check_attention_inputs

__all__ = ["BAN", "Counter", "PiecewiseLinear", "WeightNormProjection", "box_iou"]


def _wn_linear_params(d_in: int, d_out: int) -> int:
    """A weight-normed Linear with ``dim=None``: direction ``V``, scalar ``g``, bias."""
    return d_in * d_out + 1 + d_out


class WeightNormProjection(nn.Module):
    """ban-vqa's one-layer ``FCNet``: ``act(WN-Linear(dropout(x)))``.

    The Linear is weight-normed with one scalar gain (``weight = g · V / ||V||_F``,
    ``torch.nn.utils.parametrizations.weight_norm(dim=None)``, which works under
    ``torch.compile(fullgraph=True)`` and ``torch.export``). Tensor[..., d_in] -> Tensor[..., d_out].

    Parameters: ``d_in·d_out + 1 + d_out``.

    Example::

        proj = WeightNormProjection(2048, 1280, relu=True, dropout=0.2)
        h = proj(v)                                      # [B, K, 1280]
    """

    def __init__(self, d_in: int, d_out: int, relu: bool = True, dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.d_in, self.d_out, self.relu = d_in, d_out, relu
        self.drop = dropout_or_identity(dropout)
        self.linear = weight_norm(nn.Linear(d_in, d_out, device=device, dtype=dtype), dim=None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(self.drop(x))
        return torch.relu(y) if self.relu else y

    def num_parameters(self) -> int:
        return _wn_linear_params(self.d_in, self.d_out)


class _MapWeights(nn.Module):
    """BCNet's ``h_mat`` Tensor[G, R] (weight-normed as one tensor) and ``h_bias`` Tensor[G]."""

    def __init__(self, glimpses: int, rank: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.randn(glimpses, rank, **kw))
        self.bias = nn.Parameter(torch.randn(glimpses, **kw))


# ------------------------------------------------------------------ counting


def box_iou(boxes: Tensor) -> Tensor:
    """Pairwise IoU of boxes ``(x1, y1, x2, y2)``: Tensor[B, n, 4] -> Tensor[B, n, n].

    As the counting paper's code: ``inter / (area_i + area_j - inter + 1e-12)``, degenerate
    boxes have area 0.
    """
    lo = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])  # [B, n, n, 2]
    hi = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)  # [B, n, n]
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)  # [B, n]
    return inter / (area[:, :, None] + area[:, None, :] - inter + 1e-12)


class PiecewiseLinear(nn.Module):
    """A learned monotone map ``f: [0, 1] -> [0, 1]`` with ``f(0) = 0``, ``f(1) = 1``.

    ``w = |weight| / Σ|weight|`` (``weight`` Tensor[pieces + 1], ``weight[0] = 0`` for good:
    its gradient through ``|·|`` is 0), ``f(x) = Σ_{j ≤ ⌊n x⌋} w_j + frac(n x) · w_{⌊n x⌋ + 1}``
    with ``n = pieces``. Initialised to the identity. Tensor[...] -> Tensor[...].

    Parameters: ``pieces + 1``.

    Example::

        f = PiecewiseLinear(16)
        y = f(torch.rand(4, 10))                        # identity at initialisation
    """

    def __init__(self, pieces: int = 16, device=None, dtype=None):
        super().__init__()
        self.pieces = pieces
        w = torch.ones(pieces + 1, device=device, dtype=dtype)
        w[0] = 0
        self.weight = nn.Parameter(w)

    def forward(self, x: Tensor) -> Tensor:
        n = self.pieces
        w = self.weight.abs()
        w = w / w.sum()
        csum = w.cumsum(0)
        y = n * x
        whole = y.detach().trunc()
        idx = whole.long().clamp(0, n)
        return csum[idx] + (y - whole) * w[(idx + 1).clamp(max=n)]


class Counter(nn.Module):
    """The counting module of Zhang et al. (ICLR 2018): count features from boxes and scores.

    Keeps the ``n = min(objects, K)`` highest-scoring boxes, ``a = sigmoid(score)``, and with
    eight learned monotone maps ``f_0..f_7`` (:class:`PiecewiseLinear`)::

        A_ij = a_i a_j,   D_ij = 1 - IoU(b_i, b_j)
        S_ij = f_0(A_ij) f_1(D_ij),   E_ij = f_3(A_ij) f_4(D_ij)
        sim_jl = f_2(1 - |a_j - a_l|) Π_i f_2(1 - |E_ij - E_il|),   r_j = Σ_l sim_jl
        c = sqrt(Σ_ij S_ij / (r_i r_j) + Σ_i f_0(a_i²) / r_i + 1e-20)
        o = onehot(c) · f_7(mean_i |f_5(a_i) - 0.5| + mean_ij |f_6(D_ij) - 0.5|)

    where ``onehot(c)`` is the linear interpolation between the one-hot codes of ``⌊c⌋`` and
    ``⌈c⌉`` over ``0..objects`` (``c`` clamped to ``[0, objects]``), i.e. ``max(0, 1 - |c - j|)``.

    With a ``mask``, invalid regions never count: they get score ``-inf`` before the top-n, and
    among the kept boxes an invalid one has ``a = 0``, box 0, is left out of the products,
    sums and means above (its ``r`` is 1). With all boxes valid and ``K >= objects`` this is the
    reference code; it builds 16 maps of which ``f_0..f_7`` are used, here only those eight
    exist (an unused parameter would never get a gradient).

    Shapes: ``boxes`` Tensor[B, K, 4] as ``(x1, y1, x2, y2)``, ``scores`` Tensor[B, K] (logits;
    BAN passes the map logits' max over words), ``mask`` bool Tensor[B, K] or None ->
    Tensor[B, objects + 1].

    Parameters: ``8·(pieces + 1)``.

    Example::

        counter = Counter(objects=10)
        features = counter(boxes, logits, mask)        # [B, 11]
    """

    num_maps = 8

    def __init__(self, objects: int = 10, pieces: int = 16, device=None, dtype=None):
        super().__init__()
        check_positive("counter", objects=objects, pieces=pieces)
        self.objects, self.pieces = objects, pieces
        self.f = nn.ModuleList(PiecewiseLinear(pieces, device, dtype) for _ in range(self.num_maps))

    def forward(self, boxes: Tensor, scores: Tensor, mask: Tensor | None = None) -> Tensor:
        f = self.f
        n = min(self.objects, scores.shape[1])
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        top, idx = scores.topk(n, dim=1)  # [B, n]
        boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))  # [B, n, 4]
        a = torch.sigmoid(top)
        valid = None if mask is None else mask.gather(1, idx)  # [B, n]
        if valid is not None:
            a = a * valid.to(a.dtype)
            boxes = boxes.masked_fill(~valid.unsqueeze(-1), 0.0)
        relevancy = a[:, :, None] * a[:, None, :]  # [B, n, n]
        distance = 1 - box_iou(boxes)  # [B, n, n]
        score = f[0](relevancy) * f[1](distance)
        dedup = f[3](relevancy) * f[4](distance)  # E, [B, n(i), n(j)]
        # sim_jl = f_2(1 - |a_j - a_l|) Π_i f_2(1 - |E_ij - E_il|)
        terms = f[2](1 - (dedup[:, :, :, None] - dedup[:, :, None, :]).abs())  # [B, i, j, l]
        if valid is not None:
            terms = torch.where(valid[:, :, None, None], terms, torch.ones_like(terms))
        sim = terms.prod(1) * f[2](1 - (a[:, :, None] - a[:, None, :]).abs())  # [B, j, l]
        if valid is not None:
            sim = sim * valid[:, None, :].to(sim.dtype)
        row = sim.sum(2)  # [B, n]
        if valid is not None:
            row = torch.where(valid, row, torch.ones_like(row))
        score = score / (row[:, :, None] * row[:, None, :])
        correction = f[0](a * a) / row
        count = (score.sum((1, 2)) + correction.sum(1) + 1e-20).sqrt()  # [B]
        att_conf = (f[5](a) - 0.5).abs()  # [B, n]
        dist_conf = (f[6](distance) - 0.5).abs()  # [B, n, n]
        if valid is None:
            conf_in = att_conf.mean(1) + dist_conf.mean((1, 2))
        else:
            vf = valid.to(att_conf.dtype)
            nv = vf.sum(1)
            pairs = vf[:, :, None] * vf[:, None, :]
            conf_in = (att_conf * vf).sum(1) / nv.clamp_min(1) + (dist_conf * pairs).sum((1, 2)) / (nv * nv).clamp_min(1)
        conf = f[7](conf_in)  # [B]
        levels = torch.arange(self.objects + 1, device=count.device, dtype=count.dtype)
        one_hot = torch.relu(1 - (count.clamp(0, self.objects).unsqueeze(1) - levels).abs())  # [B, objects + 1]
        return one_hot * conf.unsqueeze(1)

    def num_parameters(self) -> int:
        return self.num_maps * (self.pieces + 1)

    def extra_repr(self) -> str:
        return f"objects={self.objects}, pieces={self.pieces}"


# ------------------------------------------------------------------ BAN


@register_fusion(
    "ban",
    kind="attention",
    modalities="2",
    paper="Kim et al., NeurIPS 2018 (Bilinear Attention Networks)",
    tiny={"hidden_dim": 4, "glimpses": 2},
)
class BAN(AttentionFusion):
    """Bilinear Attention Networks: G bilinear attention maps over region × word pairs, and
    residual learning of the joint features into the word states.

    With ``X' = ReLU(X U)`` ``[K, R]`` and ``Y' = ReLU(Y V)`` ``[T, R]`` (``R = map_factor·H``,
    weight-normed Linears), for glimpse ``g = 1..G``::

        A_g    = softmax over the valid (i, j) pairs of  X' diag(p_g) Y'^T + b_g      [K, T]
        f_g[k] = Σ_ij A_g[i, j] ReLU(X U'_g)_ik ReLU(Y_{g-1} V'_g)_jk                   (k < H)
        Y_g    = Y_{g-1} + (W_g f_g) 1^T  (+ ReLU(C_g count_g) 1^T with the counter)
        fused  = W_o Σ_t Y_G[t] + b_o                          (sum over the valid words)

    ``Y_0 = Q`` are the word features; a pair ``(i, j)`` is valid when region ``i`` and word
    ``j`` both are. All maps are computed from ``Y_0`` (BiAttention runs before the residual
    loop); glimpse ``g``'s joint projections ``U'_g, V'_g`` see the updated ``Y_{g-1}``.
    Dropout 0.2 on every projection input, 0.5 on the map's image branch ``X'``, 0.2 before
    ``W_g`` (ban-vqa's FCNet / BCNet). ``p`` ``[G, R]`` is weight-normed as one tensor with one
    gain, ``b`` ``[G]`` is not; both start from N(0, 1) as in BCNet.

    Checked against ban-vqa: the rank-``3H`` map is not pooled (BCNet's ``h_mat`` has ``3H``
    entries per glimpse; its sum-pooling ``p_net`` only acts in ``forward_with_weights``, i.e.
    on the joint features, here when ``joint_factor > 1``: ``f_g`` = SumPool over windows of
    ``joint_factor``). BCNet switches to a weight-normed ``Linear(R, G)`` on the materialised
    outer product for G > 32; here the ``p_g`` form serves every G. The reference sums the
    residual stream over all 14 (padded) word slots and takes no word mask; here padded
    words take no part anywhere.

    Efficiency: the maps are ``X' (Y' ∘ p)^T`` (one batched GEMM ``[B, K, R] x [B, R, G·T]``;
    memory ``O(B·G·T·R + B·G·K·T)``), the joint features ``Σ_j Y''_j ∘ (A_g^T X'')_j`` with
    ``X'' = ReLU(X U'_g)``, ``Y'' = ReLU(Y_{g-1} V'_g)`` (memory ``O(B·T·H)``); no
    ``[B, G, K, R]`` or ``[B, G, K, T, H]`` tensor is formed.

    Counting (``counter=True``): ``forward(..., v_boxes=boxes)`` with ``boxes``
    Tensor[B, K, 4] ``(x1, y1, x2, y2)`` (normalised coordinates); glimpse ``g`` counts with
    :class:`Counter` on the boxes scored by ``max_j logit_g[i, j]`` (over valid words) and adds
    ``ReLU(C_g count_g)`` (a weight-normed ``Linear(objects + 1, Dq)``) to every word state.

    Shapes: ``v`` Tensor[B, K, Dv], ``q`` Tensor[B, T, Dq] (a vector Tensor[B, Dq] is a one-word
    question) -> ``fused`` Tensor[B, out_dim]; ``v_attn`` Tensor[B, G, K] and ``q_attn``
    Tensor[B, G, T], the marginals of ``A``; ``extras["bilinear_maps"]`` ``A`` Tensor[B, G, K, T];
    with the counter also ``extras["counts"]`` Tensor[B, G, objects + 1].

    Args:
        v_dim, q_dim, out_dim: the contract (``q_dim`` is also the residual stream's width; in
            ban-vqa both are the GRU's 1280).
        glimpses: G (8; the paper's smaller model, and Flickr30k, use 4).
        hidden_dim: H (1280). map_factor: ``R = map_factor·H`` (3). joint_factor: the joint
            features' rank ``joint_factor·H`` before sum-pooling to H (1).
        counter: add the counting module (off). count_objects: boxes it counts (10).
        dropout_input (0.2), dropout_map (0.5), dropout_residual (0.2): see above.
        output_linear: ``W_o``; ``False`` returns ``Σ_t Y_G[t]`` (then ``out_dim`` must equal
            ``q_dim``; the paper's classifier, an MLP with 2H hidden units and dropout 0.5,
            belongs to the head).

    Parameters, with ``R = map_factor·H``, ``J = joint_factor·H``, ``n = count_objects``::

        (Dv·R + 1 + R) + (Dq·R + 1 + R) + (G·R + 1) + G
        + G·[(Dv·J + 1 + J) + (Dq·J + 1 + J) + (H·Dq + 1 + Dq)]
        + counter: G·((n + 1)·Dq + 1 + Dq) + 8·17
        + (Dq + 1)·out_dim                                   (without output_linear: 0)

    Example::

        att = BAN(2048, 1280, 1280, glimpses=8)
        out = att(v, words, v_mask=vm, q_mask=qm)      # out.extras["bilinear_maps"] [B, 8, K, T]
        att = BAN(2048, 1280, 1280, counter=True)
        out = att(v, words, v_mask=vm, q_mask=qm, v_boxes=boxes)
    """

    def __init__(
        self,
        v_dim: int,
        q_dim: int,
        out_dim: int,
        *,
        glimpses: int = 8,
        hidden_dim: int = 1280,
        map_factor: int = 3,
        joint_factor: int = 1,
        counter: bool = False,
        count_objects: int = 10,
        dropout_input: float = 0.2,
        dropout_map: float = 0.5,
        dropout_residual: float = 0.2,
        output_linear: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(
            v_dim, q_dim, out_dim, dropout_input=dropout_input, dropout_map=dropout_map, dropout_residual=dropout_residual
        )
        name = self.fusion_name
        check_positive(
            name, glimpses=glimpses, hidden_dim=hidden_dim, map_factor=map_factor, joint_factor=joint_factor,
            count_objects=count_objects,
        )
        if not output_linear and out_dim != q_dim:
            raise ValueError(f"{name}: without the output Linear out_dim must equal q_dim {q_dim}, got {out_dim}")
        self.glimpses, self.hidden_dim, self.map_factor, self.joint_factor = glimpses, hidden_dim, map_factor, joint_factor
        self.count_objects, self.output_linear = count_objects, bool(output_linear)
        kw = dict(device=device, dtype=dtype)
        rank, joint = map_factor * hidden_dim, joint_factor * hidden_dim
        self.map_v = WeightNormProjection(v_dim, rank, True, dropout_input, **kw)
        self.map_q = WeightNormProjection(q_dim, rank, True, dropout_input, **kw)
        self.drop_map = dropout_or_identity(dropout_map)
        self.map_weights = weight_norm(_MapWeights(glimpses, rank, **kw), dim=None)
        self.joint_v = nn.ModuleList(WeightNormProjection(v_dim, joint, True, dropout_input, **kw) for _ in range(glimpses))
        self.joint_q = nn.ModuleList(WeightNormProjection(q_dim, joint, True, dropout_input, **kw) for _ in range(glimpses))
        self.residual = nn.ModuleList(
            WeightNormProjection(hidden_dim, q_dim, False, dropout_residual, **kw) for _ in range(glimpses)
        )
        if counter:
            self.counter: Counter | None = Counter(count_objects, **kw)
            self.count_proj = nn.ModuleList(
                WeightNormProjection(count_objects + 1, q_dim, True, **kw) for _ in range(glimpses)
            )
        else:
            self.counter = None
        self.out = nn.Linear(q_dim, out_dim, **kw) if output_linear else nn.Identity()

    def forward(
        self,
        v: Tensor,
        q: Tensor,
        v_mask: Tensor | None = None,
        q_mask: Tensor | None = None,
        *,
        v_boxes: Tensor | None = None,
    ) -> AttentionOutput:
        """Attend and fuse; ``v_boxes`` Tensor[B, K, 4] is required with ``counter=True``."""
        name = self.fusion_name
        check_attention_inputs(name, v, q, v_mask, q_mask, self.v_dim, self.q_dim)
        if self.counter is None and v_boxes is not None:
            raise ValueError(f"{name}: v_boxes given but the counter is off (build with counter=True)")
        if self.counter is not None:
            want = (v.shape[0], v.shape[1], 4)
            if not isinstance(v_boxes, Tensor) or tuple(v_boxes.shape) != want or not v_boxes.is_floating_point():
                got = tuple(v_boxes.shape) if isinstance(v_boxes, Tensor) else type(v_boxes).__name__
                raise ValueError(f"{name}: counter=True needs float v_boxes of shape {want} (x1, y1, x2, y2), got {got}")
        return self._attend(v, q, v_mask, q_mask, v_boxes)

    def attend(self, v, q, v_mask, q_mask) -> AttentionOutput:
        return self._attend(v, q, v_mask, q_mask, None)

    def bilinear_logits(self, v: Tensor, q: Tensor) -> Tensor:
        """The map logits ``X' diag(p_g) Y'^T + b_g``: Tensor[B, G, K, T] (before masking)."""
        b, k, t, g = v.shape[0], v.shape[1], q.shape[1], self.glimpses
        xm = self.drop_map(self.map_v(v))  # [B, K, R]
        ym = self.map_q(q)  # [B, T, R]
        p, bias = self.map_weights.weight, self.map_weights.bias  # [G, R], [G]
        yp = ym.unsqueeze(1) * p[None, :, None, :]  # [B, G, T, R]
        logits = torch.bmm(xm, yp.flatten(1, 2).transpose(1, 2))  # [B, K, G*T]
        return logits.view(b, k, g, t).permute(0, 2, 1, 3) + bias[None, :, None, None]  # [B, G, K, T]

    def _attend(self, v, q, v_mask, q_mask, v_boxes) -> AttentionOutput:
        q, q_mask = self.question_sequence(q, q_mask)
        b, k, t = v.shape[0], v.shape[1], q.shape[1]
        logits = self.bilinear_logits(v, q)  # [B, G, K, T]
        pairs = None
        if v_mask is not None or q_mask is not None:
            vm = v.new_ones(b, k, dtype=torch.bool) if v_mask is None else v_mask
            qm = q.new_ones(b, t, dtype=torch.bool) if q_mask is None else q_mask
            pairs = vm[:, None, :, None] & qm[:, None, None, :]  # [B, 1, K, T]
        flat_mask = None if pairs is None else pairs.flatten(-2)
        maps = masked_softmax(logits.flatten(-2), flat_mask).view(b, self.glimpses, k, t)  # A: [B, G, K, T]
        y = q  # the residual word stream, [B, T, Dq]
        counts = []
        for g in range(self.glimpses):
            xj = self.joint_v[g](v)  # [B, K, J]
            yj = self.joint_q[g](y)  # [B, T, J]
            joint = (torch.bmm(maps[:, g].transpose(1, 2), xj) * yj).sum(1)  # [B, J]
            if self.joint_factor > 1:
                joint = sum_pool(joint, self.joint_factor)  # [B, H]
            y = y + self.residual[g](joint).unsqueeze(1)
            if self.counter is not None:
                lg = logits[:, g] if pairs is None else logits[:, g].masked_fill(~pairs[:, 0], torch.finfo(logits.dtype).min)
                count = self.counter(v_boxes, lg.amax(-1), v_mask)  # [B, n + 1]
                counts.append(count)
                y = y + self.count_proj[g](count).unsqueeze(1)
        pooled = y.sum(1) if q_mask is None else (y * q_mask.unsqueeze(-1).to(y.dtype)).sum(1)  # [B, Dq]
        extras = {"bilinear_maps": maps}
        if counts:
            extras["counts"] = torch.stack(counts, dim=1)
        return AttentionOutput(self.out(pooled), maps.sum(-1), maps.sum(-2), extras)

    def expected_num_parameters(self) -> int:
        dv, dq, h, g = self.v_dim, self.q_dim, self.hidden_dim, self.glimpses
        r, j = self.map_factor * h, self.joint_factor * h
        n = _wn_linear_params(dv, r) + _wn_linear_params(dq, r) + g * r + 1 + g
        n += g * (_wn_linear_params(dv, j) + _wn_linear_params(dq, j) + _wn_linear_params(h, dq))
        if self.counter is not None:
            n += g * _wn_linear_params(self.count_objects + 1, dq) + self.counter.num_parameters()
        if self.output_linear:
            n += (dq + 1) * self.out_dim
        return n

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, glimpses={self.glimpses}, hidden_dim={self.hidden_dim}, "
            f"map_factor={self.map_factor}, joint_factor={self.joint_factor}, counter={self.counter is not None}"
        )

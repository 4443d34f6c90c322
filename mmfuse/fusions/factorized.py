"""Factorised bilinear pooling: MLB, MFB, MFH, Tucker, MUTAN, BLOCK and BLOCK-Tucker.

Papers:
- Kim et al., "Hadamard product for low-rank bilinear pooling", ICLR 2017 (MLB).
- Yu et al., "Multi-modal factorized bilinear pooling with co-attention learning for visual
  question answering", ICCV 2017 (MFB).
- Yu et al., "Beyond bilinear: generalized multimodal factorized high-order pooling for visual
  question answering", TNNLS 2018 (MFH).
- Ben-younes et al., "MUTAN: Multimodal Tucker fusion for visual question answering", ICCV 2017
  (Tucker, MUTAN).
- Ben-younes et al., "BLOCK: Bilinear superdiagonal fusion for visual question answering and
  visual relationship detection", AAAI 2019 (BLOCK, BLOCK-Tucker).

All share the same skeleton: per-modality input projections (:class:`InputProjections`), a
bilinear (or multilinear) interaction in a joint space of ``hidden_dim`` features, optional
signed sqrt + L2 (``normalize``), and the output Linear (:class:`FusionHead`). The defaults are
the papers'; block.bootstrap.pytorch's variants are reachable with the knobs (its
``dropout_input`` acts after the projections: pass it as ``dropout_projected``).

Axis letters in shape comments: ``N`` rows (any leading dims), ``C`` chunks, ``R`` rank,
``H`` hidden, ``k`` factor, ``s`` chunk size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, power_normalize, sum_pool
from ..kernels import MFHTail, use_kernels
from ..layers import ActivationArg, dropout_or_identity
from ._base import FusionHead, InputProjections, VectorFusion
from .bilinear import uniform_
from .simple import ProjectCombine

__all__ = ["MLB", "MFB", "MFH", "Tucker", "Mutan", "Block", "BlockTucker", "chunk_sizes"]


@register_fusion(
    "mlb",
    kind="vector",
    modalities="2+",
    paper="Kim et al., ICLR 2017 (MLB, Hadamard product for low-rank bilinear pooling)",
    tiny={"hidden_dim": 8},
)
class MLB(ProjectCombine):
    """Multimodal Low-rank Bilinear pooling: ``z = P^T(σ(U^T x + b_x) ⊙ σ(V^T y + b_y)) + b``.

    A rank-``hidden_dim`` bilinear form: ``z_k = sum_j P_jk σ(U_j^T x) σ(V_j^T y)``, i.e. with
    identity σ the full bilinear map with ``W_k = sum_j P_jk U_j V_j^T``. M modalities: the
    product runs over all of them. Paper defaults: ``hidden_dim=1200``, ``σ = tanh``, dropout
    0.5 on each input and on the product, no normalisation. block.bootstrap's ``MLB`` is
    ``activation="relu", output_activation="relu"`` with its ``dropout_input`` passed as
    ``dropout_projected`` (and 0 for the paper's dropouts).

    Parameters: ``sum_m (D_m + 1) * hidden_dim + (hidden_dim + 1) * out_dim``.
    """

    combine = "prod"

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dim: int = 1200,
        activation: ActivationArg = "tanh",
        output_activation: ActivationArg = None,
        normalize: bool = False,
        dropout_input: float = 0.5,
        dropout_projected: float = 0.0,
        dropout_pre_lin: float = 0.5,
        dropout_output: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_dims,
            out_dim,
            hidden_dim=hidden_dim,
            activation=activation,
            output_activation=output_activation,
            normalize=normalize,
            dropout_input=dropout_input,
            dropout_projected=dropout_projected,
            dropout_pre_lin=dropout_pre_lin,
            dropout_output=dropout_output,
            device=device,
            dtype=dtype,
        )


@register_fusion(
    "mfh",
    kind="vector",
    modalities="2+",
    paper="Yu et al., TNNLS 2018 (MFH, multimodal factorized high-order pooling)",
    tiny={"hidden_dim": 4, "factor": 2},
)
class MFH(VectorFusion):
    """Multimodal Factorized High-order pooling: ``order`` cascaded MFB blocks.

    Block ``i = 1..p``: the expanded vector
    ``e_i = Dropout(Ũ_i^T x ⊙ Ṽ_i^T y ⊙ e_{i-1})`` (``e_0 = 1``; each ``Ũ_i^T x`` has
    ``factor · hidden_dim`` features; M modalities multiply all their projections), pooled
    ``z_i = L2(ssqrt(SumPool_k(e_i)))`` over non-overlapping windows of ``k = factor``; the
    output is ``W_o [z_1; ..; z_p] + b``. ``e_{i-1}`` enters block ``i`` after its dropout and
    before its pooling, as in the paper and block.bootstrap. No nonlinearity on the
    projections (``activation=None``). Paper defaults: ``order=2``, ``hidden_dim=1000``,
    ``factor=5``, dropout 0.1 on the expanded vectors. The ``p`` blocks' projections of one
    modality run as one GEMM. On CUDA with Triton the tail after the projections (cascade,
    dropout, pooling, norms) is one kernel each way (:class:`mmfuse.kernels.MFHTail`); its
    dropout masks are Philox draws seeded from torch's CPU generator, the same distribution as
    ``nn.Dropout``'s but other draws.

    Args:
        in_dims: ``(D_1, .., D_M)``; out_dim: output features; hidden_dim: o; factor: k;
        order: p; activation: on the projections; normalize: ssqrt + L2 per block;
        dropout_input / dropout_projected: on raw / projected inputs;
        dropout_expanded: on each expanded vector ``e_i``;
        output_linear: ``False`` returns ``[z_1; ..; z_p]`` (then ``out_dim = p · hidden_dim``);
        output_activation, dropout_pre_lin, dropout_output: the output side.

    Parameters: ``sum_m (D_m + 1) · p · k · o + (p · o + 1) · out_dim``
    (no ``out_dim`` term without the output Linear).
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dim: int = 1000,
        factor: int = 5,
        order: int = 2,
        activation: ActivationArg = None,
        output_activation: ActivationArg = None,
        normalize: bool = True,
        output_linear: bool = True,
        dropout_input: float = 0.0,
        dropout_projected: float = 0.0,
        dropout_expanded: float = 0.1,
        dropout_pre_lin: float = 0.0,
        dropout_output: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_dims,
            out_dim,
            dropout_input=dropout_input,
            dropout_projected=dropout_projected,
            dropout_expanded=dropout_expanded,
            dropout_pre_lin=dropout_pre_lin,
            dropout_output=dropout_output,
        )
        name = self.fusion_name
        check_positive(name, hidden_dim=hidden_dim, factor=factor, order=order)
        self.hidden_dim, self.factor, self.order = hidden_dim, factor, order
        self.normalize = bool(normalize)
        kw = dict(owner=name, device=device, dtype=dtype)
        width = order * factor * hidden_dim
        self.inputs = InputProjections(
            self.in_dims, (width,) * len(self.in_dims), activation, dropout_input, dropout_projected, **kw
        )
        self.drop_expanded = dropout_or_identity(dropout_expanded)
        self.head = FusionHead(
            order * hidden_dim, out_dim, output_activation, dropout_pre_lin, dropout_output, output_linear, **kw
        )

    def fuse(self, *xs: Tensor) -> Tensor:
        hs = self.inputs(xs)  # each [N, p*k*H], block i in columns [i*k*H, (i+1)*k*H)
        joint = hs[0]
        for h in hs[1:]:
            joint = joint * h
        p = self.drop_expanded.p if self.training and isinstance(self.drop_expanded, nn.Dropout) else 0.0
        if use_kernels(joint) and not (p and _capturing(joint)):
            # the cascade, dropout, pooling and norms in one kernel each way (mmfuse.kernels.MFHTail);
            # the dropout seed comes from torch's CPU generator, so torch.manual_seed repeats it
            seed = torch.randint(0, 2**31 - 1, (), dtype=torch.int64) if p else torch.zeros((), dtype=torch.int64)
            return self.head(MFHTail.apply(joint, self.order, self.factor, self.normalize, 1e-12, p, seed))
        joint = joint.unflatten(-1, (self.order, self.factor * self.hidden_dim))  # [N, p, k*H]
        e, zs = None, []
        for i in range(self.order):
            e = joint[..., i, :] if e is None else joint[..., i, :] * e
            e = self.drop_expanded(e)
            z = sum_pool(e, self.factor)  # [N, H]
            zs.append(power_normalize(z) if self.normalize else z)
        return self.head(torch.cat(zs, dim=-1) if len(zs) > 1 else zs[0])

    def expected_num_parameters(self) -> int:
        width = self.order * self.factor * self.hidden_dim
        return sum((d + 1) * width for d in self.in_dims) + self.head.num_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, factor={self.factor}, order={self.order}"


@register_fusion(
    "mfb",
    kind="vector",
    modalities="2+",
    paper="Yu et al., ICCV 2017 (MFB, multi-modal factorized bilinear pooling)",
    tiny={"hidden_dim": 4, "factor": 2},
)
class MFB(MFH):
    """Multi-modal Factorized Bilinear pooling: ``z = L2(ssqrt(SumPool_k(Dropout(Ũ^T x ⊙ Ṽ^T y))))``.

    ``Ũ^T x`` and ``Ṽ^T y`` have ``k · o`` features (``factor · hidden_dim``), no nonlinearity;
    dropout (0.1) on the expanded vector; sum pooling over non-overlapping windows of ``k``;
    signed sqrt + L2; then the output Linear (``output_linear=False`` returns the ``o``-d
    vector itself, as in the paper, where the classifier follows). MFB is :class:`MFH` with
    ``order=1``. Paper defaults: ``o = 1000``, ``k = 5``. block.bootstrap's ``MFB`` is
    ``activation="relu", output_activation="relu", normalize=False`` with its
    ``dropout_input`` as ``dropout_projected`` and its ``dropout_pre_norm`` as
    ``dropout_expanded``.

    Parameters: ``sum_m (D_m + 1) · k · o + (o + 1) · out_dim``.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int, **kwargs):
        if "order" in kwargs:
            raise ValueError("mfb: order is fixed to 1 (use 'mfh' for higher orders)")
        super().__init__(in_dims, out_dim, order=1, **kwargs)

    def extra_repr(self) -> str:
        return f"in_dims={self.in_dims}, out_dim={self.out_dim}, hidden_dim={self.hidden_dim}, factor={self.factor}"


def _projected_dims(name: str, projected_dims: Sequence[int] | None, hidden_dim: int, m: int) -> tuple[int, ...]:
    if projected_dims is None:
        return (hidden_dim,) * m
    dims = tuple(projected_dims)
    if len(dims) != m:
        raise ValueError(f"{name}: projected_dims needs one width per modality ({m}), got {dims}")
    check_positive(name, **{f"projected_dims[{i}]": d for i, d in enumerate(dims)})
    return dims


def bilinear_core(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """``z[c, n, k] = sum_ij w[c, k, i, j] x[c, n, i] y[c, n, j]``: ``C`` bilinear maps at once.

    ``x`` Tensor[C, N, I], ``y`` Tensor[C, N, J], ``w`` Tensor[C, K, I, J] -> Tensor[C, N, K].
    One GEMM per map over the rows' outer products, ``[N, I · J] x [I · J, K]``: its long inner
    dimension runs near the GEMM's peak, where the other order, ``x @ w`` to ``[N, K · J]`` then
    a batched dot with ``y``, writes and reads back an ``N · K · J`` intermediate (Tucker at
    block.bootstrap's VQA sizes, 2 CPU threads: forward 23 ms against 35, forward + backward
    100-104 against 111-118; docs/BENCHMARKS.md, session 14). With gradients on,
    :class:`_BilinearCore` computes the backward with batched GEMMs and no copy of ``w``'s
    gradient. Where the outer products of all chunks and rows would pass :data:`_CORE_TILE`
    elements, they are formed one tile (a chunk, a block of rows) at a time, and formed again in
    the backward instead of being kept (:func:`_core_tiles`). On a CPU, from
    :data:`_BY_OUTPUT_ROWS` rows, a forward that keeps no products (no gradients, or tiled) runs
    one GEMM per output feature instead (:func:`_bilinear_core_by_output`), and so does a tiled
    backward (:func:`_core_backward_by_output`), which then forms no products at all.
    """
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad or w.requires_grad):
        return _BilinearCore.apply(x, y, w)
    return _bilinear_core(x, y, w, keep=False)[0]


# elements of the rows' outer products in one tile of bilinear_core: 2^26 (256 MB in float32) on
# a CPU, so that the products of a large batch are never held at once (BLOCK-Tucker at [128, 36, D]
# rows: 6 GB, and as much again for their gradient). At [128, D] rows (41M elements) BLOCK-Tucker
# stays one tile: there, one tile per chunk took 476-485 ms forward + backward against 454-461 on
# 2 CPU threads (benchmarks/fusions.py, session 14). On a GPU up to 2^28, where tiles only bound
# memory and each one costs kernel launches (as BLOCK's _TILE_ELEMENTS_CUDA).
_CORE_TILE = 1 << 26
_CORE_TILE_CUDA = 1 << 28


def _core_tiles(x: Tensor, ij: int) -> list[tuple[int, slice]] | None:
    """``None`` where the outer products of every chunk and row fit one tile, else the tiles
    ``[(chunk, rows), ...]``, chunk-major with each chunk's rows in order."""
    c, n = x.shape[0], x.shape[1]
    limit = _CORE_TILE_CUDA if x.is_cuda else _CORE_TILE
    if c * n * ij <= limit:
        return None
    step = max(1, limit // max(ij, 1))
    return [(ci, slice(a, a + step)) for ci in range(c) for a in range(0, n, step)]


def _outer(x: Tensor, y: Tensor) -> Tensor:
    """Rows' outer products: ``[..., I]``, ``[..., J]`` -> ``[..., I · J]``."""
    return (x.unsqueeze(-1) * y.unsqueeze(-2)).flatten(-2)


# rows from which, on a CPU, bilinear_core runs one GEMM per output feature wherever it keeps no
# outer products: forward without gradients (:func:`_bilinear_core_by_output`), and forward and
# backward where the products would pass one tile (:func:`_core_backward_by_output`). Its
# intermediates stay in cache where the products of many rows go through memory. 2 CPU threads,
# outer products / by output (benchmarks/bilinear_core.py, session 15), forward without gradients
# and forward + backward: Tucker's core (235^3) 0.85 / 0.93 at 128 rows, 1.23 / 1.11 at 256,
# 1.31 / 1.18 at 4608; BLOCK-Tucker's (10 x 180^3) 0.94 / 0.96 at 384, 0.94 / 1.09 at 512,
# 0.92 / 1.23 at 768, 1.36 / 1.10 at 4608. On a GPU the outer products stay: one launch per
# output feature is untested there.
_BY_OUTPUT_ROWS = 512


def _bilinear_core_by_output(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """:func:`bilinear_core`'s ``z`` as one GEMM per chunk and output feature,
    ``t = x @ w[c, k]`` (``[N, J]``), then ``z[c, :, k] = rowwise <t, y>`` as a batched dot
    (the order of ``torch.nn.functional.bilinear`` on a CPU). ``t`` is one buffer written in
    place: a fresh ``[N, J]`` per feature left the allocator's freed blocks unused, and Tucker's
    forward + backward at [128, 36, D] peaked at 1,247 MB instead of 546 (benchmarks/fusions.py,
    session 15)."""
    c, n, _ = x.shape
    z = None
    for ci in range(c):
        t = torch.mm(x[ci], w[ci, 0])  # [N, J], in the autocast dtype where autocast is on
        dt = t.dtype
        xc, wc, yc = x[ci].to(dt), w[ci].to(dt), y[ci].to(dt).unsqueeze(-1)  # cast once
        if z is None:
            z = torch.empty(c, w.shape[1], n, dtype=dt, device=x.device)  # each feature's column contiguous
        for k in range(w.shape[1]):
            if k:
                torch.mm(xc, wc[k], out=t)
            torch.bmm(t.unsqueeze(1), yc, out=z[ci, k].view(n, 1, 1))
    return z.transpose(1, 2).contiguous()


def _by_output(x: Tensor, w: Tensor) -> bool:
    """Whether ``x``'s rows (``[C, N, I]``) take the by-output-feature order where no outer
    products are kept: on a CPU, from :data:`_BY_OUTPUT_ROWS` rows."""
    return x.device.type == "cpu" and x.shape[1] >= _BY_OUTPUT_ROWS and w.shape[1] > 0


def _bilinear_core(x: Tensor, y: Tensor, w: Tensor, keep: bool) -> tuple[Tensor, Tensor | None]:
    """``(z, outer products)`` of :func:`bilinear_core`; the products are ``None`` when tiled or
    when ``keep`` is false and the forward ran by output feature."""
    c, n, _ = x.shape
    w2 = w.view(c, w.shape[1], -1)  # [C, K, I * J]
    tiles = _core_tiles(x, w2.shape[-1])
    if _by_output(x, w) and (tiles is not None or not keep):
        return _bilinear_core_by_output(x, y, w), None
    if tiles is None:
        xy = _outer(x, y)  # [C, N, I * J]
        return torch.bmm(xy, w2.transpose(1, 2)), xy
    zs = [torch.mm(_outer(x[ci, r], y[ci, r]), w2[ci].t()) for ci, r in tiles]
    return torch.cat(zs).view(c, n, w2.shape[1]), None


class _BilinearCore(torch.autograd.Function):
    """:func:`bilinear_core` with its backward as batched GEMMs: ``dw = dzᵀ (x ⊗ y)``,
    ``d(x ⊗ y) = dz w``, then ``dx``, ``dy`` as batched matrix-vector products with ``y``, ``x``.
    Autograd of the plain ops copies ``w``'s gradient out of the transposed view and forms ``dx``,
    ``dy`` with a broadcast product and a sum. Tiled (:func:`_core_tiles`), the forward keeps only
    ``x``, ``y``, ``w`` and the backward forms each tile's products again, accumulating ``w``'s
    gradient in its own dtype. Backward computes in the forward output's dtype (the autocast
    dtype of its GEMM) and returns each gradient in its input's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        z, xy = _bilinear_core(x, y, w, keep=True)
        ctx.save_for_backward(x, y, w, *([] if xy is None else [xy]))
        ctx.compute_dtype = z.dtype
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dz: Tensor):
        x, y, w, *kept = ctx.saved_tensors
        cd = ctx.compute_dtype
        c, n, i = x.shape
        j = y.shape[-1]
        dz = dz.to(cd)
        need_x, need_y, need_w = ctx.needs_input_grad
        if not kept and _by_output(x, w):  # tiled, by output feature: casts w one chunk at a time itself
            return _core_backward_by_output(x, y, w, dz, (need_x, need_y, need_w))
        w2 = w.to(cd).view(c, w.shape[1], i * j)
        if not kept:  # tiled
            return _tiled_core_backward(x, y, w, w2, dz, (need_x, need_y, need_w))
        dx = dy = dw = None
        if need_x or need_y:  # first, so that d(x ⊗ y) is freed before w's gradient is allocated
            dxy = torch.bmm(dz, w2).view(c * n, i, j)
            if need_x:
                dx = torch.bmm(dxy, y.to(cd).reshape(c * n, j, 1)).view(x.shape).to(x.dtype)
            if need_y:
                dy = torch.bmm(x.to(cd).reshape(c * n, 1, i), dxy).view(y.shape).to(y.dtype)
            del dxy
        if need_w:
            dw = torch.bmm(dz.transpose(1, 2), kept[0].to(cd)).view(w.shape).to(w.dtype)
        return dx, dy, dw


def _tiled_core_backward(x: Tensor, y: Tensor, w: Tensor, w2: Tensor, dz: Tensor, need: tuple[bool, bool, bool]):
    """The backward of :class:`_BilinearCore` over :func:`_core_tiles`, ``w2`` = ``w`` as
    ``[C, K, I · J]`` in the compute dtype ``dz.dtype``."""
    cd = dz.dtype
    i, j = x.shape[-1], y.shape[-1]
    dx = torch.empty(x.shape, dtype=cd, device=x.device) if need[0] else None
    dy = torch.empty(y.shape, dtype=cd, device=y.device) if need[1] else None
    dw = torch.empty(w2.shape, dtype=w.dtype, device=w.device) if need[2] else None
    for ci, r in _core_tiles(x, i * j) or []:
        xt, yt, dzt = x[ci, r].to(cd), y[ci, r].to(cd), dz[ci, r]
        if dx is not None or dy is not None:
            dxy = (dzt @ w2[ci]).view(-1, i, j)  # [n, I, J]
            if dx is not None:
                dx[ci, r] = torch.bmm(dxy, yt.unsqueeze(-1)).squeeze(-1)
            if dy is not None:
                dy[ci, r] = torch.bmm(xt.unsqueeze(1), dxy).squeeze(1)
            del dxy
        if dw is not None:
            g = dzt.t() @ _outer(xt, yt)  # [K, I * J]
            if r.start == 0:
                dw[ci].copy_(g)
            else:
                dw[ci] += g
    return (None if dx is None else dx.to(x.dtype), None if dy is None else dy.to(y.dtype),
            None if dw is None else dw.view(w.shape))


def _core_backward_by_output(x: Tensor, y: Tensor, w: Tensor, dz: Tensor, need: tuple[bool, bool, bool]):
    """The backward of :class:`_BilinearCore` by output feature, three GEMMs per chunk and
    feature ``k`` with no outer products: ``dw[k] = (x · dz[:, k])ᵀ y``, ``dx += dz[:, k] · (y
    @ w[k]ᵀ)``, ``dy += dz[:, k] · (x @ w[k])``. GEMMs in the compute dtype ``dz.dtype``; ``dx``,
    ``dy`` accumulate over features in float32 where that dtype has 16 bits. Forward + backward
    of Tucker's core at 4,608 rows, 2 CPU threads: 2.59 s against 3.06 with the tiled outer
    products, whose tiles and their gradient go through memory (benchmarks/bilinear_core.py,
    session 15)."""
    cd = dz.dtype
    acc = torch.float32 if cd.itemsize < 4 else cd
    c, n, i = x.shape
    j = y.shape[-1]
    dx = torch.zeros(x.shape, dtype=acc, device=x.device) if need[0] else None
    dy = torch.zeros(y.shape, dtype=acc, device=y.device) if need[1] else None
    dw = torch.empty(w.shape, dtype=w.dtype, device=w.device) if need[2] else None
    t_x = torch.empty(n, i, dtype=cd, device=x.device)  # buffers written in place (see _bilinear_core_by_output)
    t_y = torch.empty(n, j, dtype=cd, device=x.device)
    g = torch.empty(i, j, dtype=cd, device=x.device) if need[2] and w.dtype != cd else None
    for ci in range(c):
        xc, yc, wc, dzc = x[ci].to(cd), y[ci].to(cd), w[ci].to(cd), dz[ci]
        for k in range(w.shape[1]):
            d = dzc[:, k : k + 1]
            if dw is not None:
                torch.mul(xc, d, out=t_x)
                torch.mm(t_x.t(), yc, out=dw[ci, k] if g is None else g)
                if g is not None:
                    dw[ci, k].copy_(g)
            if dx is not None:
                dx[ci].addcmul_(torch.mm(yc, wc[k].t(), out=t_x), d)
            if dy is not None:
                dy[ci].addcmul_(torch.mm(xc, wc[k], out=t_y), d)
    return (None if dx is None else dx.to(x.dtype), None if dy is None else dy.to(y.dtype), dw)


class _PadsGemms:
    """Fusions whose GEMM widths are padded on the fly to multiples of ``gemm_alignment`` for
    16-bit GEMMs on CUDA (:func:`_gemm_pads`); ``force_padding`` pads everywhere (tests, on a CPU)."""

    gemm_alignment: int = 8
    force_padding: bool = False


def _old_core_layout(renames: dict[str, str], permutation: tuple[int, ...]):
    """A load-state-dict pre-hook converting the earlier core layout: each tensor stored under an
    old name of ``renames`` is permuted by ``permutation`` and stored under its new name (the old
    names are what tell the layouts apart: a square core has the same shape in both)."""

    def hook(state_dict, prefix, *args) -> None:
        for old, new in renames.items():
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old).permute(*permutation).contiguous()

    return hook


@register_fusion(
    "tucker",
    kind="vector",
    modalities="2",
    paper="Ben-younes et al., ICCV 2017 (Tucker fusion, MUTAN paper)",
    tiny={"hidden_dim": 4},
)
class Tucker(_PadsGemms, VectorFusion):
    """Tucker fusion with a full core: ``z = W_o((T_c ×1 x̃ ×2 ỹ) + b_c) + b_o``.

    ``x̃ = σ(W_x x)``, ``ỹ = σ(W_y y)`` (σ = tanh in the paper; block.bootstrap: none), then
    ``t_k = sum_ij core_weight[k, i, j] x̃_i ỹ_j + b_c[k]``. The core is stored as
    ``Tensor[hidden_dim, t_x, t_y]`` (``nn.Bilinear``'s layout), so that ``t`` is one GEMM
    ``[N, t_x · t_y] x [t_x · t_y, hidden_dim]`` over the rows' outer products ``x̃ ⊗ ỹ``
    (:func:`bilinear_core`). A state dict of the earlier layout (key ``core``,
    ``Tensor[t_x, hidden_dim, t_y]``) is converted on load.

    Memory: the outer products, ``N · t_x · t_y`` floats, kept for backward up to
    :data:`_CORE_TILE` of them; past that they are never kept whole: formed in tiles, or on a
    CPU from :data:`_BY_OUTPUT_ROWS` rows not formed at all (:func:`bilinear_core`).

    Args:
        in_dims: ``(Dx, Dy)``; out_dim; hidden_dim: t_o (the core's output width);
        projected_dims: ``(t_x, t_y)`` (default ``hidden_dim`` each); activation: σ;
        normalize, dropout_input, dropout_projected, dropout_pre_lin, dropout_output,
        output_activation: as in the family.

    Parameters: ``(Dx + 1) t_x + (Dy + 1) t_y + t_x · t_o · t_y + t_o + (t_o + 1) · out_dim``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dim: int = 360,
        projected_dims: Sequence[int] | None = None,
        activation: ActivationArg = "tanh",
        output_activation: ActivationArg = None,
        normalize: bool = False,
        dropout_input: float = 0.0,
        dropout_projected: float = 0.0,
        dropout_pre_lin: float = 0.0,
        dropout_output: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_dims, out_dim, dropout_input=dropout_input, dropout_projected=dropout_projected,
            dropout_pre_lin=dropout_pre_lin, dropout_output=dropout_output,
        )
        name = self.fusion_name
        check_positive(name, hidden_dim=hidden_dim)
        self.hidden_dim, self.normalize = hidden_dim, bool(normalize)
        self.projected_dims = _projected_dims(name, projected_dims, hidden_dim, 2)
        tx, ty = self.projected_dims
        kw = dict(owner=name, device=device, dtype=dtype)
        self.inputs = InputProjections(self.in_dims, self.projected_dims, activation, dropout_input, dropout_projected, **kw)
        fk = dict(device=device, dtype=dtype)
        self.core_weight = nn.Parameter(uniform_(torch.empty(hidden_dim, tx, ty, **fk), tx))
        self.core_bias = nn.Parameter(uniform_(torch.empty(hidden_dim, **fk), tx))
        self.head = FusionHead(hidden_dim, out_dim, output_activation, dropout_pre_lin, dropout_output, **kw)
        self._register_load_state_dict_pre_hook(_old_core_layout({"core": "core_weight"}, (1, 0, 2)))

    def _pads(self, x: Tensor) -> tuple[int, int, int]:
        """Zero features added to t_x, t_o, t_y for this call: multiples of ``gemm_alignment`` for
        16-bit GEMMs on CUDA, else none.

        Rows of an odd width (block.bootstrap's VQA Tucker has 235) are not 16-byte aligned in
        bf16, and cuBLAS then falls back to slow unaligned kernels: on an H200 they took 2.5 of the
        2.8 ms of a bf16 step at batch 2048, and padding cut the step to 1.3 ms (CUDA graph;
        docs/BENCHMARKS.md, session 12). In float32 at batch 128, where the step is launch-bound,
        the pads' extra kernels made it slower (2.6 against 1.8 ms), hence 16-bit only. The
        weights are padded on the fly with zeros (the core in all three modes, the projections'
        rows, the head's columns), so the padded features meet zero weights and the result is the
        same; the pads' backward drops the padding's gradients.
        """
        (tx, ty), h = self.projected_dims, self.hidden_dim
        return _gemm_pads(self, x, (tx, h, ty))

    def fuse(self, x: Tensor, y: Tensor) -> Tensor:
        px, ph, py = self._pads(x)
        xt, yt = self.inputs((x, y), pad=(px, py))
        core, bias = self.core_weight, self.core_bias
        if px or ph or py:
            core, bias = F.pad(core, (0, py, 0, px, 0, ph)), F.pad(bias, (0, ph))
        lead = torch.broadcast_shapes(xt.shape[:-1], yt.shape[:-1])
        xs = xt.expand(*lead, xt.shape[-1]).reshape(1, -1, xt.shape[-1])  # [1, N, t_x]
        ys = yt.expand(*lead, yt.shape[-1]).reshape(1, -1, yt.shape[-1])
        z = bilinear_core(xs, ys, core.unsqueeze(0)).view(*lead, core.shape[0]) + bias  # [N, H]
        if self.normalize:
            z = power_normalize(z)  # padded features are 0: the norm is unchanged
        return self.head(z, pad_in=ph)

    def expected_num_parameters(self) -> int:
        tx, ty = self.projected_dims
        h = self.hidden_dim
        return self.inputs.num_parameters() + tx * h * ty + h + self.head.num_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, projected_dims={self.projected_dims}"


def _capturing(x: Tensor) -> bool:
    """Whether ``x``'s CUDA stream is being captured into a graph (a seed drawn on the host would be
    frozen into it). False while torch.compile traces: the query is not traceable (Dynamo stops a
    fullgraph compile on it, seen on an H200 with torch 2.11), and a compiled graph draws the seed
    as one of its own ops."""
    if not x.is_cuda or _compiling():
        return False
    return torch.cuda.is_current_stream_capturing()


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)  # torch.compiler.is_compiling: torch >= 2.3
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def _gemm_pads(module: nn.Module, x: Tensor, widths: Sequence[int]) -> tuple[int, ...]:
    """Zero features to add to each of ``widths`` for this call: up to multiples of
    ``module.gemm_alignment`` where ``x``'s GEMMs run in 16 bits on CUDA (or ``module.force_padding``
    is set), else none. A 16-bit row of a width that is not a multiple of 8 is not 16-byte aligned,
    and cuBLAS then takes its slow unaligned kernels (see :meth:`Tucker._pads`)."""
    if not (module.force_padding or (x.is_cuda and _half_compute(x))):
        return (0,) * len(widths)
    a = module.gemm_alignment
    return tuple(-w % a for w in widths)


def _half_compute(x: Tensor) -> bool:
    """Whether ``x``'s GEMMs run in 16 bits: a half dtype, or autocast on for its device."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return True
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4: no device argument (CUDA autocast)
        return x.device.type == "cuda" and torch.is_autocast_enabled()


@register_fusion(
    "mutan",
    kind="vector",
    modalities="2+",
    paper="Ben-younes et al., ICCV 2017 (MUTAN: Multimodal Tucker fusion)",
    tiny={"hidden_dim": 4, "rank": 3},
)
class Mutan(_PadsGemms, VectorFusion):
    """MUTAN: a Tucker fusion whose core has rank ``R``: ``z = W_o(sum_r (W_x^r x̃) ⊙ (W_y^r ỹ)) + b_o``.

    ``x̃ = tanh(W_x drop(x))``, ``ỹ = tanh(W_y drop(y))`` (widths ``projected_dims``, default
    ``hidden_dim``), the rank terms are biased Linears ``t_m -> hidden_dim`` with no activation,
    summed over ``r``, then dropout and ``W_o``. M modalities multiply all their rank terms. The
    ``R`` rank terms of one modality run as one GEMM ``t_m -> R · hidden_dim`` (rank-major, as
    block.bootstrap lays them out). With ``R = 1`` and identity maps this is MLB.

    Paper defaults without attention: t_x = t_y = t_o = 360, R = 10, dropout 0.5 (with
    attention: t_v 620, t_q 310, t_o 510, R 5). block.bootstrap's ``Mutan``:
    ``activation=None`` (no tanh), ``hidden_dim=1600, rank=15``, its ``dropout_input`` as
    ``dropout_projected``.

    For 16-bit GEMMs on CUDA the ``t_m`` and ``hidden_dim`` are padded on the fly to multiples of
    ``gemm_alignment`` (8) with zero weights, as in :class:`Tucker` (block.bootstrap's VQA MUTAN
    has widths of 700, whose bf16 rows are not 16-byte aligned); the values are unchanged.

    Parameters: ``sum_m [(D_m + 1) t_m + (t_m + 1) R · hidden_dim] + (hidden_dim + 1) · out_dim``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dim: int = 360,
        rank: int = 10,
        projected_dims: Sequence[int] | None = None,
        activation: ActivationArg = "tanh",
        output_activation: ActivationArg = None,
        normalize: bool = False,
        dropout_input: float = 0.5,
        dropout_projected: float = 0.0,
        dropout_pre_lin: float = 0.5,
        dropout_output: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_dims, out_dim, dropout_input=dropout_input, dropout_projected=dropout_projected,
            dropout_pre_lin=dropout_pre_lin, dropout_output=dropout_output,
        )
        name = self.fusion_name
        check_positive(name, hidden_dim=hidden_dim, rank=rank)
        self.hidden_dim, self.rank, self.normalize = hidden_dim, rank, bool(normalize)
        self.projected_dims = _projected_dims(name, projected_dims, hidden_dim, len(self.in_dims))
        kw = dict(owner=name, device=device, dtype=dtype)
        self.inputs = InputProjections(self.in_dims, self.projected_dims, activation, dropout_input, dropout_projected, **kw)
        self.rank_terms = nn.ModuleList(
            nn.Linear(t, rank * hidden_dim, device=device, dtype=dtype) for t in self.projected_dims
        )
        self.head = FusionHead(hidden_dim, out_dim, output_activation, dropout_pre_lin, dropout_output, **kw)

    def fuse(self, *xs: Tensor) -> Tensor:
        *pt, ph = _gemm_pads(self, xs[0], (*self.projected_dims, self.hidden_dim))
        r, h = self.rank, self.hidden_dim + ph
        m = None
        for lin, x, p in zip(self.rank_terms, self.inputs(xs, pad=pt), pt):
            if p or ph:  # zero weights for the padded inputs (columns) and outputs (rows of each rank)
                w = F.pad(lin.weight.unflatten(0, (r, self.hidden_dim)), (0, p, 0, ph)).flatten(0, 1)
                t = F.linear(x, w, F.pad(lin.bias.unflatten(0, (r, self.hidden_dim)), (0, ph)).flatten())
            else:
                t = lin(x)  # [N, R*H]
            m = t if m is None else m * t
        z = m.unflatten(-1, (r, h)).sum(-2)  # [N, H]; padded features are 0
        if self.normalize:
            z = power_normalize(z)
        return self.head(z, pad_in=ph)

    def expected_num_parameters(self) -> int:
        rh = self.rank * self.hidden_dim
        return self.inputs.num_parameters() + sum((t + 1) * rh for t in self.projected_dims) + self.head.num_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, rank={self.rank}"


def chunk_sizes(dim: int, chunks: int) -> list[int]:
    """Split ``dim`` features into ``chunks`` consecutive chunks, as block.bootstrap does.

    Every chunk has ``ceil(dim / chunks)`` features but the last, which takes the rest (1600
    into 18: 17 x 89 + 87); where that leaves the last chunk empty or negative, the sizes are
    spread evenly instead (differing by at most one), never producing an empty chunk.
    """
    if chunks > dim:
        raise ValueError(f"chunks ({chunks}) must not exceed hidden_dim ({dim})")
    size = -(-dim // chunks)
    last = dim - size * (chunks - 1)
    if last > 0:
        return [size] * (chunks - 1) + [last]
    base, extra = divmod(dim, chunks)
    return [base + 1] * extra + [base] * (chunks - extra)


def _size_groups(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Runs of equal consecutive chunk sizes: ``[(count, size), ...]``."""
    groups: list[tuple[int, int]] = []
    for s in sizes:
        if groups and groups[-1][1] == s:
            groups[-1] = (groups[-1][0] + 1, s)
        else:
            groups.append((1, s))
    return groups


class ChunkLinear(nn.Module):
    """``C`` independent Linears ``s_in -> s_out`` applied to ``C`` chunks at once (one bmm).

    ``weight`` is ``Tensor[C, s_in, s_out]``, ``bias`` ``Tensor[C, s_out]``; initialised like
    ``nn.Linear``. Chunk-major layout in and out: Tensor[C, ..., s_in] -> Tensor[C, ..., s_out],
    so that the wide ``R · s`` outputs are written once, contiguous, and never transposed.
    """

    def __init__(self, chunks: int, s_in: int, s_out: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(uniform_(torch.empty(chunks, s_in, s_out, **kw), s_in))
        self.bias = nn.Parameter(uniform_(torch.empty(chunks, s_out, **kw), s_in))

    def forward(self, x: Tensor) -> Tensor:
        return chunk_linear(x, self.weight, self.bias)


def chunk_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """:class:`ChunkLinear` with these weights: ``Tensor[C, ..., s_in] -> Tensor[C, ..., s_out]``
    (one bmm; ``weight`` ``Tensor[C, s_in, s_out]``, ``bias`` ``Tensor[C, s_out]``)."""
    c, lead = x.shape[0], x.shape[1:-1]
    out = torch.baddbmm(bias.unsqueeze(1), x.reshape(c, -1, x.shape[-1]), weight)  # [C, N, s_out]
    return out.view(c, *lead, out.shape[-1])


class _ChunkedFusion(_PadsGemms, VectorFusion):
    """Shared body of BLOCK and BLOCK-Tucker: projections to ``hidden_dim``, chunks, a per-chunk
    interaction (``_chunk_interaction``), signed sqrt + L2 per chunk, concatenation, head."""

    def _build(self, hidden_dim, chunks, activation, output_activation, normalize, dropouts, device, dtype):
        name = self.fusion_name
        check_positive(name, hidden_dim=hidden_dim, chunks=chunks)
        if chunks > hidden_dim:
            raise ValueError(f"{name}: chunks ({chunks}) must not exceed hidden_dim ({hidden_dim})")
        self.hidden_dim, self.chunks, self.normalize = hidden_dim, chunks, bool(normalize)
        self.sizes = chunk_sizes(hidden_dim, chunks)
        self.groups = _size_groups(self.sizes)
        d_in, d_proj, d_pre, d_out = dropouts
        kw = dict(owner=name, device=device, dtype=dtype)
        self.inputs = InputProjections(self.in_dims, (hidden_dim,) * len(self.in_dims), activation, d_in, d_proj, **kw)
        self.head = FusionHead(hidden_dim, out_dim=self.out_dim, output_activation=output_activation,
                               dropout_pre_lin=d_pre, dropout_output=d_out, **kw)

    def fuse(self, *xs: Tensor) -> Tensor:
        hs = self.inputs(xs)
        nd = max(h.dim() for h in hs)
        hs = [h.view((1,) * (nd - h.dim()) + tuple(h.shape)) for h in hs]  # same rank: chunk-major broadcasts
        zs, start = [], 0
        for g, (count, size) in enumerate(self.groups):
            # chunk-major views [C_g, N, s]: the per-chunk products stay contiguous
            parts = [h[..., start : start + count * size].unflatten(-1, (count, size)).movedim(-2, 0) for h in hs]
            z = self._chunk_interaction(g, parts)  # [C_g, N, s]
            if self.normalize:
                z = power_normalize(z)  # per chunk: over its s features
            zs.append(z.movedim(0, -2).flatten(-2))  # [N, C_g * s]
            start += count * size
        return self.head(torch.cat(zs, dim=-1) if len(zs) > 1 else zs[0])

    def _chunk_interaction(self, group: int, parts: list[Tensor]) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, chunks={self.chunks}"


@register_fusion(
    "block",
    kind="vector",
    modalities="2+",
    paper="Ben-younes et al., AAAI 2019 (BLOCK: block-superdiagonal fusion)",
    tiny={"hidden_dim": 10, "chunks": 3, "rank": 2},
)
class Block(_ChunkedFusion):
    """BLOCK: a block-superdiagonal Tucker core, each block a rank-``R`` MUTAN.

    ``x̃ = W_x x``, ``ỹ = W_y y`` (Linears to ``hidden_dim``, no activation), split into ``C``
    chunks (:func:`chunk_sizes`); per chunk ``z_c = sum_r (M_c^r x̃_c) ⊙ (N_c^r ỹ_c)`` with biased
    Linears ``s_c -> s_c``; signed sqrt + L2 per chunk; ``z = W_o [z_1; ..; z_C] + b_o``. M
    modalities multiply all their chunk terms. Chunks of equal size run as one batched matmul
    per modality (at most two sizes), the ``R`` terms of a chunk as one ``s_c -> R · s_c`` map
    (rank-major, as block.bootstrap). Paper VQA defaults: ``hidden_dim=1600, chunks=18,
    rank=15``, dropout 0.1 on the projections. For 16-bit GEMMs on CUDA each chunk is padded on
    the fly to a multiple of ``gemm_alignment`` (8) with zero features and weights (chunks of 89
    make unaligned bf16 rows, see :class:`Tucker`); the values are unchanged.

    Parameters: ``sum_m [(D_m + 1) H + sum_c (s_c + 1) R s_c] + (H + 1) · out_dim``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dim: int = 1600,
        chunks: int = 18,
        rank: int = 15,
        activation: ActivationArg = None,
        output_activation: ActivationArg = None,
        normalize: bool = True,
        dropout_input: float = 0.0,
        dropout_projected: float = 0.1,
        dropout_pre_lin: float = 0.0,
        dropout_output: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_dims, out_dim, dropout_input=dropout_input, dropout_projected=dropout_projected,
            dropout_pre_lin=dropout_pre_lin, dropout_output=dropout_output,
        )
        check_positive(self.fusion_name, rank=rank)
        self.rank = rank
        dropouts = (dropout_input, dropout_projected, dropout_pre_lin, dropout_output)
        self._build(hidden_dim, chunks, activation, output_activation, normalize, dropouts, device, dtype)
        # merge[g][m]: the rank terms of modality m for the chunks of size group g
        self.merge = nn.ModuleList(
            nn.ModuleList(ChunkLinear(count, size, rank * size, device, dtype) for _ in self.in_dims)
            for count, size in self.groups
        )

    def _chunk_interaction(self, group: int, parts: list[Tensor]) -> Tensor:
        r, size = self.rank, parts[0].shape[-1]
        weights = [(lin.weight, lin.bias) for lin in self.merge[group]]
        (pad,) = _gemm_pads(self, parts[0], (size,))
        if pad:
            # chunks of 89 (block.bootstrap's 1600 / 18) make unaligned bf16 rows on both sides of
            # the bmm: each chunk's inputs, and each of its R outputs, get zero features and weights
            parts = [F.pad(p, (0, pad)) for p in parts]
            weights = [(F.pad(w.unflatten(-1, (r, size)), (0, pad, 0, 0, 0, pad)).flatten(-2),
                        F.pad(b.unflatten(-1, (r, size)), (0, pad)).flatten(-2)) for w, b in weights]
        if all(p.shape == parts[0].shape for p in parts):
            # one autograd node over row tiles: the rank product and its gradients are never
            # materialised whole (peak memory at 3-D: docs/BENCHMARKS.md)
            args = [a for (w, b), p in zip(weights, parts) for a in (p, w, b)]
            if torch.is_grad_enabled() and any(a.requires_grad for a in args):
                z = _RankProductSum.apply(r, *args)
            else:
                z = _rank_product_sum(r, *args)[0]  # inference: nothing kept for backward
        else:
            m = None  # broadcasting leading dims: plain autograd
            for (w, b), p in zip(weights, parts):
                t = chunk_linear(p, w, b)  # [C_g, N, R*s]
                m = t if m is None else m * t
            z = m.unflatten(-1, (r, m.shape[-1] // r)).sum(-2)  # [C_g, N, s]
        return z[..., :size] if pad else z

    def expected_num_parameters(self) -> int:
        r, m = self.rank, len(self.in_dims)
        chunk = sum((s + 1) * r * s for s in self.sizes)
        return self.inputs.num_parameters() + m * chunk + self.head.num_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


# elements of one row tile of the rank terms in :class:`_RankProductSum` (32 MB in float32): the
# product and the gradients of a tile are formed while its terms are still in cache. Measured at
# BLOCK's VQA sizes on [128, 36, D] rows (2 CPU threads, f+b): 2.6 s at 2^23 against 3.0-3.3 s
# at 2^20-2^21 and untiled; [128, D] rows fit one tile.
_TILE_ELEMENTS = 1 << 23
# on a GPU the tiles only bound memory (256 MB of bf16 terms per modality): smaller ones multiply
# the kernel launches, and BLOCK at batch 2048 is launch-bound (H200, bf16 f+b: 8.4 ms eager and
# 3.5 ms as a CUDA graph with 6 tiles of 369 rows, 5.9-6.3 and 2.6 ms in one tile; session 12)
_TILE_ELEMENTS_CUDA = 1 << 27


def _rank_product_sum(rank: int, *args: Tensor, keep: bool = False) -> tuple[Tensor, int, list[Tensor]]:
    """The forward of :class:`_RankProductSum`: ``(z, rows per tile, the tiles' rank terms)``,
    the terms kept only with ``keep`` (without, each tile's are freed before the next)."""
    ps, ws, bs = args[0::3], args[1::3], args[2::3]
    c, lead, s_out = ps[0].shape[0], ps[0].shape[1:-1], ws[0].shape[-1]
    p2 = [p.reshape(c, -1, p.shape[-1]) for p in ps]  # [C, N, s_in]
    n = p2[0].shape[1]
    tile = _TILE_ELEMENTS_CUDA if p2[0].is_cuda else _TILE_ELEMENTS
    step = max(1, tile // max(1, c * s_out))
    zs, tiles = [], []
    for a in range(0, max(n, 1), step):  # an empty batch: one empty tile
        ts = [torch.baddbmm(b.unsqueeze(1), p[:, a : a + step], w) for p, w, b in zip(p2, ws, bs)]
        prod = ts[0]
        for t in ts[1:]:
            prod = prod * t
        zs.append(prod.view(c, -1, rank, s_out // rank).sum(2))  # [C, n, s]
        if keep:
            tiles += ts
    z = zs[0] if len(zs) == 1 else torch.cat(zs, dim=1)
    return z.view(c, *lead, s_out // rank), step, tiles


class _RankProductSum(torch.autograd.Function):
    """``z_c = sum_r prod_m (p_m W_m + b_m)_{c, r}`` for chunk-major parts of one shape.

    Inputs ``rank`` then ``(p_m, W_m, b_m)`` per modality: ``p_m`` Tensor[C, ..., s_in],
    ``W_m`` Tensor[C, s_in, R · s], ``b_m`` Tensor[C, R · s] (a :class:`ChunkLinear`); output
    Tensor[C, ..., s]. The rows are processed in tiles of about :data:`_TILE_ELEMENTS` rank-term
    elements: forward saves the rank terms ``t_m`` of every tile (the product's gradient needs
    them) but never holds the whole product; backward forms ``g_m = dz ⊙ prod_{j != m} t_j`` one
    tile at a time and accumulates the weight gradients with ``baddbmm``. Peak memory is the
    saved terms plus one tile, where plain autograd holds the terms, the product, its
    materialised gradient and both terms' gradients (at BLOCK's VQA sizes on [128, 36, D] rows:
    1.55-1.59 GB peak against 2.6 GB with plain autograd and 1.34-1.37 GB for block.bootstrap's
    per-chunk loop, docs/BENCHMARKS.md). Backward computes in the terms' dtype (the autocast dtype
    of the forward GEMMs) and returns each gradient in its input's dtype.
    """

    @staticmethod
    def forward(ctx, rank: int, *args: Tensor) -> Tensor:
        z, step, tiles = _rank_product_sum(rank, *args, keep=True)
        ctx.rank, ctx.step, ctx.m = rank, step, len(args) // 3
        ctx.save_for_backward(*args[0::3], *args[1::3], *tiles)
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        m, rank, step = ctx.m, ctx.rank, ctx.step
        saved = ctx.saved_tensors
        ps, ws, tiles = saved[:m], saved[m : 2 * m], saved[2 * m :]
        c, rs = ws[0].shape[0], ws[0].shape[-1]
        cd = tiles[0].dtype
        p2 = [p.reshape(c, -1, p.shape[-1]) for p in ps]
        n = p2[0].shape[1]
        g3 = grad.reshape(c, n, rs // rank).to(cd)
        need = [ctx.needs_input_grad[1 + 3 * i : 4 + 3 * i] for i in range(m)]
        wt = [w.to(cd).transpose(1, 2) for w in ws]
        tiled = n > step
        dps = [torch.empty(p.shape, dtype=cd, device=p.device) if nd[0] and tiled else None for p, nd in zip(p2, need)]
        # weight and bias gradients: the first tile's, then the others accumulated in the parameters' dtype
        dws: list[Tensor | None] = [None] * m
        dbs: list[Tensor | None] = [None] * m
        for k, a in enumerate(range(0, max(n, 1), step)):
            ts = tiles[k * m : (k + 1) * m]
            g4 = g3[:, a : a + step].unsqueeze(2)  # dz broadcast over the rank terms: [C, n, 1, s]
            for i in range(m):
                if not any(need[i]):
                    continue
                others = None
                for j in range(m):
                    if j != i:
                        others = ts[j] if others is None else others * ts[j]
                g = (others.view(c, -1, rank, rs // rank) * g4).view(c, -1, rs)  # [C, n, R*s]
                if need[i][0] and tiled:
                    dps[i][:, a : a + step] = torch.bmm(g, wt[i])
                elif need[i][0]:
                    dps[i] = torch.bmm(g, wt[i])
                if need[i][1]:
                    pt = p2[i][:, a : a + step].to(cd).transpose(1, 2)
                    if dws[i] is None:
                        dws[i] = torch.bmm(pt, g).to(ws[i].dtype)
                    elif dws[i].dtype == cd:
                        dws[i].baddbmm_(pt, g)
                    else:
                        dws[i] += torch.bmm(pt, g)
                if need[i][2]:
                    db = g.sum(1)
                    dbs[i] = db.to(ws[i].dtype) if dbs[i] is None else dbs[i].add_(db)
        out: list[Tensor | None] = [None]
        for i in range(m):
            out += [
                dps[i].view(ps[i].shape).to(ps[i].dtype) if dps[i] is not None else None,
                dws[i],
                dbs[i],
            ]
        return tuple(out)


@register_fusion(
    "block_tucker",
    kind="vector",
    modalities="2",
    paper="Ben-younes et al., AAAI 2019 (BLOCK with full Tucker blocks)",
    tiny={"hidden_dim": 7, "chunks": 2},
)
class BlockTucker(_ChunkedFusion):
    """BLOCK-Tucker: a block-superdiagonal core whose blocks are full bilinear maps.

    As :class:`Block`, but chunk ``c`` fuses with a full core:
    ``z_c[k] = sum_ij core_c[k, i, j] x̃_c[i] ỹ_c[j] + b_c[k]`` (block.bootstrap's
    ``nn.Bilinear(s, s, s)`` per chunk, computed with batched GEMMs instead: :func:`bilinear_core`).
    Chunks of equal size share one ``Tensor[C_g, s, s, s]`` core tensor (``core_weights[g]``,
    indexed ``[chunk, k, i, j]``); a state dict of the earlier ``[chunk, i, k, j]`` layout (key
    ``cores``) is converted on load. Paper VQA defaults: ``hidden_dim=1800, chunks=10``. For
    16-bit GEMMs on CUDA each chunk and its core are padded on the fly to a multiple of
    ``gemm_alignment`` (8) with zeros (chunks of 180 make unaligned bf16 rows, see :class:`Tucker`).

    Memory: the outer products, ``N · sum_c s_c²`` floats, kept for backward up to
    :data:`_CORE_TILE` of them; past that they are never kept whole: formed in tiles, or on a
    CPU from :data:`_BY_OUTPUT_ROWS` rows not formed at all (:func:`bilinear_core`).

    Parameters: ``sum_m (D_m + 1) H + sum_c (s_c³ + s_c) + (H + 1) · out_dim``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dim: int = 1800,
        chunks: int = 10,
        activation: ActivationArg = None,
        output_activation: ActivationArg = None,
        normalize: bool = True,
        dropout_input: float = 0.0,
        dropout_projected: float = 0.1,
        dropout_pre_lin: float = 0.0,
        dropout_output: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_dims, out_dim, dropout_input=dropout_input, dropout_projected=dropout_projected,
            dropout_pre_lin=dropout_pre_lin, dropout_output=dropout_output,
        )
        dropouts = (dropout_input, dropout_projected, dropout_pre_lin, dropout_output)
        self._build(hidden_dim, chunks, activation, output_activation, normalize, dropouts, device, dtype)
        kw = dict(device=device, dtype=dtype)
        # core_weights[g]: Tensor[C_g, s, s, s] indexed [chunk, k (out), i (x), j (y)]
        self.core_weights = nn.ParameterList(
            nn.Parameter(uniform_(torch.empty(count, size, size, size, **kw), size)) for count, size in self.groups
        )
        self.core_biases = nn.ParameterList(
            nn.Parameter(uniform_(torch.empty(count, size, **kw), size)) for count, size in self.groups
        )
        self._register_load_state_dict_pre_hook(
            _old_core_layout({f"cores.{g}": f"core_weights.{g}" for g in range(len(self.groups))}, (0, 2, 1, 3))
        )

    def _chunk_interaction(self, group: int, parts: list[Tensor]) -> Tensor:
        x, y = parts  # [C, N..., s] each
        core, bias = self.core_weights[group], self.core_biases[group]
        c, s = core.shape[0], core.shape[1]
        lead = torch.broadcast_shapes(x.shape[1:-1], y.shape[1:-1])
        xc = x.expand(c, *lead, s).reshape(c, -1, s)  # [C, N, s]
        yc = y.expand(c, *lead, s).reshape(c, -1, s)
        (pad,) = _gemm_pads(self, x, (s,))
        if pad:  # chunks of 180 (block.bootstrap's 1800 / 10): unaligned bf16 rows; zero features and core
            xc, yc = F.pad(xc, (0, pad)), F.pad(yc, (0, pad))
            core, bias = F.pad(core, (0, pad, 0, pad, 0, pad)), F.pad(bias, (0, pad))
        z = bilinear_core(xc, yc, core) + bias.unsqueeze(1)  # [C, N, s]
        if pad:
            z = z[..., :s]
        return z.view(c, *lead, s)

    def expected_num_parameters(self) -> int:
        return self.inputs.num_parameters() + sum(s**3 + s for s in self.sizes) + self.head.num_parameters()

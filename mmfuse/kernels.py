"""Fused GPU kernels (Triton) for the elementwise tails of the bilinear fusions.

:func:`mmfuse.functional.power_normalize` (signed square root, then L2 over the last dim) is the
tail of MCB, MFB, MFH, BLOCK and BLOCK-Tucker. Written with torch ops, its forward is 7 kernels and
its backward about 15, each a full pass over the tensor; on MCB's ``[2048, 16000]`` float32
sketch that is most of the step (docs/BENCHMARKS.md). :class:`PowerNormalize` does it in one
kernel each way, one program per row: the forward reads the row twice (the norm, then the
output) and writes it once; the backward recomputes the output from the input and the saved norm,
so it reads ``x`` and the incoming gradient twice and writes the input's gradient once.

:class:`MFHTail` is the tail of MFB and MFH after the projections: the cascade of expanded
vectors ``e_i = joint_i ⊙ e_{i-1}``, the sum pooling over windows of ``factor`` and the power
normalisation of each block, one kernel each way in place of about 20 (docs/BENCHMARKS.md:
MFH's eager step was bound by launching them).

They are used for CUDA tensors when Triton imports (it ships with PyTorch's CUDA wheels) and
``MMFUSE_TRITON`` is not ``0``; everything else takes the torch-op path, whose values it matches
(tests/test_kernels.py; on a CPU those tests run the kernels in Triton's interpreter,
``TRITON_INTERPRET=1``, where Triton is installed).
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """True where Triton imports and ``MMFUSE_TRITON`` is not ``"0"``."""
    if os.environ.get("MMFUSE_TRITON", "1") == "0":
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # not installed, or broken for this platform
        return False
    return True


def interpreting() -> bool:
    """True when Triton runs its kernels on the CPU (``TRITON_INTERPRET=1``), for tests."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_kernels(x: Tensor) -> bool:
    """Whether the fused kernels run for ``x``: CUDA (or the interpreter), float, Triton present."""
    return (x.is_cuda or interpreting()) and x.is_floating_point() and x.dtype != torch.float64 and triton_available()


@lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def pn_forward(X, Y, NORM, D, stride_x, eps, eps_norm, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row, y_row = X + row * stride_x, Y + row * D
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(x_row + cols, mask=cols < D, other=0.0).to(tl.float32)
            s = x * tl.rsqrt(tl.maximum(tl.abs(x), eps))
            acc += s * s
        norm = tl.sqrt(tl.sum(acc, axis=0))
        tl.store(NORM + row, norm)
        inv = 1.0 / tl.maximum(norm, eps_norm)
        for start in range(0, D, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < D
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            s = x * tl.rsqrt(tl.maximum(tl.abs(x), eps))
            tl.store(y_row + cols, (s * inv).to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def pn_backward(X, G, NORM, DX, D, stride_x, stride_g, eps, eps_norm, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row, g_row, dx_row = X + row * stride_x, G + row * stride_g, DX + row * D
        norm = tl.load(NORM + row)
        inv = 1.0 / tl.maximum(norm, eps_norm)
        # <g, y>, where the norm is above its floor (below it, y = s / eps_norm is linear in s)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < D
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_row + cols, mask=mask, other=0.0).to(tl.float32)
            acc += g * x * tl.rsqrt(tl.maximum(tl.abs(x), eps))
        dot = tl.sum(acc, axis=0) * inv
        dot = tl.where(norm >= eps_norm, dot, 0.0)
        for start in range(0, D, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < D
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_row + cols, mask=mask, other=0.0).to(tl.float32)
            ax = tl.abs(x)
            r = tl.rsqrt(tl.maximum(ax, eps))
            ds = (g - x * r * inv * dot) * inv  # d/ds of s / max(||s||, eps_norm)
            dx = ds * r * tl.where(ax >= eps, 0.5, 1.0)  # d/dx of x * rsqrt(max(|x|, eps))
            tl.store(dx_row + cols, dx.to(DX.dtype.element_ty), mask=mask)

    @triton.jit
    def mfh_forward(J, Y, NORM, H, stride_j, eps, eps_norm, P: tl.constexpr, PP: tl.constexpr,
                    K: tl.constexpr, KP: tl.constexpr, BLOCK_H: tl.constexpr, NORMALIZE: tl.constexpr):
        # one program per row: J[row] holds P blocks of H windows of K features
        row = tl.program_id(0).to(tl.int64)
        j_row, y_row = J + row * stride_j, Y + row * (P * H)
        ps = tl.arange(0, PP)
        ks = tl.arange(0, KP)
        sq = tl.zeros([PP], dtype=tl.float32)
        # pass 1: the pooled blocks (written as they are without the norm, else their squared roots summed)
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            mask = (hs[:, None] < H) & (ks[None, :] < K)
            e = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)
            for i in tl.static_range(P):
                x = tl.load(j_row + i * K * H + hs[:, None] * K + ks[None, :], mask=mask, other=0.0)
                e = e * x.to(tl.float32)
                z = tl.sum(e, axis=1)
                if NORMALIZE:
                    s = z * tl.rsqrt(tl.maximum(tl.abs(z), eps))
                    sq += tl.where(ps == i, tl.sum(s * s, axis=0), 0.0)
                else:
                    tl.store(y_row + i * H + hs, z.to(Y.dtype.element_ty), mask=hs < H)
        if NORMALIZE:
            norm = tl.sqrt(sq)
            tl.store(NORM + row * P + ps, norm, mask=ps < P)
            inv = 1.0 / tl.maximum(norm, eps_norm)
            # pass 2: recompute the blocks (cheaper than a store and a reload across threads)
            for h0 in range(0, H, BLOCK_H):
                hs = h0 + tl.arange(0, BLOCK_H)
                mask = (hs[:, None] < H) & (ks[None, :] < K)
                e = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)
                for i in tl.static_range(P):
                    x = tl.load(j_row + i * K * H + hs[:, None] * K + ks[None, :], mask=mask, other=0.0)
                    e = e * x.to(tl.float32)
                    z = tl.sum(e, axis=1)
                    inv_i = tl.sum(tl.where(ps == i, inv, 0.0), axis=0)
                    y = z * tl.rsqrt(tl.maximum(tl.abs(z), eps)) * inv_i
                    tl.store(y_row + i * H + hs, y.to(Y.dtype.element_ty), mask=hs < H)

    @triton.jit
    def mfh_backward(J, G, NORM, DJ, H, stride_j, stride_g, eps, eps_norm, P: tl.constexpr, PP: tl.constexpr,
                     K: tl.constexpr, KP: tl.constexpr, BLOCK_H: tl.constexpr, NORMALIZE: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        j_row, g_row, dj_row = J + row * stride_j, G + row * stride_g, DJ + row * (P * K * H)
        ps = tl.arange(0, PP)
        ks = tl.arange(0, KP)
        inv = tl.zeros([PP], dtype=tl.float32)
        dot = tl.zeros([PP], dtype=tl.float32)
        if NORMALIZE:
            norm = tl.load(NORM + row * P + ps, mask=ps < P, other=1.0)
            inv = 1.0 / tl.maximum(norm, eps_norm)
            # pass 1: <g_i, y_i> per block, zero where the norm is at its floor (y linear in s there)
            for h0 in range(0, H, BLOCK_H):
                hs = h0 + tl.arange(0, BLOCK_H)
                mask = (hs[:, None] < H) & (ks[None, :] < K)
                e = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)
                for i in tl.static_range(P):
                    x = tl.load(j_row + i * K * H + hs[:, None] * K + ks[None, :], mask=mask, other=0.0)
                    e = e * x.to(tl.float32)
                    g = tl.load(g_row + i * H + hs, mask=hs < H, other=0.0).to(tl.float32)
                    z = tl.sum(e, axis=1)
                    s = z * tl.rsqrt(tl.maximum(tl.abs(z), eps))
                    dot += tl.where(ps == i, tl.sum(g * s, axis=0), 0.0)
            dot = tl.where(norm >= eps_norm, dot * inv, 0.0)
        # pass 2: d joint_i = e_{i-1} * sum_{l >= i} dz_l * prod_{m = i+1..l} joint_m
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            mask = (hs[:, None] < H) & (ks[None, :] < K)
            offs = hs[:, None] * K + ks[None, :]
            for i in tl.static_range(P):
                before = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)  # e_{i-1}
                for m in tl.static_range(i):
                    before = before * tl.load(j_row + m * K * H + offs, mask=mask, other=0.0).to(tl.float32)
                ji = tl.load(j_row + i * K * H + offs, mask=mask, other=0.0).to(tl.float32)
                run = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)  # prod_{m = i+1..l} joint_m
                de = tl.zeros([BLOCK_H, KP], dtype=tl.float32)
                for l in tl.static_range(i, P):
                    if l > i:
                        run = run * tl.load(j_row + l * K * H + offs, mask=mask, other=0.0).to(tl.float32)
                    g = tl.load(g_row + l * H + hs, mask=hs < H, other=0.0).to(tl.float32)
                    if NORMALIZE:
                        z = tl.sum(before * ji * run, axis=1)  # the pooled block l
                        az = tl.abs(z)
                        r = tl.rsqrt(tl.maximum(az, eps))
                        inv_l = tl.sum(tl.where(ps == l, inv, 0.0), axis=0)
                        dot_l = tl.sum(tl.where(ps == l, dot, 0.0), axis=0)
                        ds = (g - z * r * inv_l * dot_l) * inv_l
                        g = ds * r * tl.where(az >= eps, 0.5, 1.0)
                    de += g[:, None] * run
                tl.store(dj_row + i * K * H + offs, (de * before).to(DJ.dtype.element_ty), mask=mask)

    return pn_forward, pn_backward, mfh_forward, mfh_backward


def _block(d: int) -> int:
    """Columns per step of a row's loop: the row in one step up to 4096, else 4096 at a time."""
    b = 16
    while b < d and b < 4096:
        b *= 2
    return b


def _rows(x: Tensor) -> Tensor:
    """``x`` as a 2-D [rows, D] tensor whose rows are contiguous, a view where the strides allow
    (e.g. a column slice of a wider tensor, as the gradient of one part of a ``cat``), else a copy."""
    d = x.shape[-1]
    if x.numel() == 0:
        return x.reshape(0, max(d, 1))
    if x.stride(-1) == 1 or d == 1:  # a view keeps the last stride
        try:
            return x.view(-1, d)
        except RuntimeError:  # leading dims that do not flatten into one stride
            pass
    return x.contiguous().view(-1, d)


class PowerNormalize(torch.autograd.Function):
    """``l2_normalize(signed_sqrt(x, eps), eps_norm)`` over the last dim, one kernel each way.

    Same values and gradients as :func:`mmfuse.functional.power_normalize`'s torch ops, computed
    in float32 and returned in ``x``'s dtype. Saves ``x`` and the per-row norm.
    """

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, eps_norm: float) -> Tensor:
        fwd = _kernels()[0]
        x2 = _rows(x)
        y = torch.empty(x2.shape, device=x.device, dtype=x.dtype)
        norm = torch.empty(x2.shape[0], device=x.device, dtype=torch.float32)
        if x2.shape[0] and x2.shape[1]:
            fwd[(x2.shape[0],)](x2, y, norm, x2.shape[1], x2.stride(0), eps, eps_norm, BLOCK=_block(x2.shape[1]))
        ctx.save_for_backward(x2, norm)
        ctx.eps, ctx.eps_norm, ctx.shape = eps, eps_norm, x.shape
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        bwd = _kernels()[1]
        x2, norm = ctx.saved_tensors
        g2 = _rows(grad)
        dx = torch.empty(x2.shape, device=x2.device, dtype=x2.dtype)
        if x2.shape[0] and x2.shape[1]:
            bwd[(x2.shape[0],)](
                x2, g2, norm, dx, x2.shape[1], x2.stride(0), g2.stride(0), ctx.eps, ctx.eps_norm,
                BLOCK=_block(x2.shape[1]),
            )
        return dx.view(ctx.shape), None, None


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


# elements of one [BLOCK_H, KP] tile in the MFH kernels: the backward holds four such tiles in
# float32 at once. At 1024 with 4 warps it needs 79 registers a thread on sm_90 and spills
# nothing; 4096 spilled (tests/test_kernels_compile.py compiles them without a GPU).
_MFH_TILE = 1024


def mfh_meta(order: int, factor: int, hidden: int, normalize: bool) -> dict:
    """The compile-time arguments of the MFH kernels for these sizes."""
    kp = _pow2(factor)
    return dict(P=order, PP=_pow2(order), K=factor, KP=kp, BLOCK_H=max(1, min(_pow2(hidden), _MFH_TILE // kp)),
                NORMALIZE=bool(normalize))


class MFHTail(torch.autograd.Function):
    """MFB / MFH after the projections: ``joint [..., P·K·H]`` (the modalities' projections
    multiplied, block ``i`` in columns ``[i·K·H, (i+1)·K·H)``) to ``[z_1; ..; z_P]`` with
    ``e_i = joint_i ⊙ e_{i-1}``, ``z_i = SumPool_K(e_i)``, then ``power_normalize`` per block
    when ``normalize``. The same values as those torch ops (no dropout on ``e_i``), computed in
    float32 and returned in ``joint``'s dtype. Saves ``joint`` and the per-block norms; the
    backward recomputes the rest."""

    @staticmethod
    def forward(ctx, joint: Tensor, order: int, factor: int, normalize: bool, eps: float) -> Tensor:
        fwd = _kernels()[2]
        j2 = _rows(joint)
        n, width = j2.shape
        hidden = width // (order * factor)
        y = torch.empty(n, order * hidden, device=joint.device, dtype=joint.dtype)
        norm = torch.empty(n, order, device=joint.device, dtype=torch.float32)
        meta = mfh_meta(order, factor, hidden, normalize)
        if n and hidden:
            fwd[(n,)](j2, y, norm, hidden, j2.stride(0), eps, eps, **meta)
        ctx.save_for_backward(j2, norm)
        ctx.meta, ctx.eps, ctx.shape = meta, eps, joint.shape
        return y.view(*joint.shape[:-1], order * hidden)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        bwd = _kernels()[3]
        j2, norm = ctx.saved_tensors
        g2 = _rows(grad)
        dj = torch.empty(j2.shape, device=j2.device, dtype=j2.dtype)
        n, width = j2.shape
        hidden = width // (ctx.meta["P"] * ctx.meta["K"])
        if n and hidden:
            bwd[(n,)](j2, g2, norm, dj, hidden, j2.stride(0), g2.stride(0), ctx.eps, ctx.eps, **ctx.meta)
        return dj.view(ctx.shape), None, None, None, None

"""The Triton kernels behind :mod:`mmfuse.kernels` (imported only where Triton is).

Module-level ``@triton.jit`` functions, so that the kernels can call the helpers below on every
Triton version (older ones resolve a kernel's names in its module's globals only). All
arithmetic is float32 whatever the storage dtype; one program handles one row.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pn_forward(X, Y, NORM, D, stride_x, eps, eps_norm, BLOCK: tl.constexpr):
    """``Y[row] = ssqrt(X[row]) / max(||ssqrt(X[row])||, eps_norm)``; the norm to ``NORM[row]``."""
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


# ---------------------------------------------------------------------------------------- MFH
# Row layout: P blocks of H windows of K features; element (i, h, k) of a row is column
# i*K*H + h*K + k. A tile is [BLOCK_H, KP] (KP = K rounded up to a power of 2, masked).


@triton.jit
def dropout_keep(seed, offsets, p_drop):
    """The expanded vectors' dropout: element ``offsets`` (its flat index ``row * P*K*H + col``)
    is kept where a Philox uniform of ``(seed, offset)`` is at least ``p_drop``."""
    return tl.rand(seed, offsets) >= p_drop


@triton.jit
def _block_tile(j_row, base, i, offs, mask, H, seed, p_drop, scale, K: tl.constexpr, DROPOUT: tl.constexpr):
    """Block ``i``'s tile of the joint product, its dropped elements zeroed and the kept ones
    scaled by ``1 / (1 - p)`` (under ``DROPOUT``)."""
    x = tl.load(j_row + i * K * H + offs, mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        x = tl.where(dropout_keep(seed, base + i * K * H + offs, p_drop), x * scale, 0.0)
    return x


@triton.jit
def _tile(h0, H, BLOCK_H: tl.constexpr, K: tl.constexpr, KP: tl.constexpr):
    """The rows ``hs`` of one tile, its column offsets and its mask."""
    hs = h0 + tl.arange(0, BLOCK_H)
    ks = tl.arange(0, KP)
    return hs, hs[:, None] * K + ks[None, :], (hs[:, None] < H) & (ks[None, :] < K)


@triton.jit
def _pick(v, ps, i):
    """Entry ``i`` of the per-block vector ``v``."""
    return tl.sum(tl.where(ps == i, v, 0.0), axis=0)


@triton.jit
def _ssqrt(z, eps):
    return z * tl.rsqrt(tl.maximum(tl.abs(z), eps))


@triton.jit(do_not_specialize=["seed"])  # a new seed each step: no recompiles
def mfh_forward(J, Y, NORM, H, stride_j, eps, eps_norm, seed, p_drop, scale, P: tl.constexpr, PP: tl.constexpr,
                K: tl.constexpr, KP: tl.constexpr, BLOCK_H: tl.constexpr, NORMALIZE: tl.constexpr,
                DROPOUT: tl.constexpr):
    """``Y[row] = [z_1; ..; z_P]``: ``e_i = drop(joint_i ⊙ e_{i-1})``, ``z_i = SumPool_K(e_i)``,
    power-normalised per block under ``NORMALIZE`` (the block norms to ``NORM[row]``)."""
    row = tl.program_id(0).to(tl.int64)
    j_row, y_row, base = J + row * stride_j, Y + row * (P * H), row * (P * K * H)
    ps = tl.arange(0, PP)
    sq = tl.zeros([PP], dtype=tl.float32)
    # pass 1: the pooled blocks (stored as they are without the norm; else their roots' squares summed)
    for h0 in range(0, H, BLOCK_H):
        hs, offs, mask = _tile(h0, H, BLOCK_H, K, KP)
        e = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)
        for i in tl.static_range(P):
            e = e * _block_tile(j_row, base, i, offs, mask, H, seed, p_drop, scale, K, DROPOUT)
            z = tl.sum(e, axis=1)
            if NORMALIZE:
                s = _ssqrt(z, eps)
                sq += tl.where(ps == i, tl.sum(s * s, axis=0), 0.0)
            else:
                tl.store(y_row + i * H + hs, z.to(Y.dtype.element_ty), mask=hs < H)
    if NORMALIZE:
        norm = tl.sqrt(sq)
        tl.store(NORM + row * P + ps, norm, mask=ps < P)
        inv = 1.0 / tl.maximum(norm, eps_norm)
        # pass 2: the blocks again (recomputed: cheaper than a store and a reload across threads)
        for h0 in range(0, H, BLOCK_H):
            hs, offs, mask = _tile(h0, H, BLOCK_H, K, KP)
            e = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)
            for i in tl.static_range(P):
                e = e * _block_tile(j_row, base, i, offs, mask, H, seed, p_drop, scale, K, DROPOUT)
                y = _ssqrt(tl.sum(e, axis=1), eps) * _pick(inv, ps, i)
                tl.store(y_row + i * H + hs, y.to(Y.dtype.element_ty), mask=hs < H)


@triton.jit(do_not_specialize=["seed"])  # a new seed each step: no recompiles
def mfh_backward(J, G, NORM, DJ, H, stride_j, stride_g, eps, eps_norm, seed, p_drop, scale, P: tl.constexpr,
                 PP: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, BLOCK_H: tl.constexpr,
                 NORMALIZE: tl.constexpr, DROPOUT: tl.constexpr):
    """``DJ[row]`` from ``G[row]``: ``d joint_i = d_i e_{i-1} sum_{l >= i} dz_l prod_{m=i+1..l} d_m joint_m``
    (``d_m``: block ``m``'s dropout factor, 0 or ``1 / (1 - p)``; ``dz_l``: through the norm)."""
    row = tl.program_id(0).to(tl.int64)
    j_row, g_row, dj_row, base = J + row * stride_j, G + row * stride_g, DJ + row * (P * K * H), row * (P * K * H)
    ps = tl.arange(0, PP)
    inv = tl.zeros([PP], dtype=tl.float32)
    dot = tl.zeros([PP], dtype=tl.float32)
    if NORMALIZE:
        norm = tl.load(NORM + row * P + ps, mask=ps < P, other=1.0)
        inv = 1.0 / tl.maximum(norm, eps_norm)
        # pass 1: <g_i, y_i> per block, zero where the norm is at its floor (y linear in s there)
        for h0 in range(0, H, BLOCK_H):
            hs, offs, mask = _tile(h0, H, BLOCK_H, K, KP)
            e = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)
            for i in tl.static_range(P):
                e = e * _block_tile(j_row, base, i, offs, mask, H, seed, p_drop, scale, K, DROPOUT)
                g = tl.load(g_row + i * H + hs, mask=hs < H, other=0.0).to(tl.float32)
                dot += tl.where(ps == i, tl.sum(g * _ssqrt(tl.sum(e, axis=1), eps), axis=0), 0.0)
        dot = tl.where(norm >= eps_norm, dot * inv, 0.0)
    # pass 2: per block i, e_{i-1} and the sum over the blocks l >= i its joint feeds
    for h0 in range(0, H, BLOCK_H):
        hs, offs, mask = _tile(h0, H, BLOCK_H, K, KP)
        for i in tl.static_range(P):
            before = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)  # e_{i-1}
            for m in tl.static_range(i):
                before = before * _block_tile(j_row, base, m, offs, mask, H, seed, p_drop, scale, K, DROPOUT)
            ji = _block_tile(j_row, base, i, offs, mask, H, seed, p_drop, scale, K, DROPOUT)
            run = tl.full([BLOCK_H, KP], 1.0, dtype=tl.float32)  # prod_{m = i+1..l} d_m joint_m
            de = tl.zeros([BLOCK_H, KP], dtype=tl.float32)
            for l in tl.static_range(i, P):
                if l > i:
                    run = run * _block_tile(j_row, base, l, offs, mask, H, seed, p_drop, scale, K, DROPOUT)
                g = tl.load(g_row + l * H + hs, mask=hs < H, other=0.0).to(tl.float32)
                if NORMALIZE:
                    z = tl.sum(before * ji * run, axis=1)  # the pooled block l
                    az = tl.abs(z)
                    r = tl.rsqrt(tl.maximum(az, eps))
                    inv_l = _pick(inv, ps, l)
                    g = (g - z * r * inv_l * _pick(dot, ps, l)) * inv_l * r * tl.where(az >= eps, 0.5, 1.0)
                de += g[:, None] * run
            dj = de * before
            if DROPOUT:
                dj = tl.where(dropout_keep(seed, base + i * K * H + offs, p_drop), dj * scale, 0.0)
            tl.store(dj_row + i * K * H + offs, dj.to(DJ.dtype.element_ty), mask=mask)

"""Fused GPU kernels (Triton) for the elementwise tails of the bilinear fusions.

:func:`mmfuse.functional.power_normalize` (signed square root, then L2 over the last dim) is the
tail of MCB, MFB, MFH, BLOCK and BLOCK-Tucker. Written with torch ops, its forward is 7 kernels and
its backward about 15, each a full pass over the tensor; on MCB's ``[2048, 16000]`` float32
sketch that is most of the step (docs/BENCHMARKS.md). :class:`PowerNormalize` does it in one
kernel each way, one program per row: the forward reads the row twice (the norm, then the
output) and writes it once; the backward recomputes the output from the input and the saved norm,
so it reads ``x`` and the incoming gradient twice and writes the input's gradient once.

:class:`MFHTail` is the tail of MFB and MFH after the projections: the cascade of expanded
vectors ``e_i = Dropout(joint_i ⊙ e_{i-1})``, the sum pooling over windows of ``factor`` and the
power normalisation of each block, one kernel each way in place of about 20 (docs/BENCHMARKS.md:
MFH's eager step was bound by launching them).

The kernels themselves are in :mod:`mmfuse._triton_kernels`, imported on first use.

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
    """``(pn_forward, pn_backward, mfh_forward, mfh_backward)`` from :mod:`mmfuse._triton_kernels`
    (imported here, on first use: the fusions import this module where Triton is absent)."""
    from . import _triton_kernels as k

    return k.pn_forward, k.pn_backward, k.mfh_forward, k.mfh_backward


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
# float32 at once. At 1024 with 4 warps it needs 80 registers a thread on sm_90 (127 with
# dropout) and spills nothing; 4096 spilled (tests/test_kernels_compile.py compiles them
# without a GPU).
_MFH_TILE = 1024


def mfh_meta(order: int, factor: int, hidden: int, normalize: bool, p_drop: float = 0.0) -> dict:
    """The compile-time arguments of the MFH kernels for these sizes."""
    kp = _pow2(factor)
    return dict(P=order, PP=_pow2(order), K=factor, KP=kp, BLOCK_H=max(1, min(_pow2(hidden), _MFH_TILE // kp)),
                NORMALIZE=bool(normalize), DROPOUT=p_drop > 0)


class MFHTail(torch.autograd.Function):
    """MFB / MFH after the projections: ``joint [..., P·K·H]`` (the modalities' projections
    multiplied, block ``i`` in columns ``[i·K·H, (i+1)·K·H)``) to ``[z_1; ..; z_P]`` with
    ``e_i = Dropout_p(joint_i ⊙ e_{i-1})``, ``z_i = SumPool_K(e_i)``, then ``power_normalize``
    per block when ``normalize``. The same values as those torch ops, computed in float32 and
    returned in ``joint``'s dtype. The dropout masks are Philox draws of ``(seed, element)``
    (:func:`mmfuse._triton_kernels.dropout_keep`), drawn again in the backward rather than
    stored. Saves ``joint`` and the per-block norms; the backward recomputes the rest.

    Inputs ``joint, order, factor, normalize, eps, p_drop, seed``.
    """

    @staticmethod
    def forward(ctx, joint: Tensor, order: int, factor: int, normalize: bool, eps: float, p_drop: float = 0.0,
                seed: int = 0) -> Tensor:
        fwd = _kernels()[2]
        j2 = _rows(joint)
        n, width = j2.shape
        hidden = width // (order * factor)
        y = torch.empty(n, order * hidden, device=joint.device, dtype=joint.dtype)
        norm = torch.empty(n, order, device=joint.device, dtype=torch.float32)
        meta = mfh_meta(order, factor, hidden, normalize, p_drop)
        scale = 1.0 / (1.0 - p_drop) if p_drop < 1.0 else 0.0
        args = (eps, eps, int(seed), float(p_drop), scale)
        if n and hidden:
            fwd[(n,)](j2, y, norm, hidden, j2.stride(0), *args, **meta)
        ctx.save_for_backward(j2, norm)
        ctx.meta, ctx.args, ctx.shape = meta, args, joint.shape
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
            bwd[(n,)](j2, g2, norm, dj, hidden, j2.stride(0), g2.stride(0), *ctx.args, **ctx.meta)
        return dj.view(ctx.shape), None, None, None, None, None, None

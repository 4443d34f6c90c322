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

Both are torch custom ops (``torch.ops.mmfuse.power_normalize``, ``torch.ops.mmfuse.mfh_tail``,
each with its ``_backward`` op), so torch.compile (fullgraph) and torch.export see one opaque
call each way rather than tracing into the Triton launch, which cannot run on their fake
tensors. That needs ``torch.library.custom_op`` (torch >= 2.4); on older torch the torch ops run.
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


# the kernels are torch custom ops (opaque to torch.compile and torch.export, which would otherwise
# trace into the Triton launch), which needs torch.library.custom_op (torch >= 2.4)
_CUSTOM_OPS = hasattr(torch.library, "custom_op")


def _environment() -> tuple[bool, bool]:
    """``(kernels available, interpreting)``; a constant to torch.compile, which would otherwise
    trace into the cached Triton probe (and warn about the cache)."""
    return _CUSTOM_OPS and triton_available(), interpreting()


if hasattr(torch.compiler, "assume_constant_result"):
    _environment = torch.compiler.assume_constant_result(_environment)


def use_kernels(x: Tensor) -> bool:
    """Whether the fused kernels run for ``x``: CUDA (or the interpreter), float, Triton present,
    torch >= 2.4."""
    available, interpret = _environment()
    return available and (x.is_cuda or interpret) and x.is_floating_point() and x.dtype != torch.float64


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


def _pn_forward(x: Tensor, eps: float, eps_norm: float) -> tuple[Tensor, Tensor]:
    x2 = _rows(x)
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    norm = torch.empty(x2.shape[0], device=x.device, dtype=torch.float32)
    if x2.shape[0] and x2.shape[1]:
        _kernels()[0][(x2.shape[0],)](x2, y.view(x2.shape), norm, x2.shape[1], x2.stride(0), eps, eps_norm,
                                      BLOCK=_block(x2.shape[1]))
    return y, norm


def _pn_backward(x: Tensor, grad: Tensor, norm: Tensor, eps: float, eps_norm: float) -> Tensor:
    x2, g2 = _rows(x), _rows(grad)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if x2.shape[0] and x2.shape[1]:
        _kernels()[1][(x2.shape[0],)](x2, g2, norm, dx.view(x2.shape), x2.shape[1], x2.stride(0), g2.stride(0), eps,
                                      eps_norm, BLOCK=_block(x2.shape[1]))
    return dx


def _pn_fake(x: Tensor, eps: float, eps_norm: float) -> tuple[Tensor, Tensor]:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(rows, dtype=torch.float32)


def _pn_backward_fake(x: Tensor, grad: Tensor, norm: Tensor, eps: float, eps_norm: float) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _pn_setup(ctx, inputs, output) -> None:
    x, eps, eps_norm = inputs
    ctx.save_for_backward(x, output[1])
    ctx.eps, ctx.eps_norm = eps, eps_norm


def _pn_autograd(ctx, grad: Tensor, _grad_norm):
    x, norm = ctx.saved_tensors
    return torch.ops.mmfuse.power_normalize_backward(x, grad, norm, ctx.eps, ctx.eps_norm), None, None


class PowerNormalize:
    """``l2_normalize(signed_sqrt(x, eps), eps_norm)`` over the last dim, one kernel each way:
    the custom op ``torch.ops.mmfuse.power_normalize`` (its backward is
    ``mmfuse.power_normalize_backward``).

    Same values and gradients as :func:`mmfuse.functional.power_normalize`'s torch ops, computed
    in float32 and returned in ``x``'s dtype. Saves ``x`` and the per-row norm.
    """

    @staticmethod
    def apply(x: Tensor, eps: float, eps_norm: float) -> Tensor:
        return torch.ops.mmfuse.power_normalize(x, eps, eps_norm)[0]


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


def _mfh_sizes(joint: Tensor, order: int, factor: int) -> tuple[int, int]:
    rows = joint.numel() // joint.shape[-1] if joint.shape[-1] else 0
    return rows, joint.shape[-1] // (order * factor)


def _mfh_args(eps: float, p_drop: float, seed: Tensor) -> tuple:
    scale = 1.0 / (1.0 - p_drop) if p_drop < 1.0 else 0.0
    return eps, eps, int(seed), float(p_drop), scale


def _mfh_forward(joint: Tensor, order: int, factor: int, normalize: bool, eps: float, p_drop: float,
                 seed: Tensor) -> tuple[Tensor, Tensor]:
    j2 = _rows(joint)
    rows, hidden = _mfh_sizes(joint, order, factor)
    y = torch.empty(*joint.shape[:-1], order * hidden, device=joint.device, dtype=joint.dtype)
    norm = torch.empty(rows, order, device=joint.device, dtype=torch.float32)
    if rows and hidden:
        _kernels()[2][(rows,)](j2, y.view(rows, -1), norm, hidden, j2.stride(0), *_mfh_args(eps, p_drop, seed),
                               **mfh_meta(order, factor, hidden, normalize, p_drop))
    return y, norm


def _mfh_backward(joint: Tensor, grad: Tensor, norm: Tensor, order: int, factor: int, normalize: bool, eps: float,
                  p_drop: float, seed: Tensor) -> Tensor:
    j2, g2 = _rows(joint), _rows(grad)
    rows, hidden = _mfh_sizes(joint, order, factor)
    dj = torch.empty(joint.shape, device=joint.device, dtype=joint.dtype)
    if rows and hidden:
        _kernels()[3][(rows,)](j2, g2, norm, dj.view(rows, -1), hidden, j2.stride(0), g2.stride(0),
                               *_mfh_args(eps, p_drop, seed), **mfh_meta(order, factor, hidden, normalize, p_drop))
    return dj


def _mfh_fake(joint: Tensor, order: int, factor: int, normalize: bool, eps: float, p_drop: float,
              seed: Tensor) -> tuple[Tensor, Tensor]:
    rows, hidden = _mfh_sizes(joint, order, factor)
    return joint.new_empty(*joint.shape[:-1], order * hidden), joint.new_empty(rows, order, dtype=torch.float32)


def _mfh_backward_fake(joint: Tensor, grad: Tensor, norm: Tensor, order: int, factor: int, normalize: bool,
                       eps: float, p_drop: float, seed: Tensor) -> Tensor:
    return torch.empty_like(joint, memory_format=torch.contiguous_format)


def _mfh_setup(ctx, inputs, output) -> None:
    joint, *rest = inputs
    ctx.save_for_backward(joint, output[1], rest[-1])
    ctx.rest = rest[:-1]


def _mfh_autograd(ctx, grad: Tensor, _grad_norm):
    joint, norm, seed = ctx.saved_tensors
    dj = torch.ops.mmfuse.mfh_tail_backward(joint, grad, norm, *ctx.rest, seed)
    return dj, None, None, None, None, None, None


class MFHTail:
    """MFB / MFH after the projections: ``joint [..., P·K·H]`` (the modalities' projections
    multiplied, block ``i`` in columns ``[i·K·H, (i+1)·K·H)``) to ``[z_1; ..; z_P]`` with
    ``e_i = Dropout_p(joint_i ⊙ e_{i-1})``, ``z_i = SumPool_K(e_i)``, then ``power_normalize``
    per block when ``normalize``: the custom op ``torch.ops.mmfuse.mfh_tail`` (its backward is
    ``mmfuse.mfh_tail_backward``). The same values as those torch ops, computed in float32 and
    returned in ``joint``'s dtype. The dropout masks are Philox draws of ``(seed, element)``
    (:func:`mmfuse._triton_kernels.dropout_keep`), drawn again in the backward rather than
    stored; ``seed`` is a one-element int64 tensor (drawn from torch's CPU generator by MFH, in
    the graph under torch.compile). Saves ``joint`` and the per-block norms; the backward
    recomputes the rest.
    """

    @staticmethod
    def apply(joint: Tensor, order: int, factor: int, normalize: bool, eps: float, p_drop: float = 0.0,
              seed: Tensor | int = 0) -> Tensor:
        if not isinstance(seed, Tensor):
            seed = torch.tensor(int(seed), dtype=torch.int64)
        return torch.ops.mmfuse.mfh_tail(joint, order, factor, normalize, eps, float(p_drop), seed)[0]


def _register() -> None:
    """The custom ops, their fake (shape) functions and their autograd."""
    pn = torch.library.custom_op("mmfuse::power_normalize", _pn_forward, mutates_args=())
    pn_bwd = torch.library.custom_op("mmfuse::power_normalize_backward", _pn_backward, mutates_args=())
    pn.register_fake(_pn_fake)
    pn_bwd.register_fake(_pn_backward_fake)
    pn.register_autograd(_pn_autograd, setup_context=_pn_setup)
    mfh = torch.library.custom_op("mmfuse::mfh_tail", _mfh_forward, mutates_args=())
    mfh_bwd = torch.library.custom_op("mmfuse::mfh_tail_backward", _mfh_backward, mutates_args=())
    mfh.register_fake(_mfh_fake)
    mfh_bwd.register_fake(_mfh_backward_fake)
    mfh.register_autograd(_mfh_autograd, setup_context=_mfh_setup)


if _CUSTOM_OPS:
    _register()

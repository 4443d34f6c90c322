"""Stateless operations shared by the fusion modules.

Axis legend used in the shape notes: ``B`` batch, ``K`` regions, ``T`` words, ``D`` features,
``...`` any leading dims. Every reduction is over the last dim unless a function says otherwise.

The input checks here raise the messages promised in DESIGN.md, e.g.
``mfh: expected 2 inputs with last dims (2048, 2400), got shapes [(8, 2048), (8, 300)]``.
They compare Python ints only, so they run unchanged under ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import PowerNormalize, use_kernels

__all__ = [
    "signed_sqrt",
    "l2_normalize",
    "power_normalize",
    "sum_pool",
    "masked_softmax",
    "check_dims",
    "check_positive",
    "check_probability",
    "check_inputs",
    "broadcast_leading",
]


def signed_sqrt(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Signed square root ``sign(x) * sqrt(|x|)`` with a finite gradient everywhere.

    Computed as ``x * rsqrt(max(|x|, eps))``: exact for ``|x| >= eps``, and for ``|x| < eps``
    a line through 0 of slope ``1/sqrt(eps)`` (values differ from the exact root by less than
    ``sqrt(eps)``). The gradient is ``1 / (2 sqrt|x|)`` where ``|x| >= eps`` and
    ``1/sqrt(eps)`` below, so it stays finite at exactly 0, where the textbook
    ``sign(x) * sqrt(|x|)`` gives NaN (``0 * inf`` in its backward).

    Args:
        x: Tensor[...].
        eps: threshold below which the root is linearised.
    Returns:
        Tensor[...] of the same shape and dtype.
    """
    return x * torch.rsqrt(x.abs().clamp_min(eps))


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x / max(||x||_2, eps)`` over the last dim. Tensor[..., D] -> Tensor[..., D]."""
    return F.normalize(x, p=2.0, dim=-1, eps=eps)


def power_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """The bilinear-pooling "norm": signed square root, then L2 over the last dim.

    On CUDA tensors with Triton present this runs as one fused kernel each way
    (:class:`mmfuse.kernels.PowerNormalize`, the same values); elsewhere as torch ops."""
    if use_kernels(x):
        return PowerNormalize.apply(x, eps, eps)
    return l2_normalize(signed_sqrt(x, eps), eps)


def sum_pool(x: Tensor, factor: int) -> Tensor:
    """Sum over non-overlapping windows of ``factor`` consecutive features (MFB's SumPool).

    Tensor[..., O * factor] -> Tensor[..., O]; output feature ``o`` is
    ``x[..., o*factor:(o+1)*factor].sum(-1)``.
    """
    d = x.shape[-1]
    if factor < 1 or d % factor != 0:
        raise ValueError(f"sum_pool: last dim {d} must be a positive multiple of factor {factor}")
    return x.unflatten(-1, (d // factor, factor)).sum(-1)


def masked_softmax(scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` where positions with ``mask == False`` get exactly zero weight.

    A row whose positions are all masked returns all zeros (never NaN).

    Args:
        scores: Tensor[...], any float dtype.
        mask: bool Tensor broadcastable to ``scores`` (True = valid), or None.
    """
    if mask is None:
        return torch.softmax(scores, dim=dim)
    if mask.dtype != torch.bool:
        raise ValueError(f"masked_softmax: mask must be a bool tensor, got dtype {mask.dtype}")
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask.to(scores.dtype)


def check_dims(name: str, in_dims: Sequence[int], modalities: str) -> tuple[int, ...]:
    """Validate a constructor's ``in_dims`` against the fusion's modality spec.

    Returns:
        ``in_dims`` as a tuple of ints.
    Raises:
        ValueError: not a sequence of positive ints, or the wrong number of them.
    """
    if isinstance(in_dims, (int, str)) or not isinstance(in_dims, Sequence):
        raise ValueError(f"{name}: in_dims must be a sequence of ints, got {in_dims!r}")
    dims = tuple(in_dims)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError(f"{name}: in_dims must be positive ints, got {dims}")
    lo = int(modalities.rstrip("+"))
    exact = not modalities.endswith("+")
    if len(dims) < lo or (exact and len(dims) != lo):
        want = f"exactly {lo}" if exact else f"at least {lo}"
        raise ValueError(f"{name}: expected {want} input dims, got {len(dims)}: {dims}")
    return dims


def check_positive(name: str, **values: int | None) -> None:
    """Raise if any named knob is not a positive int (``None`` is allowed and skipped)."""
    for key, v in values.items():
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name}: {key} must be a positive int, got {v!r}")


def check_probability(name: str, **values: float) -> None:
    """Raise if any named dropout probability is outside [0, 1)."""
    for key, p in values.items():
        if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
            raise ValueError(f"{name}: {key} must be in [0, 1), got {p!r}")


def broadcast_leading(shapes: Sequence[Sequence[int]]) -> tuple[int, ...] | None:
    """Broadcast the given shapes (numpy rules) in Python ints; ``None`` if they do not."""
    ndim = max(len(s) for s in shapes)
    out: list[int] = []
    for i in range(ndim, 0, -1):
        size = 1
        for s in shapes:
            if len(s) >= i:
                d = s[len(s) - i]
                if d != 1:
                    if size not in (1, d):
                        return None
                    size = d
        out.append(size)
    return tuple(out)


def check_inputs(name: str, xs: Sequence[Tensor], in_dims: Sequence[int]) -> tuple[int, ...]:
    """Check the inputs of a vector fusion against its ``in_dims``.

    Checks, in order: every input is a tensor; the number of inputs; each last dim; a floating
    dtype; leading dims that broadcast.

    Returns:
        the broadcast leading shape (the output is ``leading + (out_dim,)``).
    Raises:
        ValueError: naming the fusion, what it expected and what it got.
    """
    for x in xs:
        if not isinstance(x, Tensor):
            raise ValueError(f"{name}: expected tensors, got {type(x).__name__}")
    shapes = [tuple(x.shape) for x in xs]
    dims = tuple(in_dims)
    if len(xs) != len(dims) or any(len(s) == 0 or s[-1] != d for s, d in zip(shapes, dims)):
        raise ValueError(
            f"{name}: expected {len(dims)} inputs with last dims {dims}, "
            f"got {len(xs)} with shapes {shapes}"
        )
    if not all(x.is_floating_point() for x in xs):
        raise ValueError(
            f"{name}: expected floating-point inputs, got dtypes {[x.dtype for x in xs]}"
        )
    leading = broadcast_leading([s[:-1] for s in shapes])
    if leading is None:
        raise ValueError(
            f"{name}: expected leading dims that broadcast, got shapes {shapes}"
        )
    return leading

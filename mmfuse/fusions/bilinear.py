"""Bilinear pooling: full bilinear, tensor fusion, low-rank fusion and compact bilinear pooling.

Papers:
- Tenenbaum & Freeman, "Separating style and content with bilinear models", Neural Computation 2000.
- Zadeh et al., "Tensor fusion network for multimodal sentiment analysis", EMNLP 2017 (TFN).
- Liu et al., "Efficient low-rank multimodal fusion with modality-specific factors", ACL 2018 (LMF).
- Fukui et al., "Multimodal compact bilinear pooling for visual question answering and visual
  grounding", EMNLP 2016 (MCB); Gao et al., "Compact bilinear pooling", CVPR 2016; Pham & Pagh,
  "Fast and scalable polynomial kernels via explicit feature maps", KDD 2013 (Tensor Sketch).

The factorised methods (MLB, MFB, MFH, Tucker, MUTAN, BLOCK) are in :mod:`.factorized`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, power_normalize
from ..layers import MLP, ActivationArg
from ._base import FusionHead, VectorFusion, linear_params

__all__ = ["Bilinear", "TFN", "LMF", "MCB", "count_sketch", "uniform_"]


def uniform_(t: Tensor, fan_in: int) -> Tensor:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` in place: ``nn.Linear``'s default scale."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return t.uniform_(-bound, bound)


@register_fusion(
    "bilinear",
    kind="vector",
    modalities="2",
    paper="Tenenbaum & Freeman, Neural Computation 2000",
)
class Bilinear(VectorFusion):
    """Full bilinear map: ``z_k = x^T W_k y + b_k``.

    ``weight`` is ``Tensor[out_dim, Dx, Dy]`` (the layout of ``nn.Bilinear``). Computed as
    ``(x W) · y`` with one GEMM ``[N, Dx] x [Dx, out_dim·Dy]`` and a batched dot product, not
    with ``nn.Bilinear`` (whose CPU backward is an order of magnitude slower than its forward).
    Only for small dims: the weight has ``out_dim · Dx · Dy`` entries.

    Args:
        in_dims: ``(Dx, Dy)``; out_dim: output features; bias: add ``b``.

    Parameters: ``out_dim · Dx · Dy + out_dim`` (without ``b``: ``out_dim · Dx · Dy``).
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int, *, bias: bool = True, device=None, dtype=None):
        super().__init__(in_dims, out_dim)
        dx, dy = self.in_dims
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(uniform_(torch.empty(out_dim, dx, dy, **kw), dx))
        self.bias = nn.Parameter(uniform_(torch.empty(out_dim, **kw), dx)) if bias else None

    def fuse(self, x: Tensor, y: Tensor) -> Tensor:
        dx, dy = self.in_dims
        # [..., Dx] @ [Dx, O*Dy] -> [..., O, Dy]; a view of the weight when it is [Dx, O, Dy]-ordered
        w = self.weight.permute(1, 0, 2).reshape(dx, self.out_dim * dy)
        t = (x @ w).unflatten(-1, (self.out_dim, dy))
        z = (t @ y.unsqueeze(-1)).squeeze(-1)  # [..., O]
        return z if self.bias is None else z + self.bias

    def expected_num_parameters(self) -> int:
        dx, dy = self.in_dims
        return self.out_dim * dx * dy + (self.out_dim if self.bias is not None else 0)


def _with_one(x: Tensor) -> Tensor:
    """``[1; x]``: Tensor[..., D] -> Tensor[..., D + 1]."""
    return torch.cat([torch.ones_like(x[..., :1]), x], dim=-1)


@register_fusion(
    "tfn",
    kind="vector",
    modalities="2+",
    paper="Zadeh et al., EMNLP 2017 (Tensor Fusion Network)",
    tiny={"hidden_dims": (6,)},
)
class TFN(VectorFusion):
    """Tensor Fusion: ``z = MLP(vec([1; x_1] ⊗ [1; x_2] ⊗ .. ⊗ [1; x_M]))``.

    The appended 1 keeps the unimodal and lower-order terms beside the M-way products (the
    paper appends it; the authors' code prepends it, which only permutes the vector — this
    follows the code so that :class:`LMF` is TFN with a CP-factored first layer). The
    post-fusion MLP is the paper's: ``hidden_dims`` ReLU layers (128, 128) with dropout.

    Memory: the outer product is materialised by definition: ``N · prod_m (D_m + 1)`` floats
    for ``N`` rows (e.g. TFN's 32/32/128-d inputs: 140k floats per row; 2048 x 2400: 4.9M per
    row — use :class:`LMF` for large inputs).

    Args:
        in_dims: ``(D_1, .., D_M)``; out_dim: output features.
        hidden_dims: post-fusion layers; activation; dropout_hidden: after each hidden layer.

    Parameters: ``sum((d_i + 1) d_{i+1})`` over ``d = (prod_m (D_m + 1), *hidden_dims, out_dim)``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dims: Sequence[int] = (128, 128),
        activation: ActivationArg = "relu",
        dropout_hidden: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_dims, out_dim, dropout_hidden=dropout_hidden)
        self.hidden_dims = tuple(hidden_dims)
        check_positive("tfn", **{f"hidden_dims[{i}]": d for i, d in enumerate(self.hidden_dims)})
        self.tensor_dim = math.prod(d + 1 for d in self.in_dims)
        self.mlp = MLP(self.tensor_dim, (*self.hidden_dims, out_dim), activation, dropout_hidden, device=device, dtype=dtype)

    def fuse(self, *xs: Tensor) -> Tensor:
        t = _with_one(xs[0])
        for x in xs[1:]:
            # [..., A] x [..., B] -> [..., A*B], index a*B + b (row-major outer product)
            t = (t.unsqueeze(-1) * _with_one(x).unsqueeze(-2)).flatten(-2)
        return self.mlp(t)

    def expected_num_parameters(self) -> int:
        d = (self.tensor_dim, *self.hidden_dims, self.out_dim)
        return sum(linear_params(a, b) for a, b in zip(d[:-1], d[1:]))


@register_fusion(
    "lmf",
    kind="vector",
    modalities="2+",
    paper="Liu et al., ACL 2018 (Low-rank Multimodal Fusion)",
)
class LMF(VectorFusion):
    """Low-rank Multimodal Fusion: ``z = sum_{i=1}^r λ_i ⊙_m (W_m^{(i)} [1; x_m]) + b``.

    Equals a TFN first layer whose weight tensor has CP rank ``r``:
    ``W[o, i_1, .., i_M] = sum_r λ_r prod_m factor_m[i_m, r, o]``, without forming the outer
    product (one GEMM per modality).

    ``factors[m]`` is ``Tensor[D_m + 1, rank, out_dim]`` (row 0 multiplies the appended 1),
    ``rank_weights`` is λ ``Tensor[rank]``, ``bias`` is ``Tensor[out_dim]``. Initialised as the
    authors' code: Xavier-normal factors and λ, zero bias.

    Args:
        in_dims: ``(D_1, .., D_M)``; out_dim: output features;
        rank: r (the paper searches {1, 4, 8, 16}; default 4).

    Parameters: ``rank · out_dim · sum_m (D_m + 1) + rank + out_dim``.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int, *, rank: int = 4, device=None, dtype=None):
        super().__init__(in_dims, out_dim)
        check_positive("lmf", rank=rank)
        self.rank = rank
        kw = dict(device=device, dtype=dtype)
        self.factors = nn.ParameterList()
        for d in self.in_dims:
            f = torch.empty(d + 1, rank, out_dim, **kw)
            nn.init.xavier_normal_(f.view(d + 1, rank * out_dim))
            self.factors.append(nn.Parameter(f))
        self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank, **kw)).view(rank))
        self.bias = nn.Parameter(torch.zeros(out_dim, **kw))

    def fuse(self, *xs: Tensor) -> Tensor:
        z = None
        for x, f in zip(xs, self.factors):
            w = f.view(f.shape[0], self.rank * self.out_dim)  # [D + 1, r*O]
            h = F.linear(x, w[1:].t(), w[0]).unflatten(-1, (self.rank, self.out_dim))  # [..., r, O]
            z = h if z is None else z * h
        return torch.einsum("...ro,r->...o", z, self.rank_weights) + self.bias

    def expected_num_parameters(self) -> int:
        return self.rank * self.out_dim * sum(d + 1 for d in self.in_dims) + self.rank + self.out_dim

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


def count_sketch(x: Tensor, index: Tensor, sign: Tensor, dim: int) -> Tensor:
    """Count sketch ``Ψ(x)[j] = sum_{i: h(i) = j} s(i) x_i``.

    Args:
        x: Tensor[..., D]; index: h, long Tensor[D] in ``[0, dim)``; sign: s, Tensor[D] of ±1.
    Returns:
        Tensor[..., dim]. Costs O(N·D) (a scatter-add), where a dense sketch matrix would
        cost O(N·D·dim).
    """
    out = x.new_zeros(*x.shape[:-1], dim)
    return out.index_add_(-1, index, x * sign.to(x.dtype))  # in place: index_add would copy the zeros


def _compact_bilinear(d: int, xs, hashes) -> tuple[Tensor, list[Tensor]]:
    """``(irfft(prod_m rfft(Ψ_m(x_m))), [rfft(Ψ_m(x_m))])``, in float32 at least."""
    specs = []
    spec = None
    for m, x in enumerate(xs):
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        f = torch.fft.rfft(count_sketch(x, hashes[2 * m], hashes[2 * m + 1], d), n=d, dim=-1)
        specs.append(f)
        spec = f if spec is None else spec * f
    return torch.fft.irfft(spec, n=d, dim=-1), specs


class _CompactBilinear(torch.autograd.Function):
    """MCB's sketch with its gradient in closed form: a circular cross-correlation.

    With ``F_m = rfft(Ψ_m(x_m))`` and ``z = irfft(prod_m F_m)``, the gradient of a sketch is
    ``dΨ_m = irfft(rfft(dz) ⊙ prod_{j != m} conj(F_j))`` (irfft's ``1/d`` and its doubled bins
    cancel against rfft's adjoint), and ``dx_m = s_m ⊙ dΨ_m[h_m]`` (a gather). That is one
    one-sided FFT of ``dz`` and one inverse FFT per modality; autograd's generic path instead runs
    rfft's backward as a full-length complex FFT of a zero-padded copy per modality.

    Inputs ``d, M, x_1..x_M, h_1, s_1, .., h_M, s_M``; output Tensor[..., d] (float32 at least).
    """

    @staticmethod
    def forward(ctx, d: int, m: int, *args: Tensor) -> Tensor:
        xs, hashes = args[:m], args[m:]
        z, specs = _compact_bilinear(d, xs, hashes)
        ctx.d, ctx.m = d, m
        ctx.inputs = [(x.dtype, x.shape) for x in xs]
        ctx.save_for_backward(*hashes, *specs)
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        d, m = ctx.d, ctx.m
        saved = ctx.saved_tensors
        hashes, specs = saved[: 2 * m], saved[2 * m :]
        r = torch.fft.rfft(grad.to(specs[0].real.dtype), n=d, dim=-1)
        out: list[Tensor | None] = [None, None]
        for i in range(m):
            if not ctx.needs_input_grad[2 + i]:
                out.append(None)
                continue
            h = r
            for j in range(m):
                if j != i:
                    h = h * specs[j].conj()
            g = torch.fft.irfft(h, n=d, dim=-1)
            index, sign = hashes[2 * i], hashes[2 * i + 1]
            dtype, shape = ctx.inputs[i]
            gx = g.index_select(-1, index) * sign.to(g.dtype)
            out.append(gx.sum_to_size(shape).to(dtype))  # summed over dims the input was broadcast on
        return (*out, *([None] * (2 * m)))


@register_fusion(
    "mcb",
    kind="vector",
    modalities="2+",
    paper="Fukui et al., EMNLP 2016 (Multimodal Compact Bilinear pooling)",
    # a sketch small enough that every bin receives terms: an empty bin is exactly 0, where
    # the signed square root has no derivative and float64 gradcheck cannot pass
    tiny={"hidden_dim": 4},
)
class MCB(VectorFusion):
    """Multimodal Compact Bilinear pooling: the count sketch of ``x_1 ⊗ .. ⊗ x_M`` via FFT.

    ``z = IFFT(FFT Ψ_1(x_1) ⊙ .. ⊙ FFT Ψ_M(x_M))`` (``rfft`` / ``irfft`` of length
    ``hidden_dim`` = d), i.e. the circular convolution of the modality sketches, which is the
    count sketch of the outer product under the hash ``h(i_1..i_M) = sum_m h_m(i_m) mod d`` and
    the sign ``prod_m s_m(i_m)``; its inner products estimate ``prod_m <x_m, x'_m>`` without
    bias. Then signed sqrt + L2 (``normalize``), dropout and the output Linear (the paper's
    MCB -> signed sqrt -> L2 -> FC). The paper also L2-normalises the image features before
    MCB: that is the image encoder's job.

    The hashes ``h_m`` (uniform in ``[0, d)``) and signs ``s_m`` (±1) are drawn once from
    ``hash_seed`` and kept as buffers (saved in the state dict). There are no learned
    parameters before the output Linear. FFTs run in float32 at least (also under autocast).

    Args:
        in_dims: ``(D_1, .., D_M)``; out_dim: output features;
        hidden_dim: d, the sketch size (16000 in the paper);
        normalize: signed sqrt + L2 on the sketch; output_linear: ``False`` returns the
        (normalised) sketch itself, then ``out_dim`` must equal d;
        dropout_pre_lin: on the sketch before the Linear (0.1); output_activation, dropout_output.

    Parameters: ``(hidden_dim + 1) · out_dim``, or 0 with ``output_linear=False``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dim: int = 16000,
        normalize: bool = True,
        output_linear: bool = True,
        output_activation: ActivationArg = None,
        dropout_pre_lin: float = 0.1,
        dropout_output: float = 0.0,
        hash_seed: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_dims, out_dim, dropout_pre_lin=dropout_pre_lin, dropout_output=dropout_output)
        check_positive("mcb", hidden_dim=hidden_dim)
        self.hidden_dim, self.normalize, self.hash_seed = hidden_dim, bool(normalize), hash_seed
        gen = torch.Generator().manual_seed(hash_seed)
        for m, d in enumerate(self.in_dims):
            self.register_buffer(f"hash_index_{m}", torch.randint(hidden_dim, (d,), generator=gen).to(device))
            sign = (torch.randint(2, (d,), generator=gen) * 2 - 1).to(device=device, dtype=dtype or torch.get_default_dtype())
            self.register_buffer(f"hash_sign_{m}", sign)
        self.head = FusionHead(
            hidden_dim, out_dim, output_activation, dropout_pre_lin, dropout_output, output_linear,
            owner="mcb", device=device, dtype=dtype,
        )

    def hashes(self) -> list[tuple[Tensor, Tensor]]:
        """``[(h_m, s_m)]`` per modality."""
        return [(getattr(self, f"hash_index_{m}"), getattr(self, f"hash_sign_{m}")) for m in range(len(self.in_dims))]

    def sketch(self, *xs: Tensor) -> Tensor:
        """The compact bilinear vector before normalisation: Tensor[..., hidden_dim]."""
        hashes = [t for pair in self.hashes() for t in pair]
        if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
            return _CompactBilinear.apply(self.hidden_dim, len(xs), *xs, *hashes)
        return _compact_bilinear(self.hidden_dim, xs, hashes)[0]

    def fuse(self, *xs: Tensor) -> Tensor:
        z = self.sketch(*xs)
        if self.normalize:
            z = power_normalize(z)
        return self.head(z)

    def expected_num_parameters(self) -> int:
        return self.head.num_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, normalize={self.normalize}"

"""Simple-operation fusion: concatenation, sums and element-wise products.

Papers:
- Nojavanasghari et al., "Deep multimodal fusion for persuasiveness prediction", ICMI 2016;
  Zhou et al., "Simple baseline for visual question answering", arXiv:1512.02167 (concat).
- Cadene et al., block.bootstrap.pytorch (``ConcatMLP``, ``LinearSum``; the linear-sum baseline
  of the MUTAN (ICCV 2017) and BLOCK (AAAI 2019) papers).
- Pérez-Rúa et al., "MFAS: Multimodal fusion architecture search", CVPR 2019 (weighted sum).
- Anderson et al., "Bottom-up and top-down attention", CVPR 2018 (product joint embedding).

Every class here takes any number M >= 2 of modalities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive, power_normalize
from ..layers import MLP, ActivationArg, ConcatLinear, dropout_or_identity, expand_to_leading
from ..layers import make_activation
from ._base import FusionHead, InputProjections, VectorFusion, linear_params

__all__ = ["Concat", "ConcatMLP", "LinearSum", "Product", "WeightedSum"]


@register_fusion(
    "concat",
    kind="vector",
    modalities="2+",
    paper="Nojavanasghari et al., ICMI 2016; Zhou et al., arXiv 2015 (iBOWIMG)",
)
class Concat(VectorFusion):
    """Concatenation ``z = [x_1; ..; x_M]``, optionally followed by a Linear to ``out_dim``.

    With ``out_dim=None`` the output is the plain concatenation (``sum(in_dims)`` features, no
    parameters); otherwise ``z = W [x_1; ..; x_M] + b``, computed without copying broadcast
    inputs (see :class:`~mmfuse.layers.ConcatLinear`).

    Args:
        in_dims: ``(D_1, .., D_M)``, M >= 2.
        out_dim: output features, or ``None`` for no projection.
        dropout_output: dropout on the output.

    Shapes: ``Tensor[..., D_m]`` each -> ``Tensor[..., out_dim]`` (``[..., sum(D_m)]`` when
    ``out_dim is None``).

    Parameters: ``(sum(D_m) + 1) * out_dim``, or 0 without projection.

    Example::

        f = Concat((2048, 300), 512)
        z = f(torch.randn(8, 36, 2048), torch.randn(8, 1, 300))   # [8, 36, 512]
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int | None = None,
        *,
        dropout_output: float = 0.0,
        device=None,
        dtype=None,
    ):
        project = out_dim is not None
        # without a projection the width is only known once in_dims are checked
        super().__init__(in_dims, out_dim if project else 1, dropout_output=dropout_output)
        if not project:
            self.out_dim = sum(self.in_dims)
        self.proj = (
            ConcatLinear(self.in_dims, self.out_dim, device=device, dtype=dtype) if project else None
        )
        self.drop_out = dropout_or_identity(dropout_output)

    def fuse(self, *xs: Tensor) -> Tensor:
        if self.proj is None:
            z = torch.cat(expand_to_leading(xs), dim=-1)
        else:
            z = self.proj(*xs)
        return self.drop_out(z)

    def expected_num_parameters(self) -> int:
        return 0 if self.proj is None else linear_params(sum(self.in_dims), self.out_dim)


@register_fusion(
    "concat_mlp",
    kind="vector",
    modalities="2+",
    paper="Cadene et al., block.bootstrap.pytorch ConcatMLP (Ben-younes et al., AAAI 2019)",
    tiny={"hidden_dims": (6, 5)},
)
class ConcatMLP(VectorFusion):
    """An MLP on the concatenation: ``z = MLP([x_1; ..; x_M])``.

    Layers: ``Linear -> activation -> dropout`` for each entry of ``hidden_dims``, then a
    ``Linear`` to ``out_dim`` (block.bootstrap's ``ConcatMLP``: ``dimensions=[500, 500]``,
    ReLU, no dropout). The first Linear does not copy broadcast inputs.

    Args:
        in_dims: ``(D_1, .., D_M)``, M >= 2.
        out_dim: output features.
        hidden_dims: widths of the hidden layers (may be empty: then one Linear).
        activation: between layers.
        dropout_hidden: after each hidden activation (block.bootstrap's ``dropout``).

    Parameters: ``sum((d_i + 1) * d_{i+1})`` over ``d = (sum(D_m), *hidden_dims, out_dim)``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dims: Sequence[int] = (500, 500),
        activation: ActivationArg = "relu",
        dropout_hidden: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_dims, out_dim, dropout_hidden=dropout_hidden)
        self.hidden_dims = tuple(hidden_dims)
        check_positive(self.fusion_name, **{f"hidden_dims[{i}]": d for i, d in enumerate(self.hidden_dims)})
        dims = (*self.hidden_dims, out_dim)
        kw = dict(device=device, dtype=dtype)
        self.first = ConcatLinear(self.in_dims, dims[0], **kw)
        rest: list[nn.Module] = []
        if len(dims) > 1:
            rest = [make_activation(activation, self.fusion_name), dropout_or_identity(dropout_hidden)]
            rest.append(MLP(dims[0], dims[1:], activation, dropout_hidden, **kw))
        self.rest = nn.Sequential(*rest)

    def fuse(self, *xs: Tensor) -> Tensor:
        return self.rest(self.first(*xs))

    def expected_num_parameters(self) -> int:
        d = (sum(self.in_dims), *self.hidden_dims, self.out_dim)
        return sum(linear_params(a, b) for a, b in zip(d[:-1], d[1:]))


class ProjectCombine(VectorFusion):
    """Shared body of :class:`LinearSum` and :class:`Product` (and MLB in the bilinear family).

    ``z = drop_out(act_out(W_o drop_pre(norm(combine_m drop_proj(act(W_m drop_in(x_m)))))))``
    where ``combine`` is a sum or an element-wise product over the modalities.

    Parameters: ``sum_m (D_m + 1) * hidden_dim + (hidden_dim + 1) * out_dim``.
    """

    combine: str = "sum"

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dim: int = 1200,
        activation: ActivationArg = "relu",
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
            in_dims,
            out_dim,
            dropout_input=dropout_input,
            dropout_projected=dropout_projected,
            dropout_pre_lin=dropout_pre_lin,
            dropout_output=dropout_output,
        )
        check_positive(self.fusion_name, hidden_dim=hidden_dim)
        self.hidden_dim = hidden_dim
        self.normalize = bool(normalize)
        kw = dict(owner=self.fusion_name, device=device, dtype=dtype)
        m = len(self.in_dims)
        self.inputs = InputProjections(self.in_dims, (hidden_dim,) * m, activation, dropout_input, dropout_projected, **kw)
        self.head = FusionHead(hidden_dim, out_dim, output_activation, dropout_pre_lin, dropout_output, **kw)

    def fuse(self, *xs: Tensor) -> Tensor:
        hs = self.inputs(xs)
        z = hs[0]
        for h in hs[1:]:
            z = z + h if self.combine == "sum" else z * h
        if self.normalize:
            z = power_normalize(z)
        return self.head(z)

    def expected_num_parameters(self) -> int:
        return self.inputs.num_parameters() + self.head.num_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, normalize={self.normalize}"


@register_fusion(
    "linear_sum",
    kind="vector",
    modalities="2+",
    paper="Ben-younes et al., ICCV 2017 / AAAI 2019 baseline (block.bootstrap LinearSum)",
    tiny={"hidden_dim": 8},
)
class LinearSum(ProjectCombine):
    """Sum of projected inputs: ``z = W_o(σ(W_1 x_1) + .. + σ(W_M x_M)) + b_o``.

    Defaults: ``hidden_dim=1200``, ``σ = ReLU``, no output activation, no normalisation, no
    dropout. block.bootstrap's ``LinearSum`` is ``output_activation="relu"`` with its
    ``dropout_input`` passed as ``dropout_projected``.

    Args:
        in_dims, out_dim: the contract; hidden_dim: width of the sum.
        activation: σ on each projection; output_activation: after ``W_o``.
        normalize: signed sqrt + L2 on the sum before ``W_o``.
        dropout_input, dropout_projected, dropout_pre_lin, dropout_output: see
            :mod:`mmfuse.fusions._base`.

    Parameters: ``sum_m (D_m + 1) * hidden_dim + (hidden_dim + 1) * out_dim``.
    """

    combine = "sum"


@register_fusion(
    "product",
    kind="vector",
    modalities="2+",
    paper="Anderson et al., CVPR 2018 (Up-Down joint embedding)",
    tiny={"hidden_dim": 8},
)
class Product(ProjectCombine):
    """Element-wise product of projected inputs: ``z = W_o(σ(W_1 x_1) ⊙ .. ⊙ σ(W_M x_M)) + b_o``.

    The joint embedding of Bottom-Up Top-Down VQA (``σ = ReLU``). Same knobs and defaults as
    :class:`LinearSum`.

    Parameters: ``sum_m (D_m + 1) * hidden_dim + (hidden_dim + 1) * out_dim``.
    """

    combine = "prod"


@register_fusion(
    "weighted_sum",
    kind="vector",
    modalities="2+",
    paper="Pérez-Rúa et al., CVPR 2019 (MFAS)",
)
class WeightedSum(VectorFusion):
    """Weighted sum with learned scalar weights: ``z = sum_m α_m P_m x_m``.

    ``P_m`` is a Linear ``D_m -> out_dim`` (bias included), or the identity when
    ``project="auto"`` and ``D_m == out_dim``. The weights are ``α = softmax(a)`` over the
    modalities (``weights="softmax"``, ``a`` starts at 0: a plain mean) or the free scalars
    ``α = a`` (``weights="free"``, starting at ``1/M``).

    Args:
        in_dims, out_dim: the contract.
        weights: ``"softmax"`` or ``"free"``.
        project: ``"auto"`` (identity where dims agree) or ``"always"``.

    Parameters: ``M + sum_{m projected} (D_m + 1) * out_dim``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        weights: str = "softmax",
        project: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(in_dims, out_dim)
        if weights not in ("softmax", "free"):
            raise ValueError(f"weighted_sum: weights must be 'softmax' or 'free', got {weights!r}")
        if project not in ("auto", "always"):
            raise ValueError(f"weighted_sum: project must be 'auto' or 'always', got {project!r}")
        self.weights, self.project = weights, project
        kw = dict(device=device, dtype=dtype)
        self.projections = nn.ModuleList(
            nn.Identity() if (project == "auto" and d == out_dim) else nn.Linear(d, out_dim, **kw)
            for d in self.in_dims
        )
        m = len(self.in_dims)
        init = 0.0 if weights == "softmax" else 1.0 / m
        self.logits = nn.Parameter(torch.full((m,), init, **kw))

    def alphas(self) -> Tensor:
        """The modality weights ``α``, ``Tensor[M]``."""
        return torch.softmax(self.logits, dim=0) if self.weights == "softmax" else self.logits

    def fuse(self, *xs: Tensor) -> Tensor:
        alpha = self.alphas()
        z = None
        for i, (p, x) in enumerate(zip(self.projections, xs)):
            term = alpha[i] * p(x)
            z = term if z is None else z + term
        return z

    def expected_num_parameters(self) -> int:
        m = len(self.in_dims)
        proj = sum(
            linear_params(d, self.out_dim)
            for d in self.in_dims
            if not (self.project == "auto" and d == self.out_dim)
        )
        return m + proj

"""The base class of every vector fusion: the contract of DESIGN.md in one place.

A vector fusion maps M tensors ``[..., D_m]`` (leading dims equal or broadcastable) to one
``[..., out_dim]``. Subclasses implement :meth:`VectorFusion.fuse` (inputs already checked) and
:meth:`VectorFusion.expected_num_parameters` (the parameter-count formula of their docstring,
computed from the hyper-parameters, never by counting ``self.parameters()``), which the contract
tests compare with the registered parameters.

Dropout knobs shared by the families (each is 0 unless a paper says otherwise):
``dropout_input`` on each raw input before its projection (the papers' placement),
``dropout_projected`` on each projected input (what block.bootstrap calls ``dropout_input``),
``dropout_pre_lin`` on the fused vector before the output Linear, ``dropout_output`` after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import check_dims, check_inputs, check_positive, check_probability
from ..layers import ActivationArg, dropout_or_identity, make_activation

__all__ = ["VectorFusion", "InputProjections", "FusionHead", "linear_params"]


class VectorFusion(nn.Module):
    """Base class: checks ``in_dims``/``out_dim`` at construction and the inputs at call time."""

    fusion_name: str = "fusion"  # set by register_fusion
    modalities: str = "2+"  # "2", "3" or "2+"; set by register_fusion

    def __init__(self, in_dims: Sequence[int], out_dim: int, **probabilities: float):
        super().__init__()
        name = self.fusion_name
        self.in_dims: tuple[int, ...] = check_dims(name, in_dims, self.modalities)
        check_positive(name, out_dim=out_dim)
        check_probability(name, **probabilities)
        self.out_dim = out_dim

    @property
    def num_modalities(self) -> int:
        return len(self.in_dims)

    def forward(self, *xs: Tensor) -> Tensor:
        """Fuse one tensor per modality: ``Tensor[..., D_m]`` each -> ``Tensor[..., out_dim]``."""
        check_inputs(self.fusion_name, xs, self.in_dims)
        return self.fuse(*xs)

    def fuse(self, *xs: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected_num_parameters(self) -> int:  # pragma: no cover - abstract
        """The parameter count stated in the class docstring, from the hyper-parameters."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_dims={self.in_dims}, out_dim={self.out_dim}"


def linear_params(d_in: int, d_out: int, bias: bool = True) -> int:
    """Parameters of ``nn.Linear(d_in, d_out, bias)``."""
    return (d_in + int(bias)) * d_out


class InputProjections(nn.Module):
    """Per-modality ``drop_proj(σ(W_m drop_in(x_m)))``: the input side of most fusions.

    Args:
        in_dims: ``(D_1, .., D_M)``; out_dims: the projected width per modality.
        activation: σ; dropout_input / dropout_projected: before / after the projection.

    Parameters: ``sum_m (D_m + 1) * out_dims[m]``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dims: Sequence[int],
        activation: ActivationArg = None,
        dropout_input: float = 0.0,
        dropout_projected: float = 0.0,
        owner: str = "fusion",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_dims, self.out_dims = tuple(in_dims), tuple(out_dims)
        self.linears = nn.ModuleList(
            nn.Linear(d, h, device=device, dtype=dtype) for d, h in zip(self.in_dims, self.out_dims)
        )
        self.activation = make_activation(activation, owner)
        self.drop_in = dropout_or_identity(dropout_input)
        self.drop_proj = dropout_or_identity(dropout_projected)

    def forward(self, xs: Sequence[Tensor], pad: Sequence[int] | None = None) -> list[Tensor]:
        """``pad``: per modality, extra zero output rows on the fly (a width the GEMMs like; the
        extra features are what the activation makes of 0, for the caller to give zero weight)."""
        if not pad or not any(pad):
            return [self.drop_proj(self.activation(lin(self.drop_in(x)))) for lin, x in zip(self.linears, xs)]
        return [
            self.drop_proj(self.activation(F.linear(self.drop_in(x), F.pad(lin.weight, (0, 0, 0, p)), F.pad(lin.bias, (0, p)))))
            for lin, x, p in zip(self.linears, xs, pad)
        ]

    def num_parameters(self) -> int:
        return sum(linear_params(d, h) for d, h in zip(self.in_dims, self.out_dims))


class FusionHead(nn.Module):
    """The output side shared by the fusions: ``drop_out(act_out(W_o drop_pre_lin(z)))``.

    With ``output_linear=False`` there is no ``W_o`` and ``in_dim`` must equal ``out_dim``.

    Parameters: ``(in_dim + 1) * out_dim``, or 0 without the Linear.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        output_activation: ActivationArg = None,
        dropout_pre_lin: float = 0.0,
        dropout_output: float = 0.0,
        output_linear: bool = True,
        owner: str = "fusion",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not output_linear and in_dim != out_dim:
            raise ValueError(
                f"{owner}: without the output Linear out_dim must equal the fused width {in_dim}, got {out_dim}"
            )
        self.in_dim, self.out_dim = in_dim, out_dim
        self.drop_pre = dropout_or_identity(dropout_pre_lin)
        self.linear = nn.Linear(in_dim, out_dim, device=device, dtype=dtype) if output_linear else nn.Identity()
        self.activation = make_activation(output_activation, owner)
        self.drop_out = dropout_or_identity(dropout_output)

    def forward(self, z: Tensor, pad_in: int = 0) -> Tensor:
        """``pad_in``: ``z`` carries that many extra trailing features, read with zero weights."""
        z = self.drop_pre(z)
        if pad_in:
            z = F.linear(z, F.pad(self.linear.weight, (0, pad_in)), self.linear.bias)
        else:
            z = self.linear(z)
        return self.drop_out(self.activation(z))

    def num_parameters(self) -> int:
        return linear_params(self.in_dim, self.out_dim) if isinstance(self.linear, nn.Linear) else 0

"""Small building blocks shared by the fusion families.

- :func:`make_activation`: an activation given as a name, a class, a module or ``None``.
- :class:`ConcatLinear`: ``Linear([x_1; ..; x_M])`` that never materialises broadcast inputs.
- :class:`MLP`: Linear -> activation -> dropout stacks (block.bootstrap's MLP layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import broadcast_leading

__all__ = [
    "ActivationArg",
    "make_activation",
    "dropout_or_identity",
    "expand_to_leading",
    "ConcatLinear",
    "MLP",
]

ActivationArg = Union[str, None, nn.Module, type, Callable[[Tensor], Tensor]]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "none": nn.Identity,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def make_activation(act: ActivationArg, owner: str = "activation") -> nn.Module:
    """Turn ``act`` into a module.

    Accepts ``None`` (identity), a name (``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"gelu"``,
    ``"elu"``, ``"silu"``, ``"leaky_relu"``, ``"identity"``), an ``nn.Module`` class (instantiated
    without arguments), a module instance, or a plain function of one tensor.
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, str):
        key = act.lower()
        if key not in _ACTIVATIONS:
            raise ValueError(
                f"{owner}: unknown activation {act!r}; expected one of {sorted(_ACTIVATIONS)}"
            )
        return _ACTIVATIONS[key]()
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, type) and issubclass(act, nn.Module):
        return act()
    if callable(act):
        return _Lambda(act)
    raise ValueError(f"{owner}: activation must be a name, module or callable, got {act!r}")


def dropout_or_identity(p: float) -> nn.Module:
    """``nn.Dropout(p)`` when ``p > 0``, else ``nn.Identity()`` (no op in the graph)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class ConcatLinear(nn.Module):
    """``Linear([x_1; ..; x_M])`` for inputs whose leading dims may broadcast.

    Holds one weight ``Tensor[out_dim, sum(in_dims)]`` like ``nn.Linear`` on the concatenation.
    When all inputs share their leading shape it concatenates and runs one GEMM; otherwise it
    computes ``sum_m x_m W_m^T + b`` on the column blocks ``W_m`` of the weight, so that a
    ``[B, 1, Dq]`` question is projected once and broadcast, never copied K times.

    Parameters: ``(sum(in_dims) + 1) * out_dim`` (``sum(in_dims) * out_dim`` without bias).
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.in_dims = tuple(in_dims)
        self.out_dim = out_dim
        lin = nn.Linear(sum(self.in_dims), out_dim, bias=bias, device=device, dtype=dtype)
        self.weight = lin.weight
        self.bias = lin.bias

    def forward(self, *xs: Tensor) -> Tensor:
        shapes = [tuple(x.shape[:-1]) for x in xs]
        if all(s == shapes[0] for s in shapes):
            return F.linear(torch.cat(xs, dim=-1), self.weight, self.bias)
        out = self.bias
        for x, w in zip(xs, self.weight.split(self.in_dims, dim=1)):
            y = F.linear(x, w)
            out = y if out is None else out + y
        return out

    def extra_repr(self) -> str:
        return f"in_dims={self.in_dims}, out_dim={self.out_dim}, bias={self.bias is not None}"


def expand_to_leading(xs: Sequence[Tensor]) -> list[Tensor]:
    """Expand tensors ``[..., D_m]`` to their common broadcast leading shape (views, no copy)."""
    leading = broadcast_leading([tuple(x.shape[:-1]) for x in xs])
    if leading is None:
        raise ValueError(f"leading dims do not broadcast: {[tuple(x.shape) for x in xs]}")
    return [x.expand(*leading, x.shape[-1]) for x in xs]


class MLP(nn.Module):
    """``Linear -> activation -> dropout`` for every layer but the last, which is a bare Linear.

    Args:
        in_dim: input features.
        dims: output features of each layer; the last one is the MLP's output.
        activation: between layers (see :func:`make_activation`).
        dropout: after each hidden activation.

    Parameters: ``sum((d_in + 1) * d_out)`` over the layers.
    """

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int],
        activation: ActivationArg = "relu",
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        sizes = [in_dim, *dims]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b, device=device, dtype=dtype))
            if i < len(dims) - 1:
                layers.append(make_activation(activation, "MLP"))
                layers.append(dropout_or_identity(dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

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

from torch import Tensor, nn

from ..functional import check_dims, check_inputs, check_positive, check_probability

__all__ = ["VectorFusion"]


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

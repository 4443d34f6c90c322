"""The base class of every attention fusion: the attention contract of DESIGN.md in one place.

An attention fusion takes regions (or grid cells, or time steps) ``v: Tensor[B, K, Dv]`` and a
question, either as words ``q: Tensor[B, T, Dq]`` or as one vector ``q: Tensor[B, Dq]``, with
optional bool masks (True = valid) ``v_mask: Tensor[B, K]`` and ``q_mask: Tensor[B, T]``, and
returns an :class:`AttentionOutput`:

- ``fused``: ``Tensor[B, out_dim]``, the joint representation for the answer head;
- ``v_attn``: ``Tensor[B, G, K]``, attention over regions per glimpse (None where the method has none);
- ``q_attn``: ``Tensor[B, G, T]``, attention over words (None where none);
- ``extras``: a dict of method-specific maps (BAN's ``[B, G, K, T]`` bilinear maps, gates, ...).

Every method accepts both forms of the question: a method built on a question vector pools
words with :meth:`AttentionFusion.question_vector` (masked mean), and a method built on words
sees a vector as a one-word question (:meth:`AttentionFusion.question_sequence`).
A masked position gets exactly zero attention; a fully-masked row gives finite output.

Subclasses implement :meth:`AttentionFusion.attend` (inputs already checked) and
:meth:`AttentionFusion.expected_num_parameters` (the parameter count of their docstring).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._registry import create_fusion
from ..functional import check_positive, check_probability

__all__ = ["AttentionOutput", "AttentionFusion", "check_attention_inputs", "resolve_fusion"]


class AttentionOutput(NamedTuple):
    """What every attention fusion returns (a NamedTuple, so compile and export handle it)."""

    fused: Tensor
    v_attn: Tensor | None
    q_attn: Tensor | None
    extras: dict[str, Tensor]


def _shape(t: Any) -> Any:
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def check_attention_inputs(
    name: str,
    v: Tensor,
    q: Tensor,
    v_mask: Tensor | None,
    q_mask: Tensor | None,
    v_dim: int,
    q_dim: int,
) -> None:
    """Check the inputs of an attention fusion; raise ``ValueError`` naming what was expected.

    Expected: ``v`` float ``[B, K, v_dim]``; ``q`` float ``[B, T, q_dim]`` or ``[B, q_dim]``;
    ``v_mask`` bool ``[B, K]`` or None; ``q_mask`` bool ``[B, T]`` or None (only with words).
    """
    if not isinstance(v, Tensor) or v.dim() != 3 or v.shape[-1] != v_dim:
        raise ValueError(f"{name}: expected v of shape [B, K, {v_dim}], got {_shape(v)}")
    if not isinstance(q, Tensor) or q.dim() not in (2, 3) or q.shape[-1] != q_dim:
        raise ValueError(f"{name}: expected q of shape [B, T, {q_dim}] or [B, {q_dim}], got {_shape(q)}")
    if not (v.is_floating_point() and q.is_floating_point()):
        raise ValueError(f"{name}: expected floating-point v and q, got dtypes {v.dtype} and {q.dtype}")
    b, k = v.shape[0], v.shape[1]
    if q.shape[0] != b:
        raise ValueError(f"{name}: v and q must have the same batch size, got shapes {_shape(v)} and {_shape(q)}")
    if k == 0:
        raise ValueError(f"{name}: expected at least one region, got v of shape {_shape(v)}")
    if v_mask is not None and (
        not isinstance(v_mask, Tensor) or v_mask.dtype != torch.bool or tuple(v_mask.shape) != (b, k)
    ):
        got = f"{v_mask.dtype} {tuple(v_mask.shape)}" if isinstance(v_mask, Tensor) else type(v_mask).__name__
        raise ValueError(f"{name}: expected v_mask of dtype torch.bool and shape {(b, k)}, got {got}")
    if q_mask is not None:
        want = (b, q.shape[1]) if q.dim() == 3 else None
        if want is None:
            raise ValueError(f"{name}: q_mask needs word features q [B, T, {q_dim}], got q of shape {_shape(q)}")
        if not isinstance(q_mask, Tensor) or q_mask.dtype != torch.bool or tuple(q_mask.shape) != want:
            got = f"{q_mask.dtype} {tuple(q_mask.shape)}" if isinstance(q_mask, Tensor) else type(q_mask).__name__
            raise ValueError(f"{name}: expected q_mask of dtype torch.bool and shape {want}, got {got}")


def resolve_fusion(spec: str | nn.Module, owner: str, in_dims: tuple[int, ...], out_dim: int, **kwargs: Any) -> nn.Module:
    """A vector fusion given as a registry name (built here) or as a ready module.

    A module must accept the inputs described by ``in_dims``; where it exposes ``in_dims`` and
    ``out_dim`` they are checked against what the attention method will feed it.
    """
    if isinstance(spec, str):
        return create_fusion(spec, in_dims=in_dims, out_dim=out_dim, **kwargs)
    if isinstance(spec, nn.Module):
        got_in, got_out = getattr(spec, "in_dims", None), getattr(spec, "out_dim", None)
        if got_in is not None and tuple(got_in) != tuple(in_dims):
            raise ValueError(f"{owner}: the fusion module must take in_dims {tuple(in_dims)}, it has {tuple(got_in)}")
        if got_out is not None and got_out != out_dim:
            raise ValueError(f"{owner}: the fusion module must have out_dim {out_dim}, it has {got_out}")
        return spec
    raise ValueError(f"{owner}: fusion must be a registry name or an nn.Module, got {type(spec).__name__}")


class AttentionFusion(nn.Module):
    """Base class: checks the sizes at construction and the inputs at call time."""

    fusion_name: str = "attention"  # set by register_fusion
    modalities: str = "2"

    def __init__(self, v_dim: int, q_dim: int, out_dim: int, **probabilities: float):
        super().__init__()
        check_positive(self.fusion_name, v_dim=v_dim, q_dim=q_dim, out_dim=out_dim)
        check_probability(self.fusion_name, **probabilities)
        self.v_dim, self.q_dim, self.out_dim = v_dim, q_dim, out_dim

    def forward(
        self,
        v: Tensor,
        q: Tensor,
        v_mask: Tensor | None = None,
        q_mask: Tensor | None = None,
    ) -> AttentionOutput:
        """Attend and fuse; see the module docstring for shapes."""
        check_attention_inputs(self.fusion_name, v, q, v_mask, q_mask, self.v_dim, self.q_dim)
        return self.attend(v, q, v_mask, q_mask)

    def attend(self, v: Tensor, q: Tensor, v_mask: Tensor | None, q_mask: Tensor | None) -> AttentionOutput:  # pragma: no cover
        raise NotImplementedError

    def expected_num_parameters(self) -> int:  # pragma: no cover - abstract
        """The parameter count stated in the class docstring, from the hyper-parameters."""
        raise NotImplementedError

    @staticmethod
    def question_vector(q: Tensor, q_mask: Tensor | None) -> Tensor:
        """``[B, Dq]`` as is; words ``[B, T, Dq]`` averaged over the valid ones (zeros if none)."""
        if q.dim() == 2:
            return q
        if q_mask is None:
            return q.mean(dim=1)
        w = q_mask.to(q.dtype).unsqueeze(-1)  # [B, T, 1]
        return (q * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    @staticmethod
    def question_sequence(q: Tensor, q_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Words ``[B, T, Dq]`` as they are; a vector ``[B, Dq]`` as a one-word question."""
        return (q.unsqueeze(1), None) if q.dim() == 2 else (q, q_mask)

    def extra_repr(self) -> str:
        return f"v_dim={self.v_dim}, q_dim={self.q_dim}, out_dim={self.out_dim}"

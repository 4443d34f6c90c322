"""Helpers of the contract tests: building any registered fusion small, and its inputs.

A plain module (not conftest.py): several test folders have a conftest.py of their own, and
``from conftest import ...`` would find whichever was imported first."""

from __future__ import annotations

import pytest
import torch

import mmfuse

# the dims every contract test uses; a third modality where the method takes more than two
IN_DIMS = (5, 7, 3)
OUT_DIM = 6


def modality_counts(name: str) -> list[int]:
    """The numbers of modalities to test a fusion with: its minimum, and 3 where it accepts it."""
    info = mmfuse.fusion_info(name)
    counts = [info.min_modalities]
    if info.accepts(3) and 3 not in counts:
        counts.append(3)
    return counts


def vector_cases() -> list:
    """``pytest.param(name, M)`` for every registered vector fusion and modality count."""
    return [
        pytest.param(name, m, id=f"{name}-M{m}")
        for name in mmfuse.list_fusions(kind="vector")
        for m in modality_counts(name)
    ]


def make_fusion(name: str, m: int = 2, seed: int = 0, **overrides):
    """A small instance of ``name`` with ``m`` modalities, built under ``torch.manual_seed(seed)``."""
    info = mmfuse.fusion_info(name)
    kwargs = {"in_dims": IN_DIMS[:m], "out_dim": OUT_DIM, **info.tiny, **overrides}
    torch.manual_seed(seed)
    return mmfuse.create_fusion(name, **kwargs)


def make_inputs(in_dims, leading=(4,), dtype=torch.float32, seed: int = 1, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = leading if isinstance(leading[0], tuple) else [leading] * len(in_dims)
    return [
        torch.randn(*lead, d, generator=g, dtype=dtype).requires_grad_(requires_grad)
        for lead, d in zip(shapes, in_dims)
    ]


# ---------------------------------------------------------------- attention fusions

V_DIM, Q_DIM = 5, 7


def attention_names() -> list[str]:
    return mmfuse.list_fusions(kind="attention")


def make_attention(name: str, seed: int = 0, **overrides):
    """A small instance of the attention fusion ``name`` (v_dim 5, q_dim 7, out_dim 6)."""
    info = mmfuse.fusion_info(name)
    kwargs = {"v_dim": V_DIM, "q_dim": Q_DIM, "out_dim": OUT_DIM, **info.tiny, **overrides}
    torch.manual_seed(seed)
    return mmfuse.create_fusion(name, **kwargs)


def make_attention_inputs(b=3, k=4, t=5, dtype=torch.float32, seed=1, masked=True, vector=False):
    """``(v, q, v_mask, q_mask)``: regions [b, k, 5], words [b, t, 7] (or a vector [b, 7]).

    With ``masked`` the last region of row 0 and the last two words of row 1 are padding.
    """
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, k, V_DIM, generator=g, dtype=dtype)
    q = torch.randn(b, Q_DIM, generator=g, dtype=dtype) if vector else torch.randn(b, t, Q_DIM, generator=g, dtype=dtype)
    v_mask = q_mask = None
    if masked:
        v_mask = torch.ones(b, k, dtype=torch.bool)
        v_mask[0, -1] = False
        if not vector:
            q_mask = torch.ones(b, t, dtype=torch.bool)
            q_mask[min(1, b - 1), -2:] = False
    return v, q, v_mask, q_mask

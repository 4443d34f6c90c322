"""Slow, obviously-correct building blocks for the reference tests: plain Python floats,
one multiply-add at a time, so that nothing in them shares code with mmfuse."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _float64():
    """Exact comparisons: modules and inputs in float64 for these tests only."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    with torch.no_grad():
        yield
    torch.set_default_dtype(old)


def dot(w_row, x):
    """Explicit sum_j w_j x_j, one scalar at a time."""
    return sum(float(a) * float(b) for a, b in zip(w_row, x))


def linear(lin, x):
    """Explicit Linear on one vector: [W x + b] element by element."""
    return [dot(lin.weight[o], x) + (float(lin.bias[o]) if lin.bias is not None else 0.0) for o in range(lin.out_features)]


def vec(x):
    return [float(v) for v in x]


def assert_vec_close(a, b, tol=1e-9):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert abs(u - v) <= tol * (1 + abs(v)), f"entry {i}: {u} != {v}"


def rows(xs):
    return [[vec(x[i]) for x in xs] for i in range(xs[0].shape[0])]


def relu(v):
    return [max(0.0, a) for a in v]

"""The stateless ops of mmfuse.functional, against explicit computations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse import functional as MF


def test_signed_sqrt_values():
    x = torch.tensor([-4.0, -0.25, 0.0, 0.25, 9.0, 1e-3])
    expected = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0, math.sqrt(1e-3)])
    torch.testing.assert_close(MF.signed_sqrt(x), expected)


def test_signed_sqrt_gradient_is_finite_at_zero_and_exact_elsewhere():
    x = torch.tensor([0.0, -0.0, 0.25, -4.0, 1e-20], dtype=torch.float64, requires_grad=True)
    MF.signed_sqrt(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    # d/dx sign(x) sqrt|x| = 1 / (2 sqrt|x|)
    torch.testing.assert_close(x.grad[2:4], torch.tensor([1.0, 0.25], dtype=torch.float64))
    # the textbook formula gives NaN at 0 (0 * inf in its backward): why this op exists
    y = torch.zeros(1, requires_grad=True)
    (torch.sign(y) * torch.sqrt(torch.abs(y))).sum().backward()
    assert torch.isnan(y.grad).all()


def test_power_normalize_finite_gradient_at_exact_zeros():
    z = torch.zeros(3, 5, requires_grad=True)
    out = MF.power_normalize(z)
    assert torch.equal(out, torch.zeros(3, 5))
    (out * torch.randn(3, 5)).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_l2_normalize_is_over_the_last_dim_for_3d_input():
    # block.bootstrap's F.normalize(z, p=2) normalises dim 1: wrong for [B, K, D]
    x = torch.randn(2, 4, 3)
    out = MF.l2_normalize(x)
    for b in range(2):
        for k in range(4):
            n = math.sqrt(sum(float(v) ** 2 for v in x[b, k]))
            torch.testing.assert_close(out[b, k], x[b, k] / n)


def test_sum_pool_windows():
    x = torch.arange(12.0).view(2, 6)
    out = MF.sum_pool(x, 3)
    assert out.tolist() == [[0 + 1 + 2, 3 + 4 + 5], [6 + 7 + 8, 9 + 10 + 11]]
    with pytest.raises(ValueError, match="sum_pool: last dim 6 must be a positive multiple of factor 4"):
        MF.sum_pool(x, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_masked_softmax_zero_for_masked_and_fully_masked_rows(dtype):
    scores = torch.randn(3, 5).to(dtype)
    mask = torch.tensor(
        [[True, True, False, True, False], [False] * 5, [True] * 5]
    )
    p = MF.masked_softmax(scores, mask)
    assert torch.isfinite(p).all()
    assert (p[~mask] == 0).all()
    torch.testing.assert_close(p[0].sum().float(), torch.tensor(1.0), atol=1e-2, rtol=0)
    assert (p[1] == 0).all()
    ref = torch.softmax(scores[0, [0, 1, 3]].float(), -1)
    torch.testing.assert_close(p[0, [0, 1, 3]].float(), ref, atol=1e-2, rtol=1e-2)
    # masked scores do not matter, even when huge
    scores2 = scores.clone()
    scores2[0, 2] = 1e4
    torch.testing.assert_close(MF.masked_softmax(scores2, mask), p)


def test_masked_softmax_gradient_finite_for_fully_masked_rows():
    s = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[False] * 4, [True, False, True, True]])
    (MF.masked_softmax(s, mask) * torch.randn(2, 4)).sum().backward()
    assert torch.isfinite(s.grad).all() and (s.grad[0] == 0).all()


def test_masked_softmax_rejects_non_bool_masks():
    with pytest.raises(ValueError, match="mask must be a bool tensor, got dtype torch.int64"):
        MF.masked_softmax(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.long))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(1, 4), max_size=4), min_size=1, max_size=4))
def test_broadcast_leading_agrees_with_torch(shapes):
    shapes = [tuple(s) for s in shapes]
    try:
        expected = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        expected = None
    assert MF.broadcast_leading(shapes) == expected


def test_check_inputs_messages():
    good = [torch.randn(8, 2048), torch.randn(8, 2400)]
    assert MF.check_inputs("mfh", good, (2048, 2400)) == (8,)
    with pytest.raises(ValueError) as e:
        MF.check_inputs("mfh", [torch.randn(8, 2048), torch.randn(8, 300)], (2048, 2400))
    assert str(e.value) == (
        "mfh: expected 2 inputs with last dims (2048, 2400), got 2 with shapes [(8, 2048), (8, 300)]"
    )
    with pytest.raises(ValueError, match=r"mfh: expected leading dims that broadcast, got shapes \[\(8, 2\), \(7, 3\)\]"):
        MF.check_inputs("mfh", [torch.randn(8, 2), torch.randn(7, 3)], (2, 3))
    with pytest.raises(ValueError, match="mfh: expected 2 inputs with last dims"):
        MF.check_inputs("mfh", [torch.randn(8, 2), torch.tensor(1.0)], (2, 3))


@pytest.mark.parametrize(
    "dims, modalities, message",
    [
        ((3,), "2+", "expected at least 2 input dims, got 1"),
        ((3, 4, 5), "2", "expected exactly 2 input dims, got 3"),
        ((3, 0), "2+", "in_dims must be positive ints, got (3, 0)"),
        ((3, 2.5), "2+", "in_dims must be positive ints"),
        ((3, True), "2+", "in_dims must be positive ints"),
        (7, "2+", "in_dims must be a sequence of ints, got 7"),
    ],
)
def test_check_dims(dims, modalities, message):
    with pytest.raises(ValueError, match=rf"^gmu: {message}".replace("(", r"\(").replace(")", r"\)")):
        MF.check_dims("gmu", dims, modalities)

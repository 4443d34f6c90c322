"""Reference tests for the simple-operation fusions: each module equals a slow, explicit
implementation written here from the paper's formula, with the module's own weights."""

from __future__ import annotations

import math

import pytest
import torch

import mmfuse
from mmfuse.fusions import Concat, ConcatMLP, LinearSum, Product, WeightedSum
from reference import _float64, assert_vec_close, dot, linear, relu, rows, vec  # noqa: F401


def test_concat_without_projection_is_the_concatenation():
    f = Concat((2, 3, 1))
    xs = [torch.randn(4, d) for d in (2, 3, 1)]
    out = f(*xs)
    assert f.out_dim == 6 and f.expected_num_parameters() == 0
    for i, r in enumerate(rows(xs)):
        assert_vec_close(vec(out[i]), r[0] + r[1] + r[2])


def test_concat_broadcast_without_projection_repeats_the_question():
    f = Concat((2, 3))
    v, q = torch.randn(2, 4, 2), torch.randn(2, 1, 3)
    out = f(v, q)
    for b in range(2):
        for k in range(4):
            assert_vec_close(vec(out[b, k]), vec(v[b, k]) + vec(q[b, 0]))


@pytest.mark.parametrize("m", [2, 3])
def test_concat_projection(m):
    dims = (4, 3, 2)[:m]
    f = Concat(dims, 5).eval()
    xs = [torch.randn(3, d) for d in dims]
    out = f(*xs)
    for i, r in enumerate(rows(xs)):
        cat = sum(r, [])
        ref = [dot(f.proj.weight[o], cat) + float(f.proj.bias[o]) for o in range(5)]
        assert_vec_close(vec(out[i]), ref)


def test_concat_projection_broadcast_path_equals_the_expanded_path():
    # the split-weight path (broadcast) and the cat path (same shapes) must agree
    f = Concat((4, 3), 5)
    v, q = torch.randn(2, 6, 4), torch.randn(2, 1, 3)
    torch.testing.assert_close(f(v, q), f(v, q.expand(2, 6, 3)))


def test_concat_mlp_reference():
    f = ConcatMLP((4, 3), 2, hidden_dims=(5, 6)).eval()
    linears = [f.first.weight, *[m for m in f.rest.modules() if isinstance(m, torch.nn.Linear)]]
    assert len(linears) == 3
    xs = [torch.randn(3, 4), torch.randn(3, 3)]
    out = f(*xs)
    for i, r in enumerate(rows(xs)):
        h = sum(r, [])
        h = relu([dot(f.first.weight[o], h) + float(f.first.bias[o]) for o in range(5)])
        h = relu(linear(linears[1], h))
        h = linear(linears[2], h)
        assert_vec_close(vec(out[i]), h)


def test_concat_mlp_without_hidden_layers_is_one_linear():
    f = ConcatMLP((4, 3), 2, hidden_dims=())
    assert f.expected_num_parameters() == (7 + 1) * 2
    xs = [torch.randn(3, 4), torch.randn(3, 3)]
    ref = torch.cat(xs, -1) @ f.first.weight.T + f.first.bias
    torch.testing.assert_close(f(*xs), ref)


def _project_combine_reference(f, r, combine, act, out_act=lambda v: v, normalize=False):
    hs = [[act(a) for a in linear(p, x)] for p, x in zip(f.inputs.linears, r)]
    z = hs[0]
    for h in hs[1:]:
        z = [a + b if combine == "sum" else a * b for a, b in zip(z, h)]
    if normalize:
        z = [math.copysign(math.sqrt(abs(a)), a) for a in z]
        n = math.sqrt(sum(a * a for a in z))
        z = [a / n for a in z]
    return [out_act(a) for a in linear(f.head.linear, z)]


@pytest.mark.parametrize("cls, combine", [(LinearSum, "sum"), (Product, "prod")])
@pytest.mark.parametrize("m", [2, 3])
def test_linear_sum_and_product_reference(cls, combine, m):
    dims = (4, 3, 5)[:m]
    f = cls(dims, 3, hidden_dim=6).eval()
    xs = [torch.randn(4, d) for d in dims]
    out = f(*xs)
    for i, r in enumerate(rows(xs)):
        assert_vec_close(vec(out[i]), _project_combine_reference(f, r, combine, lambda a: max(0.0, a)))


@pytest.mark.parametrize("cls, combine", [(LinearSum, "sum"), (Product, "prod")])
def test_linear_sum_and_product_knobs(cls, combine):
    """tanh inputs, ReLU output, signed-sqrt + L2 normalisation (block.bootstrap's variant)."""
    f = cls((4, 3), 3, hidden_dim=6, activation="tanh", output_activation="relu", normalize=True).eval()
    xs = [torch.randn(4, 4), torch.randn(4, 3)]
    out = f(*xs)
    for i, r in enumerate(rows(xs)):
        ref = _project_combine_reference(f, r, combine, math.tanh, lambda a: max(0.0, a), normalize=True)
        assert_vec_close(vec(out[i]), ref, tol=1e-7)


def test_dropout_placement():
    """dropout_input acts on raw inputs, dropout_projected after the projection."""
    f = LinearSum((4, 3), 2, hidden_dim=5, dropout_input=0.5)
    kinds = {n: type(m).__name__ for n, m in f.named_modules()}
    assert kinds["inputs.drop_in"] == "Dropout" and kinds["inputs.drop_proj"] == "Identity"
    f.train()
    torch.manual_seed(0)
    xs = [torch.randn(64, 4), torch.randn(64, 3)]
    a = f(*xs)
    f.eval()
    assert not torch.allclose(a, f(*xs))


@pytest.mark.parametrize("weights", ["softmax", "free"])
def test_weighted_sum_reference(weights):
    f = WeightedSum((4, 3, 3), 3, weights=weights).eval()
    with torch.no_grad():
        f.logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    # identity where dims already agree ("auto")
    assert isinstance(f.projections[1], torch.nn.Identity)
    assert f.expected_num_parameters() == 3 + (4 + 1) * 3
    xs = [torch.randn(2, 4), torch.randn(2, 3), torch.randn(2, 3)]
    a = [0.3, -1.0, 2.0]
    if weights == "softmax":
        e = [math.exp(v) for v in a]
        a = [v / sum(e) for v in e]
    out = f(*xs)
    for i, r in enumerate(rows(xs)):
        ref = [a[0] * p + a[1] * x1 + a[2] * x2 for p, x1, x2 in zip(linear(f.projections[0], r[0]), r[1], r[2])]
        assert_vec_close(vec(out[i]), ref)


def test_weighted_sum_starts_as_a_mean():
    f = WeightedSum((3, 3), 3)
    xs = [torch.randn(2, 3), torch.randn(2, 3)]
    torch.testing.assert_close(f(*xs), (xs[0] + xs[1]) / 2)
    g = WeightedSum((3, 3), 3, weights="free")
    torch.testing.assert_close(g(*xs), (xs[0] + xs[1]) / 2)
    h = WeightedSum((3, 3), 3, project="always")
    assert all(isinstance(p, torch.nn.Linear) for p in h.projections)


def test_bad_knobs():
    with pytest.raises(ValueError, match="weighted_sum: weights"):
        WeightedSum((3, 3), 3, weights="mean")
    with pytest.raises(ValueError, match="linear_sum: unknown activation 'swishy'"):
        LinearSum((3, 3), 3, activation="swishy")
    with pytest.raises(ValueError, match=r"linear_sum: dropout_input must be in \[0, 1\), got 1.5"):
        LinearSum((3, 3), 3, dropout_input=1.5)
    with pytest.raises(ValueError, match="product: hidden_dim must be a positive int, got 0"):
        mmfuse.create_fusion("product", in_dims=(3, 3), out_dim=3, hidden_dim=0)
    with pytest.raises(ValueError, match=r"concat_mlp: hidden_dims\[1\] must be a positive int"):
        ConcatMLP((3, 3), 3, hidden_dims=(4, -1))

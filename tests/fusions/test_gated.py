"""Reference tests for GMU, MRN and DPP against explicit implementations of the papers'
equations, with the modules' own weights."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.fusions import DPP, GMU, MRN
from reference import _float64, assert_vec_close, dot, linear, rows, vec  # noqa: F401


def sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


def tanh_vec(v):
    return [math.tanh(a) for a in v]


def test_gmu_bimodal_reference():
    f = GMU((4, 3), 5).eval()
    assert f.projections[0].bias is None and f.gate_proj.bias is None  # the paper has no biases
    xs = [torch.randn(6, 4), torch.randn(6, 3)]
    out = f(*xs)
    for i, (x1, x2) in enumerate(rows(xs)):
        h1 = tanh_vec(linear(f.projections[0], x1))
        h2 = tanh_vec(linear(f.projections[1], x2))
        z = [sigmoid(dot(f.gate_proj.weight[o], x1 + x2)) for o in range(5)]
        assert_vec_close(vec(out[i]), [zo * a + (1 - zo) * b for zo, a, b in zip(z, h1, h2)])


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_gmu_three_modalities_reference(gate):
    f = GMU((4, 3, 2), 5, gate=gate, bias=True).eval()
    xs = [torch.randn(3, 4), torch.randn(3, 3), torch.randn(3, 2)]
    out = f(*xs)
    w, b = f.gate_proj.weight, f.gate_proj.bias
    for i, r in enumerate(rows(xs)):
        cat = r[0] + r[1] + r[2]
        hs = [tanh_vec(linear(p, x)) for p, x in zip(f.projections, r)]
        ref = []
        for o in range(5):
            # gate row for modality m and feature o is m * out_dim + o
            logits = [dot(w[m * 5 + o], cat) + float(b[m * 5 + o]) for m in range(3)]
            if gate == "sigmoid":
                z = [sigmoid(a) for a in logits]
            else:
                e = [math.exp(a) for a in logits]
                z = [a / sum(e) for a in e]
            ref.append(sum(z[m] * hs[m][o] for m in range(3)))
        assert_vec_close(vec(out[i]), ref)


def test_gmu_gates_are_convex_for_softmax():
    f = GMU((4, 3, 2), 5, gate="softmax")
    z = f.gates(torch.randn(7, 4), torch.randn(7, 3), torch.randn(7, 2))
    assert z.shape == (7, 3, 5)
    torch.testing.assert_close(z.sum(-2), torch.ones(7, 5))


def test_mrn_reference():
    f = MRN((4, 3), 5, num_layers=3).eval()
    xs = [torch.randn(3, 4), torch.randn(3, 3)]
    out = f(*xs)
    for i, (v, q) in enumerate(rows(xs)):
        h = q
        for l in range(3):
            branch_v = tanh_vec(linear(f.v_proj[l], tanh_vec(linear(f.v_hidden[l], v))))
            branch_q = tanh_vec(linear(f.q_proj[l], h))
            short = linear(f.shortcut[l], h)
            h = [s + a * b for s, a, b in zip(short, branch_q, branch_v)]
        assert_vec_close(vec(out[i]), h)


def test_mrn_uses_dropout_on_every_linear_input_in_training():
    f = MRN((4, 3), 5, num_layers=1, dropout_input=0.5)
    xs = [torch.randn(32, 4), torch.randn(32, 3)]
    torch.manual_seed(0)
    a = f.train()(*xs)
    assert not torch.allclose(a, f.eval()(*xs))


def test_dpp_reference_builds_the_hashed_weight_matrix():
    f = DPP((4, 3), 5, hash_size=7, hash_seed=11).eval()
    xs = [torch.randn(3, 4), torch.randn(3, 3)]
    out = f(*xs)
    idx = f.hash_index.view(5, 4)
    for i, (x, q) in enumerate(rows(xs)):
        p = linear(f.param_net, q)
        ref = []
        for m in range(5):
            row = [p[int(idx[m, n])] * float(f.hash_sign[m, n]) for n in range(4)]
            ref.append(dot(row, x) + float(f.bias[m]))
        assert_vec_close(vec(out[i]), ref)


def test_dpp_hashing_shares_parameters_and_is_seeded():
    a = DPP((6, 3), 8, hash_size=5, hash_seed=1)
    b = DPP((6, 3), 8, hash_size=5, hash_seed=1)
    c = DPP((6, 3), 8, hash_size=5, hash_seed=2)
    assert torch.equal(a.hash_index, b.hash_index) and torch.equal(a.hash_sign, b.hash_sign)
    assert not torch.equal(a.hash_index, c.hash_index)
    assert set(a.hash_sign.unique().tolist()) == {-1.0, 1.0}
    # a 8 x 6 dynamic matrix built from 5 free values: at most 5 distinct magnitudes
    w = a.dynamic_weight(torch.randn(3))
    assert w.shape == (8, 6)
    assert len(set(w.abs().flatten().tolist())) <= 5
    # the hashes travel with the state dict
    assert {"hash_index", "hash_sign"} <= set(a.state_dict())


def test_dpp_broadcast_question_over_regions():
    f = DPP((4, 3), 5, hash_size=9).eval()
    x, q = torch.randn(2, 6, 4), torch.randn(2, 1, 3)
    torch.testing.assert_close(f(x, q), f(x, q.expand(2, 6, 3)))

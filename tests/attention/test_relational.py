"""relation_network against an explicit loop over the pairs of regions."""

from __future__ import annotations

import pytest
import torch

import mmfuse
from mmfuse.attention import RelationNetwork


def _reference(f: RelationNetwork, v, qv, v_mask) -> torch.Tensor:
    """f_φ(Σ_{i,j valid} g_θ([o_i; o_j; q])), with g_θ's first layer as ONE Linear on the concatenation."""
    w1 = torch.cat([f.g_left.weight, f.g_right.weight, f.g_question.weight], dim=1)  # [H, 2 Dv + Dq]
    b1 = f.g_left.bias
    out = []
    for n in range(v.shape[0]):
        valid = [i for i in range(v.shape[1]) if v_mask is None or v_mask[n, i]]
        total = torch.zeros(f.hidden_dim, dtype=v.dtype)
        for i in valid:
            for j in valid:
                h = torch.relu(w1 @ torch.cat([v[n, i], v[n, j], qv[n]]) + b1)
                for layer in f.g_rest:
                    h = torch.relu(layer.weight @ h + layer.bias)
                total = total + h
        if f.reduction == "mean":
            total = total / max(len(valid) ** 2, 1)
        out.append(f.linear_out(f.f_hidden(total)))
    return torch.stack(out)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@torch.no_grad()
def test_relation_network_reference(reduction):
    torch.manual_seed(0)
    f = RelationNetwork(3, 4, 5, hidden_dim=6, g_layers=3, f_dims=[7, 5], dropout=0.0, reduction=reduction,
                        dtype=torch.float64).eval()
    v = torch.randn(3, 4, 3, dtype=torch.float64)
    q = torch.randn(3, 2, 4, dtype=torch.float64)
    v_mask = torch.tensor([[True, False, True, True], [True] * 4, [False] * 4])
    q_mask = torch.tensor([[True, False], [True, True], [True, True]])
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    qv = torch.stack([q[0, 0], q[1].mean(0), q[2].mean(0)])  # masked mean of the words
    torch.testing.assert_close(out.fused, _reference(f, v, qv, v_mask))
    assert out.v_attn is None and out.q_attn is None
    assert out.extras["relations"].shape == (3, 6)
    # the row with no valid region: relations are exactly zero, the output finite
    assert out.extras["relations"][2].abs().max() == 0 and out.fused[2].isfinite().all()
    # no mask = every region valid; a question vector is used as it is
    torch.testing.assert_close(f(v, qv).fused, _reference(f, v, qv, None))


@torch.no_grad()
def test_relation_network_padding_and_order_do_not_matter():
    torch.manual_seed(1)
    f = RelationNetwork(3, 4, 5, hidden_dim=6, dtype=torch.float64).eval()
    v, q = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    base = f(v, q, v_mask=mask).fused
    v2 = v.clone()
    v2[0, 3:] = 100.0  # padded regions hold anything
    torch.testing.assert_close(f(v2, q, v_mask=mask).fused, base)
    torch.testing.assert_close(f(v[:1, :3], q[:1]).fused, base[:1])  # = the unpadded scene
    perm = torch.tensor([4, 2, 0, 3, 1])
    torch.testing.assert_close(f(v[:, perm], q, v_mask=mask[:, perm]).fused, base)


def test_relation_network_parameters_gradients_and_registry():
    torch.manual_seed(2)
    f = RelationNetwork(3, 4, 5, hidden_dim=6, g_layers=2, f_dims=[])
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters() == 4 * 6 + 3 * 6 + 4 * 6 + 7 * 6 + 7 * 5
    # the paper's Sort-of-CLEVR sizes: g 4 x 256, f 256, 256
    paper = RelationNetwork(26, 128, 10)
    assert sum(p.numel() for p in paper.parameters()) == paper.expected_num_parameters()
    v, q = torch.randn(2, 4, 3), torch.randn(2, 4)
    f(v, q).fused.square().sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all() and p.grad.abs().sum() > 0, name
    info = mmfuse.fusion_info("relation_network")
    assert info.cls is RelationNetwork and info.kind == "attention" and info.family == "relational"


def test_relation_network_bad_knobs_name_what_was_expected():
    with pytest.raises(ValueError, match=r"relation_network: reduction must be one of \('sum', 'mean'\), got 'max'"):
        RelationNetwork(3, 4, 5, reduction="max")
    with pytest.raises(ValueError, match=r"relation_network: f_dims must be positive ints, got \[8, 0\]"):
        RelationNetwork(3, 4, 5, f_dims=[8, 0])
    with pytest.raises(ValueError, match="g_layers"):
        RelationNetwork(3, 4, 5, g_layers=0)
    with pytest.raises(ValueError, match=r"relation_network: expected v of shape \[B, K, 3\]"):
        RelationNetwork(3, 4, 5)(torch.randn(2, 4), torch.randn(2, 4))

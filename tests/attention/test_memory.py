"""dmn (DMN+) against the paper's equations written one region and one pass at a time (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mmfuse
from mmfuse.attention import DMN
from mmfuse.attention.memory import masked_gru_scan

F64 = torch.float64


def _inputs(b=2, k=5, t=4, dv=3, dq=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, k, dv, generator=g, dtype=F64)
    q = torch.randn(b, t, dq, generator=g, dtype=F64)
    v_mask = torch.ones(b, k, dtype=torch.bool)
    v_mask[0, 1] = False  # holes in the middle: the recurrences must skip them
    v_mask[0, 3] = False
    v_mask[b - 1, -1] = False
    q_mask = torch.ones(b, t, dtype=torch.bool)
    q_mask[b - 1, -2:] = False
    return v, q, v_mask, q_mask


def _gru_step(cell: nn.GRUCell, x, h):
    """One step of a standard GRU (Cho et al.; nn.GRUCell's gate layout), on single vectors."""
    W_r, W_z, W_n = cell.weight_ih.chunk(3)
    U_r, U_z, U_n = cell.weight_hh.chunk(3)
    bi_r, bi_z, bi_n = cell.bias_ih.chunk(3)
    bh_r, bh_z, bh_n = cell.bias_hh.chunk(3)
    r = torch.sigmoid(W_r @ x + bi_r + U_r @ h + bh_r)
    z = torch.sigmoid(W_z @ x + bi_z + U_z @ h + bh_z)
    n = torch.tanh(W_n @ x + bi_n + r * (U_n @ h + bh_n))
    return (1 - z) * n + z * h


def _dmn_reference(f: DMN, v, q, v_mask, q_mask):
    b, k = v.shape[:2]
    hd = f.hidden_dim
    W_r, W = f.agru_input.weight.chunk(2)
    b_r, b_h = f.agru_input.bias.chunk(2)
    U_r, U = f.agru_hidden.weight.chunk(2)
    fused, maps = [], []
    for n in range(b):
        words = [q[n, t] for t in range(q.shape[1]) if q_mask[n, t]]
        qv = sum(words) / len(words)
        if hd != f.q_dim:
            qv = torch.tanh(f.q_proj[0].weight @ qv + f.q_proj[0].bias)
        valid = [i for i in range(k) if v_mask[n, i]]
        x = {i: torch.tanh(f.v_proj.weight @ v[n, i] + f.v_proj.bias) for i in valid}
        # input fusion: a bidirectional GRU over the valid regions, in order
        fwd, bwd, h = {}, {}, torch.zeros(hd, dtype=F64)
        for i in valid:
            h = _gru_step(f.fuse_fwd, x[i], h)
            fwd[i] = h
        h = torch.zeros(hd, dtype=F64)
        for i in reversed(valid):
            h = _gru_step(f.fuse_bwd, x[i], h)
            bwd[i] = h
        facts = {i: fwd[i] + bwd[i] for i in valid}
        m, row = qv, []
        for t in range(f.hops):
            scores = {}
            for i in valid:
                fi = facts[i]
                z = torch.cat([fi * qv, fi * m, (fi - qv).abs(), (fi - m).abs()])
                hidden = torch.tanh(f.gate_hidden.weight @ z + f.gate_hidden.bias)
                scores[i] = float(f.gate_score.weight[0] @ hidden + f.gate_score.bias[0])
            total = sum(math.exp(s) for s in scores.values())
            g = [math.exp(scores[i]) / total if i in scores else 0.0 for i in range(k)]
            # the attention GRU; a padded region would have g = 0 and change nothing
            h = torch.zeros(hd, dtype=F64)
            for i in valid:
                r = torch.sigmoid(W_r @ facts[i] + U_r @ h + b_r)
                h_tilde = torch.tanh(W @ facts[i] + r * (U @ h) + b_h)
                h = g[i] * h_tilde + (1 - g[i]) * h
            mem = f.memory[t]
            m = torch.relu(mem.weight @ torch.cat([m, h, qv]) + mem.bias)
            row.append(g)
        maps.append(row)
        fused.append(f.out.weight @ torch.cat([m, qv]) + f.out.bias)
    return torch.stack(fused), torch.tensor(maps, dtype=F64)


@pytest.mark.parametrize("hops, hidden_dim", [(1, None), (3, None), (2, 6)])
@torch.no_grad()
def test_dmn_reference(hops, hidden_dim):
    torch.manual_seed(0)
    f = DMN(3, 4, 5, hops=hops, hidden_dim=hidden_dim, dtype=F64).eval()
    v, q, v_mask, q_mask = _inputs()
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    fused, maps = _dmn_reference(f, v, q, v_mask, q_mask)
    assert out.v_attn.shape == (2, hops, 5)
    torch.testing.assert_close(out.v_attn, maps, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.fused, fused)
    assert out.q_attn is None


@torch.no_grad()
def test_masked_gru_scan_matches_torch_gru_and_skips_masked_steps():
    torch.manual_seed(0)
    cell = nn.GRUCell(3, 4, dtype=F64)
    gru = nn.GRU(3, 4, batch_first=True, dtype=F64)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(gru, f"{name}_l0").copy_(getattr(cell, name))
    x = torch.randn(2, 6, 3, dtype=F64)
    torch.testing.assert_close(masked_gru_scan(cell, x, None), gru(x)[0])
    torch.testing.assert_close(masked_gru_scan(cell, x, None, reverse=True), gru(x.flip(1))[0].flip(1))
    keep = [0, 2, 3, 5]
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, keep] = True
    fwd, bwd = masked_gru_scan(cell, x, mask), masked_gru_scan(cell, x, mask, reverse=True)
    torch.testing.assert_close(fwd[:, keep], gru(x[:, keep])[0])
    torch.testing.assert_close(bwd[:, keep], gru(x[:, keep].flip(1))[0].flip(1))
    torch.testing.assert_close(fwd[:, 1], fwd[:, 0])  # a masked step carries the state over
    torch.testing.assert_close(bwd[:, 4], bwd[:, 5])


@torch.no_grad()
def test_dmn_masked_regions_are_removed_regions_wherever_they_sit():
    torch.manual_seed(0)
    f = DMN(3, 4, 5, dtype=F64).eval()
    v, q, _, _ = _inputs(b=1)
    v_mask = torch.tensor([[True, False, True, False, True]])
    v_pad = v.clone()
    v_pad[0, 1] = 1e3
    out = f(v_pad, q, v_mask=v_mask)
    ref = f(v[:, [0, 2, 4]], q)
    torch.testing.assert_close(out.fused, ref.fused)
    torch.testing.assert_close(out.v_attn[..., [0, 2, 4]], ref.v_attn)
    assert (out.v_attn[..., [1, 3]] == 0).all()


@torch.no_grad()
def test_dmn_reads_regions_in_order():
    assert not mmfuse.fusion_info("dmn").order_free
    torch.manual_seed(0)
    f = DMN(3, 4, 5, dtype=F64).eval()
    v, q, _, _ = _inputs()
    perm = torch.tensor([4, 2, 0, 3, 1])
    a, b = f(v, q), f(v[:, perm], q)
    assert not torch.allclose(a.fused, b.fused)
    # the gates are not merely permuted either: the facts depend on the neighbours
    assert not torch.allclose(b.v_attn, a.v_attn[..., perm])


def test_dmn_defaults_and_structure():
    f = mmfuse.create_fusion("dmn", v_dim=3, q_dim=4, out_dim=5)
    assert (f.hops, f.hidden_dim) == (3, 4) and isinstance(f.q_proj, nn.Identity)
    assert len(f.memory) == 3  # untied memory updates, one per pass
    assert f.agru_hidden.bias is None
    g = DMN(3, 4, 5, hidden_dim=8)
    assert isinstance(g.q_proj, nn.Sequential)
    assert sum(p.numel() for p in g.parameters()) == g.expected_num_parameters()
    one_pass = DMN(3, 4, 5, hidden_dim=8, hops=1)
    assert g.expected_num_parameters() - one_pass.expected_num_parameters() == 2 * (3 * 8 + 1) * 8

"""drau (Dual Recurrent Attention Units) against an explicit LSTM loop over the valid regions
and words, written from the equations, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mmfuse
from mmfuse.attention import DualRecurrentAttention, RecurrentAttentionUnit
from mmfuse.attention.recurrent import SequenceLSTM

F64 = torch.float64


def lin(layer, x):
    return layer.weight @ x + layer.bias


def lstm_states(lstm: SequenceLSTM, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """h_1..h_N of a one-layer LSTM from a zero state, gates i, f, g, o."""
    h = c = torch.zeros(lstm.hidden_dim, dtype=F64)
    out = []
    for x in xs:
        z = lstm.weight_ih @ x + lstm.bias_ih + lstm.weight_hh @ h + lstm.bias_hh
        i, f, g, o = z.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return out


def rau_reference(unit: RecurrentAttentionUnit, x, g, valid: list[int], n_pos: int) -> torch.Tensor:
    """α: [G, N] for one batch row: the LSTM reads the valid positions only, in order."""
    gate = torch.relu(lin(unit.g_proj, g))
    seq = [torch.relu(lin(unit.x_proj, x[i])) * gate for i in valid]
    hs = lstm_states(unit.lstm, seq)
    alpha = torch.zeros(unit.glimpses, n_pos, dtype=F64)
    for gl in range(unit.glimpses):
        scores = torch.stack([unit.score.weight[gl] @ h + unit.score.bias[gl] for h in hs])
        alpha[gl, valid] = torch.softmax(scores, 0)
    return alpha


def inputs(b=2, k=6, t=5, seed=4):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, k, 3, generator=g, dtype=F64)
    q = torch.randn(b, t, 4, generator=g, dtype=F64)
    v_mask = torch.ones(b, k, dtype=torch.bool)
    v_mask[0, [1, 4]] = False  # padding in the middle, not only at the end
    v_mask[1, -1] = False
    q_mask = torch.ones(b, t, dtype=torch.bool)
    q_mask[0, 2] = False
    q_mask[1, -2:] = False
    return v, q, v_mask, q_mask


def valid(row) -> list[int]:
    return [i for i, ok in enumerate(row.tolist()) if ok]


@pytest.mark.parametrize("glimpses", [1, 2])
@torch.no_grad()
def test_drau_reference(glimpses):
    torch.manual_seed(0)
    f = DualRecurrentAttention(3, 4, 5, glimpses=glimpses, hidden_dim=6, fusion_kwargs={"hidden_dim": 7}, dtype=F64).eval()
    v, q, vm, qm = inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    assert out.v_attn.shape == (2, glimpses, 6) and out.q_attn.shape == (2, glimpses, 5)
    for n in range(2):
        ks, ts = valid(vm[n]), valid(qm[n])
        q_bar = sum(q[n, t] for t in ts) / len(ts)
        v_bar = sum(v[n, k] for k in ks) / len(ks)
        av = rau_reference(f.v_unit, v[n], q_bar, ks, 6)
        aq = rau_reference(f.q_unit, q[n], v_bar, ts, 5)
        torch.testing.assert_close(out.v_attn[n], av)
        torch.testing.assert_close(out.q_attn[n], aq)
        v_hat = torch.cat([sum(av[g, k] * v[n, k] for k in ks) for g in range(glimpses)])
        q_hat = torch.cat([sum(aq[g, t] * q[n, t] for t in ts) for g in range(glimpses)])
        # fused = f([v̂_1; ..; v̂_G], [q̂_1; ..; q̂_G]) with the vector fusion (tested on its own)
        torch.testing.assert_close(out.fused[n], f.fusion(v_hat[None], q_hat[None])[0])


@torch.no_grad()
def test_sequence_lstm_is_nn_lstm():
    torch.manual_seed(0)
    mine = SequenceLSTM(3, 4, dtype=F64)
    ref = nn.LSTM(3, 4, batch_first=True, dtype=F64)
    for a, b in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")):
        getattr(ref, b).copy_(getattr(mine, a))
    x = torch.randn(2, 5, 3, dtype=F64)
    torch.testing.assert_close(mine(x), ref(x)[0])
    assert all(p.abs().max() <= 0.5 for p in mine.parameters())  # U(-1/sqrt(H), 1/sqrt(H)), H = 4


@torch.no_grad()
def test_middle_padding_does_not_reach_the_lstm():
    """Padding anywhere (not only at the end) changes nothing, and equals dropping it."""
    f = DualRecurrentAttention(3, 4, 5, hidden_dim=6, dtype=F64).eval()
    v, q, vm, qm = inputs()
    ref = f(v, q, v_mask=vm, q_mask=qm)
    v2, q2 = v.clone(), q.clone()
    v2[~vm] = 1e3
    q2[~qm] = -1e3
    out = f(v2, q2, v_mask=vm, q_mask=qm)
    torch.testing.assert_close(out.fused, ref.fused)
    torch.testing.assert_close(out.v_attn, ref.v_attn)
    torch.testing.assert_close(out.q_attn, ref.q_attn)
    # row 0 without its padded regions and words, as a shorter unpadded input
    ks, ts = valid(vm[0]), valid(qm[0])
    short = f(v[:1, ks], q[:1, ts])
    torch.testing.assert_close(short.fused, ref.fused[:1])
    torch.testing.assert_close(short.v_attn, ref.v_attn[:1, :, ks])
    torch.testing.assert_close(short.q_attn, ref.q_attn[:1, :, ts])


@torch.no_grad()
def test_drau_attention_depends_on_region_order():
    assert not mmfuse.fusion_info("drau").order_free
    f = DualRecurrentAttention(3, 4, 5, hidden_dim=6, dtype=F64).eval()
    v, q, _, _ = inputs()
    perm = torch.tensor([5, 3, 0, 1, 4, 2])
    a, b = f(v, q), f(v[:, perm], q)
    assert not torch.allclose(b.v_attn, a.v_attn[..., perm], atol=1e-6)


def test_drau_fusion_by_name_or_module_and_parameters():
    att = mmfuse.create_fusion("drau", v_dim=3, q_dim=4, out_dim=5, hidden_dim=6, glimpses=2, fusion="concat")
    assert type(att.fusion).__name__ == "Concat" and att.fusion.in_dims == (6, 8)
    # per RAU: (3+1)*6 + (4+1)*6 + 4*6*(2*6+2) + (6+1)*2; two RAUs; concat (6+8+1)*5
    rau = 24 + 30 + 336 + 14
    assert sum(p.numel() for p in att.parameters()) == 2 * rau + 75 == att.expected_num_parameters()
    gmu = mmfuse.create_fusion("gmu", in_dims=(3, 4), out_dim=5)
    att2 = DualRecurrentAttention(3, 4, 5, hidden_dim=6, glimpses=1, fusion=gmu)
    assert att2.fusion is gmu
    assert att2.expected_num_parameters() == 2 * (24 + 30 + 336 + 7) + sum(p.numel() for p in gmu.parameters())
    with pytest.raises(ValueError, match=r"drau: the fusion module must take in_dims \(6, 8\), it has \(3, 4\)"):
        DualRecurrentAttention(3, 4, 5, hidden_dim=6, glimpses=2, fusion=gmu)
    with pytest.raises(ValueError, match="drau: glimpses must be a positive int, got 0"):
        DualRecurrentAttention(3, 4, 5, glimpses=0)


def test_drau_gradients_reach_both_lstms_and_not_the_padding():
    f = DualRecurrentAttention(3, 4, 5, hidden_dim=6, dtype=F64)
    v, q, vm, qm = inputs()
    v.requires_grad_(True)
    q.requires_grad_(True)
    f(v, q, v_mask=vm, q_mask=qm).fused.square().sum().backward()
    for unit in (f.v_unit, f.q_unit):
        assert unit.lstm.weight_hh.grad.abs().sum() > 0 and unit.lstm.weight_ih.grad.abs().sum() > 0
    assert (v.grad[~vm] == 0).all() and (q.grad[~qm] == 0).all()
    assert (v.grad[vm].abs().sum(-1) > 0).all()

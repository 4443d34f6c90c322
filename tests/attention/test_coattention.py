"""coattention (HieCoAtt) and dan (Dual Attention Networks) against explicit loops over
regions, words and steps, written from the papers' equations, in float64."""

from __future__ import annotations

import pytest
import torch

import mmfuse
from mmfuse.attention import CoAttention, DualAttention

F64 = torch.float64


def lin(layer, x):
    """A Linear layer applied to one vector, written out."""
    out = layer.weight @ x
    return out if layer.bias is None else out + layer.bias


def softmax_over(scores: dict[int, torch.Tensor], n: int) -> list[torch.Tensor]:
    """Softmax over the valid positions (the keys of ``scores``); 0 elsewhere."""
    z = sum(torch.exp(s) for s in scores.values())
    return [torch.exp(scores[i]) / z if i in scores else torch.zeros((), dtype=F64) for i in range(n)]


def inputs(v_dim=3, q_dim=4, b=2, k=5, t=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, k, v_dim, generator=g, dtype=F64)
    q = torch.randn(b, t, q_dim, generator=g, dtype=F64)
    v_mask = torch.ones(b, k, dtype=torch.bool)
    v_mask[0, 1] = False  # padding in the middle as well as at the end
    v_mask[1, -1] = False
    q_mask = torch.ones(b, t, dtype=torch.bool)
    q_mask[0, -1] = False
    q_mask[1, 0] = False
    return v, q, v_mask, q_mask


def valid(mask_row) -> list[int]:
    return [i for i, ok in enumerate(mask_row.tolist()) if ok]


# ---------------------------------------------------------------- coattention


@pytest.mark.parametrize("v_dim", [3, 4])
@torch.no_grad()
def test_parallel_coattention_reference(v_dim):
    torch.manual_seed(0)
    f = CoAttention(v_dim, 4, 5, hidden_dim=6, dtype=F64).eval()
    v, q, vm, qm = inputs(v_dim=v_dim)
    out = f(v, q, v_mask=vm, q_mask=qm)
    for n in range(2):
        ks, ts = valid(vm[n]), valid(qm[n])
        # C[t][k] = tanh(q_t^T (W_b v_k + b_b)) over valid pairs only
        c = {(t, k): torch.tanh(q[n, t] @ lin(f.affinity, v[n, k])) for t in ts for k in ks}
        for t in range(4):
            for k in range(5):
                want = c.get((t, k), torch.zeros((), dtype=F64))
                assert torch.allclose(out.extras["affinity"][n, t, k], want)
        hv = {k: torch.tanh(lin(f.v_proj, v[n, k]) + sum(c[t, k] * lin(f.q_proj, q[n, t]) for t in ts)) for k in ks}
        hq = {t: torch.tanh(lin(f.q_proj, q[n, t]) + sum(c[t, k] * lin(f.v_proj, v[n, k]) for k in ks)) for t in ts}
        av = softmax_over({k: lin(f.v_score, h)[0] for k, h in hv.items()}, 5)
        aq = softmax_over({t: lin(f.q_score, h)[0] for t, h in hq.items()}, 4)
        torch.testing.assert_close(out.v_attn[n, 0], torch.stack(av))
        torch.testing.assert_close(out.q_attn[n, 0], torch.stack(aq))
        v_hat = sum(av[k] * v[n, k] for k in range(5))
        q_hat = sum(aq[t] * q[n, t] for t in range(4))
        e_v = v_hat if v_dim == 4 else f.v_embed.weight @ v_hat
        torch.testing.assert_close(out.fused[n], torch.tanh(lin(f.linear_out, q_hat + e_v)))
    assert isinstance(f.v_embed, torch.nn.Identity) == (v_dim == 4)


@torch.no_grad()
def test_alternating_coattention_reference():
    torch.manual_seed(0)
    f = CoAttention(3, 4, 5, mode="alternating", hidden_dim=6, dtype=F64).eval()
    v, q, vm, qm = inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    for n in range(2):
        ks, ts = valid(vm[n]), valid(qm[n])
        # s = Â(Q, 0)
        a_s = softmax_over({t: lin(f.q_first_score, torch.tanh(lin(f.q_first_proj, q[n, t])))[0] for t in ts}, 4)
        s = sum(a_s[t] * q[n, t] for t in range(4))
        # v̂ = Â(V, s)
        g = lin(f.v_guide, s)
        av = softmax_over({k: lin(f.v_score, torch.tanh(lin(f.v_proj, v[n, k]) + g))[0] for k in ks}, 5)
        v_hat = sum(av[k] * v[n, k] for k in range(5))
        # q̂ = Â(Q, v̂)
        g = lin(f.q_guide, v_hat)
        aq = softmax_over({t: lin(f.q_score, torch.tanh(lin(f.q_proj, q[n, t]) + g))[0] for t in ts}, 4)
        q_hat = sum(aq[t] * q[n, t] for t in range(4))
        torch.testing.assert_close(out.extras["q_attn_first"][n, 0], torch.stack(a_s))
        torch.testing.assert_close(out.v_attn[n, 0], torch.stack(av))
        torch.testing.assert_close(out.q_attn[n, 0], torch.stack(aq))
        torch.testing.assert_close(out.fused[n], torch.tanh(lin(f.linear_out, q_hat + f.v_embed.weight @ v_hat)))


@torch.no_grad()
def test_alternating_first_question_attention_ignores_the_image_and_the_last_one_does_not():
    f = CoAttention(3, 4, 5, mode="alternating", hidden_dim=6).eval()
    v, q, vm, qm = (x.float() if x.is_floating_point() else x for x in inputs())
    a = f(v, q, v_mask=vm, q_mask=qm)
    b = f(v + torch.randn_like(v), q, v_mask=vm, q_mask=qm)
    torch.testing.assert_close(a.extras["q_attn_first"], b.extras["q_attn_first"])
    assert not torch.allclose(a.q_attn, b.q_attn, atol=1e-4)


@torch.no_grad()
def test_parallel_image_attention_is_guided_by_the_words():
    f = CoAttention(3, 4, 5, hidden_dim=6).eval()
    v, q, vm, qm = (x.float() if x.is_floating_point() else x for x in inputs())
    a = f(v, q, v_mask=vm, q_mask=qm)
    b = f(v, q + torch.randn_like(q), v_mask=vm, q_mask=qm)
    assert not torch.allclose(a.v_attn, b.v_attn, atol=1e-4)


def test_coattention_modes_parameters_and_errors():
    par = mmfuse.create_fusion("coattention", v_dim=3, q_dim=4, out_dim=5, hidden_dim=6)
    alt = mmfuse.create_fusion("coattention", v_dim=3, q_dim=4, out_dim=5, hidden_dim=6, mode="alternating")
    # parallel: W_b (3+1)*4, W_v (3+1)*6, W_q (4+1)*6, two scorers 7 each, E 3*4, out (4+1)*5
    assert sum(p.numel() for p in par.parameters()) == 16 + 24 + 30 + 14 + 12 + 25
    # alternating: 3 (4+1)*6 + 2 (3+1)*6 + 3*7 + E 12 + out 25
    assert sum(p.numel() for p in alt.parameters()) == 90 + 48 + 21 + 12 + 25
    assert par.extra_repr().endswith("mode='parallel', hidden_dim=6")
    with pytest.raises(ValueError, match="coattention: mode must be 'parallel' or 'alternating', got 'serial'"):
        CoAttention(3, 4, 5, mode="serial")
    with pytest.raises(ValueError, match="coattention: hidden_dim must be a positive int, got 0"):
        CoAttention(3, 4, 5, hidden_dim=0)
    with pytest.raises(ValueError, match=r"coattention: dropout_attention must be in \[0, 1\), got 1.5"):
        CoAttention(3, 4, 5, dropout_attention=1.5)


def test_coattention_dropout_acts_in_training_only():
    f = CoAttention(3, 4, 5, hidden_dim=6)
    v, q, vm, qm = (x.float() if x.is_floating_point() else x for x in inputs())
    f.train()
    torch.manual_seed(1)
    a = f(v, q, vm, qm).fused
    torch.manual_seed(2)
    b = f(v, q, vm, qm).fused
    assert not torch.allclose(a, b)
    f.eval()
    assert torch.equal(f(v, q, vm, qm).fused, f(v, q, vm, qm).fused)


# ---------------------------------------------------------------- dan


def dan_reference(f: DualAttention, v, q, vm, qm, n):
    """r-DAN / m-DAN for batch row ``n``, step by step, one region and one word at a time."""
    ks, ts = valid(vm[n]), valid(qm[n])
    v0 = torch.tanh(lin(f.v_init, sum(v[n, k] for k in ks) / len(ks)))
    u0 = sum(q[n, t] for t in ts) / len(ts)
    reasoning = f.mode == "reasoning"
    m_v, m_u = (v0 * u0, v0 * u0) if reasoning else (v0, u0)
    sims, v_maps, u_maps = [v0 @ u0], [], []
    for st in f.steps:
        gv = torch.tanh(lin(st.v_memory, m_v))
        av = softmax_over({k: lin(st.v_score, torch.tanh(lin(st.v_feat, v[n, k])) * gv)[0] for k in ks}, v.shape[1])
        gu = torch.tanh(lin(st.q_memory, m_u))
        au = softmax_over({t: lin(st.q_score, torch.tanh(lin(st.q_feat, q[n, t])) * gu)[0] for t in ts}, q.shape[1])
        vk = torch.tanh(lin(st.v_out, sum(av[k] * v[n, k] for k in ks)))
        uk = sum(au[t] * q[n, t] for t in ts)
        if reasoning:
            m_v = m_u = m_v + vk * uk
        else:
            m_v, m_u = m_v + vk, m_u + uk
        sims.append(vk @ uk)
        v_maps.append(torch.stack(av))
        u_maps.append(torch.stack(au))
    memory = m_v if reasoning else torch.cat([m_v, m_u])
    return lin(f.linear_out, memory), torch.stack(v_maps), torch.stack(u_maps), memory, torch.stack(sims)


@pytest.mark.parametrize("mode", ["reasoning", "matching"])
@pytest.mark.parametrize("hops", [1, 2, 3])
@torch.no_grad()
def test_dan_reference(mode, hops):
    torch.manual_seed(0)
    f = DualAttention(3, 4, 5, mode=mode, hops=hops, hidden_dim=6, dtype=F64).eval()
    v, q, vm, qm = inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    assert out.extras["v_attn_hops"].shape == (2, hops, 5)
    assert out.extras["q_attn_hops"].shape == (2, hops, 4)
    for n in range(2):
        fused, v_maps, u_maps, memory, sims = dan_reference(f, v, q, vm, qm, n)
        torch.testing.assert_close(out.fused[n], fused)
        torch.testing.assert_close(out.extras["v_attn_hops"][n], v_maps)
        torch.testing.assert_close(out.extras["q_attn_hops"][n], u_maps)
        torch.testing.assert_close(out.v_attn[n], v_maps[-1:])
        torch.testing.assert_close(out.q_attn[n], u_maps[-1:])
        torch.testing.assert_close(out.extras["memory"][n], memory)
        if mode == "matching":
            torch.testing.assert_close(out.extras["hop_similarity"][n], sims)
            torch.testing.assert_close(out.extras["similarity"][n], sims.sum())
    assert ("similarity" in out.extras) == (mode == "matching")


@torch.no_grad()
def test_matching_similarity_is_the_dot_product_of_the_joint_embeddings():
    """S = sum_k v^k . u^k = z_v . z_u with z = [x^0; ..; x^K] (the paper's inference form)."""
    torch.manual_seed(0)
    f = DualAttention(3, 4, 5, mode="matching", hidden_dim=6, dtype=F64).eval()
    v, q, vm, qm = inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    for n in range(2):
        ks, ts = valid(vm[n]), valid(qm[n])
        z_v = [torch.tanh(lin(f.v_init, sum(v[n, k] for k in ks) / len(ks)))]
        z_u = [sum(q[n, t] for t in ts) / len(ts)]
        for s, st in enumerate(f.steps):
            av, au = out.extras["v_attn_hops"][n, s], out.extras["q_attn_hops"][n, s]
            z_v.append(torch.tanh(lin(st.v_out, av @ v[n])))
            z_u.append(au @ q[n])
        torch.testing.assert_close(out.extras["similarity"][n], torch.cat(z_v) @ torch.cat(z_u))


@torch.no_grad()
def test_reasoning_memory_couples_the_modalities_and_matching_keeps_them_apart():
    """r-DAN's visual attention depends on the text (joint memory); m-DAN's does not."""
    v, q, vm, qm = (x.float() if x.is_floating_point() else x for x in inputs())
    q2 = q + torch.randn_like(q)
    r = DualAttention(3, 4, 5, hidden_dim=6).eval()
    assert not torch.allclose(r(v, q, vm, qm).extras["v_attn_hops"], r(v, q2, vm, qm).extras["v_attn_hops"], atol=1e-4)
    m = DualAttention(3, 4, 5, mode="matching", hidden_dim=6).eval()
    torch.testing.assert_close(m(v, q, vm, qm).extras["v_attn_hops"], m(v, q2, vm, qm).extras["v_attn_hops"])
    v2 = v + torch.randn_like(v)
    torch.testing.assert_close(m(v, q, vm, qm).extras["q_attn_hops"], m(v2, q, vm, qm).extras["q_attn_hops"])


def test_dan_steps_parameters_and_errors():
    def count(**kw):
        return sum(p.numel() for p in DualAttention(3, 4, 5, hidden_dim=6, **kw).parameters())

    # P^0 (3+1)*4; per step (3+1)*6 + 3 (4+1)*6 + 2*7 + (3+1)*4 = 24 + 90 + 14 + 16; out (c*4+1)*5
    assert count(hops=2) == 16 + 2 * 144 + 25
    assert count(hops=3) == 16 + 3 * 144 + 25
    assert count(hops=2, mode="matching") == 16 + 2 * 144 + 45
    assert len(DualAttention(3, 4, 5).steps) == 2  # the paper's K = 2
    with pytest.raises(ValueError, match="dan: mode must be 'reasoning' or 'matching', got 'both'"):
        DualAttention(3, 4, 5, mode="both")
    with pytest.raises(ValueError, match="dan: hops must be a positive int, got 0"):
        DualAttention(3, 4, 5, hops=0)


@pytest.mark.parametrize("cls, mode", [(CoAttention, "alternating"), (DualAttention, "matching")])
def test_non_default_modes_compile_and_export(cls, mode):
    """The contract suite builds the default modes; the other modes trace too."""
    torch._dynamo.reset()
    f = cls(3, 4, 5, mode=mode, hidden_dim=6).eval()
    v, q, vm, qm = (x.float() if x.is_floating_point() else x for x in inputs())
    ref = f(v, q, v_mask=vm, q_mask=qm)
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(v, q, v_mask=vm, q_mask=qm).fused, ref.fused)
    exported = torch.export.export(f, (v, q), {"v_mask": vm, "q_mask": qm})
    out = exported.module()(v, q, v_mask=vm, q_mask=qm)
    torch.testing.assert_close(out.fused, ref.fused)
    for key, value in ref.extras.items():
        torch.testing.assert_close(out.extras[key], value)

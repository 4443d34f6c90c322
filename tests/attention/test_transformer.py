"""vilbert, lxmert and mcan against explicit per-vector implementations of the papers' equations.

The references below work on Python lists of single vectors (float64), loop over heads, queries
and keys, and compute every softmax by hand over the VALID keys only: padding never enters them,
so matching them also shows that padding does not influence the modules.
"""

from __future__ import annotations

import math

import pytest
import torch

import mmfuse
from mmfuse.attention import LXMERT, MCAN, ViLBERT
from mmfuse.attention.transformer import MultiHeadAttention

DT = torch.float64
B, K, T, DV, DQ, OUT = 4, 5, 4, 6, 3, 7


# ---------------------------------------------------------------- slow reference pieces


def lin(m, x):
    return m.weight @ x + m.bias


def layer_norm(m, x):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / torch.sqrt(var + m.eps) * m.weight + m.bias


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def relu(x):
    return torch.clamp(x, min=0.0)


def softmax(scores):
    if not scores:
        return []
    top = max(scores)
    e = [math.exp(s - top) for s in scores]
    z = sum(e)
    return [x / z for x in e]


def ref_mha(m, xs, cs):
    """Outputs for each query in ``xs`` over the context vectors ``cs``, and the head-mean maps."""
    heads, dim = m.heads, m.dim
    d = dim // heads
    keys, values = [lin(m.key, c) for c in cs], [lin(m.value, c) for c in cs]
    outs, maps = [], []
    for x in xs:
        qv = lin(m.query, x)
        parts, avg = [], [0.0] * len(cs)
        for h in range(heads):
            lo, hi = h * d, (h + 1) * d
            p = softmax([float(qv[lo:hi] @ k[lo:hi]) / math.sqrt(d) for k in keys])
            head = torch.zeros(d, dtype=DT)
            for j, pj in enumerate(p):
                head = head + pj * values[j][lo:hi]
                avg[j] += pj / heads
            parts.append(head)
        outs.append(lin(m.out, torch.cat(parts)))
        maps.append(avg)
    return outs, maps


def ref_att_sub(sub, xs, cs):
    outs, maps = ref_mha(sub.attention, xs, cs)
    return [layer_norm(sub.norm, x + o) for x, o in zip(xs, outs)], maps


def ref_ffn_sub(sub, xs, act):
    f = sub.ffn
    return [layer_norm(sub.norm, x + lin(f.fc2, act(lin(f.fc1, x)))) for x in xs]


def ref_layer(layer, xs, act):
    return ref_ffn_sub(layer.ffn, ref_att_sub(layer.self_attention, xs, xs)[0], act)


def ref_flat(flat, xs, idx, n):
    """AttFlat over the valid vectors ``xs`` (at positions ``idx`` of ``n``): vector, [G, n] weights."""
    g_count = flat.glimpses
    alpha = torch.zeros(g_count, n, dtype=DT)
    pooled = []
    for g in range(g_count):
        if flat.mlp is None:
            p = [1.0 / len(xs)] * len(xs) if xs else []
        else:
            fc1, fc2 = flat.mlp[0], flat.mlp[3]
            p = softmax([float(lin(fc2, relu(lin(fc1, x)))[g]) for x in xs])
        vec = torch.zeros(flat.dim, dtype=DT)
        for j, pj in enumerate(p):
            vec = vec + pj * xs[j]
            alpha[g, idx[j]] = pj
        pooled.append(vec)
    return lin(flat.merge, torch.cat(pooled)), alpha


def embed(e, x):
    y = lin(e.proj, x)
    return layer_norm(e.norm, y) if isinstance(e.norm, torch.nn.LayerNorm) else y


def scatter(maps, rows, cols, n_rows, n_cols):
    full = torch.zeros(n_rows, n_cols, dtype=DT)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            full[i, j] = maps[a][b]
    return full


# ---------------------------------------------------------------- inputs


def inputs(seed=3):
    """Regions [4, 5, 6], words [4, 4, 3]; row 0 pads 2 regions, row 1 pads a word, row 2 pads
    every word, row 3 every region. Padding holds large values that must not matter."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, K, DV, generator=g, dtype=DT)
    q = torch.randn(B, T, DQ, generator=g, dtype=DT)
    vm = torch.ones(B, K, dtype=torch.bool)
    qm = torch.ones(B, T, dtype=torch.bool)
    vm[0, [1, 4]] = False
    qm[1, 2] = False
    qm[2] = False
    vm[3] = False
    v[~vm] = 50 * torch.randn(int((~vm).sum()), DV, generator=g, dtype=DT)
    q[~qm] = 50 * torch.randn(int((~qm).sum()), DQ, generator=g, dtype=DT)
    return v, q, vm, qm


def valid(mask_row):
    return [i for i in range(mask_row.shape[0]) if mask_row[i]]


def small(cls, **kw):
    torch.manual_seed(0)
    base = dict(hidden_dim=8, heads=2, ffn_dim=12, num_layers=2, flat_mlp_dim=5, dtype=DT)
    return cls(DV, DQ, OUT, **{**base, **kw}).eval()


# ---------------------------------------------------------------- multi-head attention


def test_mha_sdpa_path_equals_explicit_path_and_handles_fully_masked_rows():
    torch.manual_seed(0)
    m = MultiHeadAttention(8, 2, dtype=DT).eval()
    x, c = torch.randn(3, 4, 8, dtype=DT), torch.randn(3, 6, 8, dtype=DT, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1, 0, 1], [0] * 6, [1] * 6], dtype=torch.bool)
    fast, none = m(x, c, mask)
    slow, w = m(x, c, mask, need_weights=True)
    assert none is None and w.shape == (3, 4, 6)
    torch.testing.assert_close(fast, slow)
    assert torch.isfinite(fast).all()
    # a fully masked row: every head is 0, so the output is W_o's bias
    torch.testing.assert_close(fast[1], m.out.bias.expand(4, 8))
    assert (w[1] == 0).all() and (w[~mask.unsqueeze(1).expand_as(w)] == 0).all()
    torch.testing.assert_close(w[[0, 2]].sum(-1), torch.ones(2, 4, dtype=DT))
    # padding keys get exactly zero gradient through the SDPA path
    fast.sum().backward()
    assert (c.grad[~mask] == 0).all() and (c.grad[mask] != 0).any()
    torch.testing.assert_close(m(x, c)[0], m(x, c, torch.ones(3, 6, dtype=torch.bool))[0])


@torch.no_grad()
def test_mha_matches_the_per_head_reference():
    torch.manual_seed(1)
    m = MultiHeadAttention(6, 3, dtype=DT).eval()
    x, c = torch.randn(1, 2, 6, dtype=DT), torch.randn(1, 4, 6, dtype=DT)
    mask = torch.tensor([[True, False, True, True]])
    out, w = m(x, c, mask, need_weights=True)
    ref, maps = ref_mha(m, [x[0, 0], x[0, 1]], [c[0, j] for j in (0, 2, 3)])
    torch.testing.assert_close(out[0], torch.stack(ref))
    torch.testing.assert_close(w[0], scatter(maps, [0, 1], [0, 2, 3], 2, 4))


def test_mha_heads_must_divide_the_width():
    with pytest.raises(ValueError, match=r"heads \(3\) must divide the width \(8\)"):
        MultiHeadAttention(8, 3)


# ---------------------------------------------------------------- ViLBERT


def ref_vilbert(f, v, q, vm, qm, n):
    vi, ti = valid(vm[n]), valid(qm[n])
    V = [embed(f.v_embed, v[n, i]) for i in vi]
    Q = [embed(f.q_embed, q[n, t]) for t in ti]
    for layer in f.v_layers:
        V = ref_layer(layer, V, gelu)
    for layer in f.q_layers:
        Q = ref_layer(layer, Q, gelu)
    v2q, q2v = [], []
    for blk in f.blocks:
        Vn, a_vq = ref_att_sub(blk.v_cross, V, Q)  # both from the same inputs
        Qn, a_qv = ref_att_sub(blk.q_cross, Q, V)
        V, Q = ref_ffn_sub(blk.v_ffn, Vn, gelu), ref_ffn_sub(blk.q_ffn, Qn, gelu)
        V, Q = ref_layer(blk.v_layer, V, gelu), ref_layer(blk.q_layer, Q, gelu)
        v2q.append(scatter(a_vq, vi, ti, K, T))
        q2v.append(scatter(a_qv, ti, vi, T, K))
    pv, av = ref_flat(f.v_pool, V, vi, K)
    pq, aq = ref_flat(f.q_pool, Q, ti, T)
    return relu(pq) * relu(pv), av, aq, torch.stack(v2q), torch.stack(q2v)


@pytest.mark.parametrize(
    "kw",
    [{}, {"pooling": "attflat", "glimpses": 2}, {"num_q_layers": 1, "num_v_layers": 2, "num_layers": 1}],
    ids=["mean", "attflat-G2", "single-stream-layers"],
)
@torch.no_grad()
def test_vilbert_reference(kw):
    f = small(ViLBERT, **kw)
    v, q, vm, qm = inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    assert out.extras["v2q_attn"].shape == (B, f.num_layers, K, T)
    assert out.extras["q2v_attn"].shape == (B, f.num_layers, T, K)
    for n in range(B):
        fused, av, aq, v2q, q2v = ref_vilbert(f, v, q, vm, qm, n)
        torch.testing.assert_close(out.fused[n], fused)
        torch.testing.assert_close(out.v_attn[n], av)
        torch.testing.assert_close(out.q_attn[n], aq)
        torch.testing.assert_close(out.extras["v2q_attn"][n], v2q)
        torch.testing.assert_close(out.extras["q2v_attn"][n], q2v)


@torch.no_grad()
def test_vilbert_mean_pooling_is_uniform_over_valid_positions():
    f = small(ViLBERT)
    v, q, vm, qm = inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    torch.testing.assert_close(out.v_attn[:, 0], vm.to(DT) / vm.sum(-1, keepdim=True).clamp_min(1))
    torch.testing.assert_close(out.q_attn[:, 0], qm.to(DT) / qm.sum(-1, keepdim=True).clamp_min(1))
    att = small(ViLBERT, pooling="attflat")(v, q, v_mask=vm, q_mask=qm)
    assert not torch.allclose(att.v_attn[0, 0][vm[0]], out.v_attn[0, 0][vm[0]])


# ---------------------------------------------------------------- LXMERT


def ref_lxmert(f, v, q, vm, qm, n):
    vi, ti = valid(vm[n]), valid(qm[n])
    V = [embed(f.v_embed, v[n, i]) for i in vi]
    Q = [embed(f.q_embed, q[n, t]) for t in ti]
    for layer in f.q_layers:
        Q = ref_layer(layer, Q, gelu)
    for layer in f.v_layers:
        V = ref_layer(layer, V, gelu)
    v2q, q2v = [], []
    for i, x in enumerate(f.x_layers):
        last = i == f.num_layers - 1
        Qn, a_qv = ref_att_sub(x.q_cross, Q, V)
        q2v.append(scatter(a_qv, ti, vi, T, K))
        if not last:
            cross = x.q_cross if f.shared_cross_attention else x.v_cross
            Vn, a_vq = ref_att_sub(cross, V, Q)
            v2q.append(scatter(a_vq, vi, ti, K, T))
            V = ref_layer(x.v_layer, Vn, gelu)
        Q = ref_layer(x.q_layer, Qn, gelu)
    pq, aq = ref_flat(f.q_pool, Q, ti, T)
    v2q = torch.stack(v2q) if v2q else torch.zeros(0, K, T, dtype=DT)
    return torch.tanh(pq), aq, v2q, torch.stack(q2v)


@pytest.mark.parametrize(
    "kw",
    [
        {"num_q_layers": 1, "num_v_layers": 1},
        {"num_q_layers": 0, "num_v_layers": 2, "shared_cross_attention": False, "num_layers": 3},
        {"num_q_layers": 1, "num_v_layers": 0, "pooling": "attflat", "glimpses": 2, "num_layers": 1},
    ],
    ids=["shared", "unshared-3-layers", "attflat-1-layer"],
)
@torch.no_grad()
def test_lxmert_reference(kw):
    f = small(LXMERT, **kw)
    v, q, vm, qm = inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    assert out.v_attn is None
    assert out.extras["v2q_attn"].shape == (B, f.num_layers - 1, K, T)
    assert out.extras["q2v_attn"].shape == (B, f.num_layers, T, K)
    for n in range(B):
        fused, aq, v2q, q2v = ref_lxmert(f, v, q, vm, qm, n)
        torch.testing.assert_close(out.fused[n], fused)
        torch.testing.assert_close(out.q_attn[n], aq)
        torch.testing.assert_close(out.extras["v2q_attn"][n], v2q)
        torch.testing.assert_close(out.extras["q2v_attn"][n], q2v)


def test_lxmert_cross_attention_sharing_and_the_pruned_last_layer():
    shared, unshared = small(LXMERT, num_layers=3), small(LXMERT, num_layers=3, shared_cross_attention=False)
    assert all(x.v_cross is None for x in shared.x_layers)
    assert [x.v_cross is None for x in unshared.x_layers] == [False, False, True]
    assert [x.v_layer is None for x in shared.x_layers] == [False, False, True]
    a = shared.spec.attention_params()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unshared) - count(shared) == 2 * a
    assert unshared.expected_num_parameters() - shared.expected_num_parameters() == 2 * a
    # the shared sublayer serves both directions: changing it changes both kinds of map
    v, q, vm, qm = inputs()
    with torch.no_grad():
        ref = shared(v, q, vm, qm)
        shared.x_layers[0].q_cross.attention.key.weight.mul_(2.0)
        out = shared(v, q, vm, qm)
    assert not torch.allclose(out.extras["v2q_attn"][:, 0], ref.extras["v2q_attn"][:, 0])
    assert not torch.allclose(out.extras["q2v_attn"][:, 0], ref.extras["q2v_attn"][:, 0])


# ---------------------------------------------------------------- MCAN


def ref_mcan(f, v, q, vm, qm, n):
    vi, ti = valid(vm[n]), valid(qm[n])
    V = [embed(f.v_embed, v[n, i]) for i in vi]
    Q = [embed(f.q_embed, q[n, t]) for t in ti]
    for enc in f.encoder:
        Q = ref_layer(enc, Q, relu)
    maps = []
    for dec in f.decoder:
        V = ref_att_sub(dec.self_attention, V, V)[0]
        V, a = ref_att_sub(dec.guided_attention, V, Q)  # guided by the LAST encoder output
        V = ref_ffn_sub(dec.ffn, V, relu)
        maps.append(scatter(a, vi, ti, K, T))
    pv, av = ref_flat(f.v_flat, V, vi, K)
    pq, aq = ref_flat(f.q_flat, Q, ti, T)
    return layer_norm(f.norm, pv + pq), av, aq, torch.stack(maps)


@pytest.mark.parametrize("kw", [{}, {"glimpses": 2, "num_layers": 3}], ids=["G1-L2", "G2-L3"])
@torch.no_grad()
def test_mcan_reference(kw):
    f = small(MCAN, **kw)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for m in f.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    v, q, vm, qm = inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    assert out.extras["v2q_attn"].shape == (B, f.num_layers, K, T)
    for n in range(B):
        fused, av, aq, maps = ref_mcan(f, v, q, vm, qm, n)
        torch.testing.assert_close(out.fused[n], fused)
        torch.testing.assert_close(out.v_attn[n], av)
        torch.testing.assert_close(out.q_attn[n], aq)
        torch.testing.assert_close(out.extras["v2q_attn"][n], maps)


def ref_pre_att_sub(sub, xs, cs, self_attention):
    """Pre-norm: ``x + MHA(LN(x), LN(x) or the given context)``."""
    xn = [layer_norm(sub.norm, x) for x in xs]
    outs, maps = ref_mha(sub.attention, xn, xn if self_attention else cs)
    return [x + o for x, o in zip(xs, outs)], maps


def ref_pre_ffn_sub(sub, xs, act):
    f = sub.ffn
    return [x + lin(f.fc2, act(lin(f.fc1, layer_norm(sub.norm, x)))) for x in xs]


@torch.no_grad()
def test_mcan_pre_norm_reference():
    f = small(MCAN, glimpses=2, norm_first=True)
    for m in f.modules():  # non-trivial LayerNorm affine parameters
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters()
    assert f.expected_num_parameters() == small(MCAN, glimpses=2).expected_num_parameters() + 4 * f.hidden_dim
    v, q, vm, qm = inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    for n in range(B):
        vi, ti = valid(vm[n]), valid(qm[n])
        V = [embed(f.v_embed, v[n, i]) for i in vi]
        Q = [embed(f.q_embed, q[n, t]) for t in ti]
        for enc in f.encoder:
            Q = ref_pre_ffn_sub(enc.ffn, ref_pre_att_sub(enc.self_attention, Q, Q, True)[0], relu)
        Q = [layer_norm(f.q_final_norm, x) for x in Q]
        maps = []
        for dec in f.decoder:
            V = ref_pre_att_sub(dec.self_attention, V, V, True)[0]
            V, a = ref_pre_att_sub(dec.guided_attention, V, Q, False)
            V = ref_pre_ffn_sub(dec.ffn, V, relu)
            maps.append(scatter(a, vi, ti, K, T))
        V = [layer_norm(f.v_final_norm, x) for x in V]
        pv, av = ref_flat(f.v_flat, V, vi, K)
        pq, aq = ref_flat(f.q_flat, Q, ti, T)
        torch.testing.assert_close(out.fused[n], layer_norm(f.norm, pv + pq))
        torch.testing.assert_close(out.v_attn[n], av)
        torch.testing.assert_close(out.q_attn[n], aq)
        torch.testing.assert_close(out.extras["v2q_attn"][n], torch.stack(maps))
    with pytest.raises(ValueError, match="mcan: norm_first must be a bool, got 'yes'"):
        small(MCAN, norm_first="yes")


@torch.no_grad()
def test_mcan_word_encoder_does_not_see_regions_and_fused_is_layer_normalised():
    f = small(MCAN)
    v, q, vm, qm = inputs()
    ref = f(v, q, v_mask=vm, q_mask=qm)
    out = f(v + torch.randn_like(v), q, v_mask=vm, q_mask=qm)
    torch.testing.assert_close(out.q_attn, ref.q_attn)  # encoder-decoder: words never attend regions
    assert not torch.allclose(out.v_attn, ref.v_attn) and not torch.allclose(out.fused, ref.fused)
    torch.testing.assert_close(ref.fused.mean(-1), torch.zeros(B, dtype=DT))
    torch.testing.assert_close(ref.fused.var(-1, unbiased=False), torch.ones(B, dtype=DT), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- all three


ALL = [ViLBERT, LXMERT, MCAN]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.fusion_name)
@torch.no_grad()
def test_changing_a_padded_word_or_region_changes_nothing(cls):
    f = small(cls)
    v, q, vm, qm = inputs()
    ref = f(v, q, v_mask=vm, q_mask=qm)
    q2, v2 = q.clone(), v.clone()
    q2[1, 2] = -1e3
    v2[0, 4] = 1e3
    out = f(v2, q2, v_mask=vm, q_mask=qm)
    for a, b in zip(out[:3], ref[:3]):
        if a is not None:
            torch.testing.assert_close(a, b)
    for key in ref.extras:
        torch.testing.assert_close(out.extras[key], ref.extras[key])
    q3 = q.clone()
    q3[1, 0] += 1.0  # a valid word does matter
    assert not torch.allclose(f(v, q3, v_mask=vm, q_mask=qm).fused[1], ref.fused[1])


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.fusion_name)
@torch.no_grad()
def test_permuting_regions_permutes_every_map(cls):
    assert mmfuse.fusion_info(cls.fusion_name).order_free
    f = small(cls)
    v, q, vm, qm = inputs()
    perm = torch.tensor([2, 4, 0, 3, 1])
    ref = f(v, q, v_mask=vm, q_mask=qm)
    out = f(v[:, perm], q, v_mask=vm[:, perm], q_mask=qm)
    torch.testing.assert_close(out.fused, ref.fused)
    if ref.v_attn is not None:
        torch.testing.assert_close(out.v_attn, ref.v_attn[..., perm])
    torch.testing.assert_close(out.extras["v2q_attn"], ref.extras["v2q_attn"][:, :, perm])
    if "q2v_attn" in ref.extras:
        torch.testing.assert_close(out.extras["q2v_attn"], ref.extras["q2v_attn"][..., perm])


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.fusion_name)
@torch.no_grad()
def test_a_question_vector_is_a_one_word_question(cls):
    f = small(cls)
    v, q, vm, _ = inputs()
    a, b = f(v, q[:, 0], v_mask=vm), f(v, q[:, :1], v_mask=vm)
    torch.testing.assert_close(a.fused, b.fused)
    for key in a.extras:
        torch.testing.assert_close(a.extras[key], b.extras[key])


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.fusion_name)
def test_dropout_is_active_in_training_only(cls):
    f = small(cls, dropout=0.3)
    v, q, vm, qm = inputs()
    torch.testing.assert_close(f(v, q, vm, qm).fused, f(v, q, vm, qm).fused)
    f.train()
    assert not torch.allclose(f(v, q, vm, qm).fused, f(v, q, vm, qm).fused)


@pytest.mark.parametrize(
    "cls, defaults",
    [
        (ViLBERT, dict(hidden_dim=1024, heads=8, ffn_dim=1024, num_layers=6, num_q_layers=0, pooling="mean")),
        (
            LXMERT,
            dict(hidden_dim=768, heads=12, ffn_dim=3072, num_layers=5, num_q_layers=9, num_v_layers=5,
                 shared_cross_attention=True),
        ),
        (MCAN, dict(hidden_dim=512, heads=8, ffn_dim=2048, num_layers=6, glimpses=1, flat_mlp_dim=512)),
    ],
    ids=["vilbert", "lxmert", "mcan"],
)
def test_paper_defaults_and_their_parameter_count(cls, defaults):
    f = cls(2048, 768, 1024, device="meta")
    for key, value in defaults.items():
        assert getattr(f, key) == value, key
    assert f.spec.dropout == 0.1
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters()


def test_mcan_small_parameter_count_by_hand():
    # MCAN-small backbone at D=512, F=2048, L=6: SA = 4*512*513 + 2*512 + 513*2048 + 2049*512 + 2*512
    sa = 4 * 512 * 513 + 1024 + 513 * 2048 + 2049 * 512 + 1024
    sga = sa + 4 * 512 * 513 + 1024
    flat = 513 * 512 + 513 * 1 + 513 * 1024
    f = MCAN(2048, 512, 1024, device="meta")
    assert f.expected_num_parameters() == 2049 * 512 + 513 * 512 + 6 * sa + 6 * sga + 2 * flat + 2 * 1024


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.fusion_name)
def test_bad_knobs_raise_clear_errors(cls):
    name = cls.fusion_name
    with pytest.raises(ValueError, match=rf"{name}: heads \(3\) must divide hidden_dim \(8\)"):
        cls(DV, DQ, OUT, hidden_dim=8, heads=3)
    with pytest.raises(ValueError, match=rf"{name}: num_layers must be a positive int, got 0"):
        cls(DV, DQ, OUT, hidden_dim=8, heads=2, num_layers=0)
    with pytest.raises(ValueError, match=rf"{name}: dropout must be in \[0, 1\), got 1.5"):
        cls(DV, DQ, OUT, hidden_dim=8, heads=2, dropout=1.5)
    if cls is not MCAN:
        with pytest.raises(ValueError, match=rf"{name}: pooling must be one of"):
            cls(DV, DQ, OUT, hidden_dim=8, heads=2, pooling="cls")
        with pytest.raises(ValueError, match=rf"{name}: pooling='mean' has 1 glimpse, got glimpses=2"):
            cls(DV, DQ, OUT, hidden_dim=8, heads=2, glimpses=2)
        with pytest.raises(ValueError, match=rf"{name}: num_q_layers must be a non-negative int, got -1"):
            cls(DV, DQ, OUT, hidden_dim=8, heads=2, num_q_layers=-1)

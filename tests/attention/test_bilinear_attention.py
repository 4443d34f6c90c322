"""mcb_attention, mlb_attention, mfb/mfh_coattention, mutan_attention and block_attention against
explicit loops over glimpses, words and regions, written from the papers' equations on single
vectors in float64 with the modules' own weights; then the method-specific claims."""

from __future__ import annotations

import math

import pytest
import torch

import mmfuse
from mmfuse.attention import (
    BilinearAttention,
    BlockAttention,
    MCBAttention,
    MFBCoAttention,
    MFHCoAttention,
    MLBAttention,
    MutanAttention,
)

F64 = torch.float64


def _inputs(b=2, k=5, t=4, dv=3, dq=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, k, dv, generator=g, dtype=F64)
    q = torch.randn(b, t, dq, generator=g, dtype=F64)
    v_mask = torch.ones(b, k, dtype=torch.bool)
    v_mask[0, 1] = False
    v_mask[b - 1, -1] = False
    q_mask = torch.ones(b, t, dtype=torch.bool)
    q_mask[b - 1, -2:] = False
    return v, q, v_mask, q_mask


# ---------------------------------------------------------------- explicit single-vector pieces


def lin(layer, x):
    return layer.weight @ x + layer.bias


def norm(z):
    """Signed square root, then L2."""
    s = torch.sign(z) * torch.sqrt(z.abs())
    return s / s.norm()


def softmax_valid(logits: dict[int, float], n: int) -> list[float]:
    z = sum(math.exp(a) for a in logits.values())
    return [math.exp(logits[i]) / z if i in logits else 0.0 for i in range(n)]


def mean_valid_words(q, q_mask, n):
    words = [q[n, t] for t in range(q.shape[1]) if q_mask[n, t]]
    return sum(words) / len(words)


def mlp2(mlp, x):
    """``Linear -> ReLU -> Linear`` (or a single Linear) of :class:`mmfuse.layers.MLP`."""
    linears = [m for m in mlp.layers if isinstance(m, torch.nn.Linear)]
    h = x
    for i, layer in enumerate(linears):
        h = lin(layer, h)
        if i < len(linears) - 1:
            h = torch.relu(h)
    return h


def head(fusion, z):
    return lin(fusion.head.linear, z) if isinstance(fusion.head.linear, torch.nn.Linear) else z


def mcb_ref(m, x, y):
    """The count sketch of x ⊗ y built entry by entry, then norm and the head."""
    (hx, sx), (hy, sy) = m.hashes()
    d = m.hidden_dim
    z = torch.zeros(d, dtype=F64)
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            z[(int(hx[i]) + int(hy[j])) % d] += float(sx[i]) * float(sy[j]) * x[i] * y[j]
    return head(m, norm(z) if m.normalize else z)


def mlb_ref(m, x, y):
    hx = torch.tanh(lin(m.inputs.linears[0], x))
    hy = torch.tanh(lin(m.inputs.linears[1], y))
    return head(m, hx * hy)


def mfh_ref(m, x, y):
    """p cascaded MFB blocks: e_i = (Ũ_i x ⊙ Ṽ_i y) ⊙ e_{i-1}, z_i = norm(SumPool_k(e_i))."""
    px, py = lin(m.inputs.linears[0], x), lin(m.inputs.linears[1], y)
    ko, k, o = m.factor * m.hidden_dim, m.factor, m.hidden_dim
    e, zs = torch.ones(ko, dtype=F64), []
    for i in range(m.order):
        e = px[i * ko : (i + 1) * ko] * py[i * ko : (i + 1) * ko] * e
        pooled = torch.stack([e[j * k : (j + 1) * k].sum() for j in range(o)])
        zs.append(norm(pooled))
    return head(m, torch.cat(zs))


def mutan_ref(m, x, y):
    """tanh projections, R rank terms per modality (rank-major rows), product, sum over R."""
    hx = torch.tanh(lin(m.inputs.linears[0], x))
    hy = torch.tanh(lin(m.inputs.linears[1], y))
    tx, ty = lin(m.rank_terms[0], hx), lin(m.rank_terms[1], hy)
    h = m.hidden_dim
    z = sum(tx[r * h : (r + 1) * h] * ty[r * h : (r + 1) * h] for r in range(m.rank))
    return head(m, z)


def block_ref(m, x, y):
    """Per chunk c: Σ_r (M_c^r x_c + b) ⊙ (N_c^r y_c + b), norm per chunk, concatenation, head."""
    hx, hy = lin(m.inputs.linears[0], x), lin(m.inputs.linears[1], y)
    chunks, start, c_global = [], 0, 0
    for g, (count, size) in enumerate(m.groups):
        for c in range(count):
            xc, yc = hx[start : start + size], hy[start : start + size]
            mx, my = m.merge[g][0], m.merge[g][1]
            tx = xc @ mx.weight[c] + mx.bias[c]
            ty = yc @ my.weight[c] + my.bias[c]
            z = sum(tx[r * size : (r + 1) * size] * ty[r * size : (r + 1) * size] for r in range(m.rank))
            chunks.append(norm(z))
            start += size
            c_global += 1
    assert c_global == m.chunks
    return head(m, torch.cat(chunks))


def word_attention_ref(att, q, q_mask, n):
    """Question self-attention of row n: (q̂, β[G_q][T])."""
    t_all = q.shape[1]
    betas, parts = [], []
    for h in range(att.glimpses):
        logits = {t: float(mlp2(att.mlp, q[n, t])[h]) for t in range(t_all) if q_mask[n, t]}
        beta = softmax_valid(logits, t_all)
        betas.append(beta)
        parts.append(sum(beta[t] * q[n, t] for t in range(t_all)))
    return torch.cat(parts), betas


def assert_maps(got, want):
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------- mcb_attention


@torch.no_grad()
def test_mcb_attention_reference():
    torch.manual_seed(0)
    f = MCBAttention(3, 4, 5, glimpses=2, hidden_dim=8, mlp_dim=6, dtype=F64).eval()
    v, q, vm, qm = _inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    b, k = v.shape[:2]
    for n in range(b):
        qv = mean_valid_words(q, qm, n)
        z = {i: mcb_ref(f.score_fusion, v[n, i], qv) for i in range(k) if vm[n, i]}
        v_hat, maps = [], []
        for g in range(2):
            alpha = softmax_valid({i: float(mlp2(f.score, zi)[g]) for i, zi in z.items()}, k)
            maps.append(alpha)
            v_hat.append(sum(alpha[i] * v[n, i] for i in range(k)))
        assert_maps(out.v_attn[n], maps)
        torch.testing.assert_close(out.fused[n], mcb_ref(f.output_fusion, torch.cat(v_hat), qv))
    assert out.q_attn is None


def test_mcb_attention_paper_configuration():
    f = MCBAttention(5, 7, 3)
    assert f.glimpses == 2 and f.mlp_dim == 512
    inner, outer = f.score_fusion, f.output_fusion
    assert type(inner).__name__ == type(outer).__name__ == "MCB"
    assert inner.hidden_dim == outer.hidden_dim == 16000
    assert inner.normalize and outer.normalize
    # the inner MCB has no Linear (its sketch feeds the scorer), the outer one ends in Linear(d, out)
    assert isinstance(inner.head.linear, torch.nn.Identity) and inner.out_dim == 16000
    assert outer.head.linear.in_features == 16000 and outer.head.linear.out_features == 3
    assert [m.p for m in (inner.head.drop_pre, outer.head.drop_pre)] == [0.1, 0.1]
    assert outer.in_dims == (2 * 5, 7)


def test_mcb_attention_takes_any_vector_fusion():
    f = MCBAttention(5, 7, 3, hidden_dim=8, mlp_dim=4, fusion="mlb", fusion_kwargs={"hidden_dim": 6})
    assert type(f.score_fusion).__name__ == "MLB" and f.score_fusion.out_dim == 8
    assert type(f.output_fusion).__name__ == "MLB" and f.output_fusion.in_dims == (10, 7)
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters()
    out = f(torch.randn(2, 4, 5), torch.randn(2, 7))
    assert out.fused.shape == (2, 3) and out.v_attn.shape == (2, 2, 4)
    gmu = mmfuse.create_fusion("gmu", in_dims=(5, 7), out_dim=8)
    f2 = MCBAttention(5, 7, 3, hidden_dim=8, mlp_dim=None, fusion=gmu, output_fusion_kwargs={"hidden_dim": 4})
    assert f2.score_fusion is gmu and type(f2.output_fusion).__name__ == "MCB"
    assert sum(p.numel() for p in f2.parameters()) == f2.expected_num_parameters()
    with pytest.raises(ValueError, match=r"mcb_attention: the fusion module must have out_dim 8, it has 9"):
        MCBAttention(5, 7, 3, hidden_dim=8, fusion=mmfuse.create_fusion("gmu", in_dims=(5, 7), out_dim=9))


# ---------------------------------------------------------------- mlb_attention


@torch.no_grad()
def test_mlb_attention_reference():
    torch.manual_seed(0)
    f = MLBAttention(3, 4, 5, glimpses=2, hidden_dim=6, dtype=F64).eval()
    v, q, vm, qm = _inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    b, k = v.shape[:2]
    for n in range(b):
        qv = mean_valid_words(q, qm, n)
        scores = {i: mlb_ref(f.score_fusion, v[n, i], qv) for i in range(k) if vm[n, i]}  # P_g^T(...) per g
        maps, hv = [], []
        for g in range(2):
            alpha = softmax_valid({i: float(s[g]) for i, s in scores.items()}, k)
            maps.append(alpha)
            v_hat = sum(alpha[i] * v[n, i] for i in range(k))
            # σ(V_g^T v̂_g): glimpse g's own projection
            hv.append(torch.tanh(v_hat @ f.glimpse_proj.weight[g] + f.glimpse_proj.bias[g]))
        hq = torch.tanh(lin(f.q_proj, qv))  # σ(W q), G·H features
        assert_maps(out.v_attn[n], maps)
        torch.testing.assert_close(out.fused[n], lin(f.out, hq * torch.cat(hv)))


def test_mlb_attention_dropout_follows_the_reference_code():
    torch.manual_seed(0)
    f = MLBAttention(5, 7, 3, hidden_dim=8)
    assert f.hidden_dim == 8 and f.glimpses == 2
    # scorer: dropout 0.5 on its inputs, none on the attention product
    assert f.score_fusion.inputs.drop_in.p == 0.5 and isinstance(f.score_fusion.head.drop_pre, torch.nn.Identity)
    assert f.drop_in.p == 0.5 and f.drop_pre.p == 0.5
    v, q = torch.randn(2, 4, 5), torch.randn(2, 7)
    torch.manual_seed(1)
    quiet = MLBAttention(5, 7, 3, hidden_dim=8, dropout_input=0.0).train()
    a, b = quiet(v, q), quiet(v, q)
    torch.testing.assert_close(a.v_attn, b.v_attn)  # no dropout left in the attention
    assert not torch.equal(a.fused, b.fused)  # the output product still drops


def test_mlb_attention_custom_output_fusion():
    f = MLBAttention(5, 7, 3, hidden_dim=8, output_fusion="mfb", output_fusion_kwargs={"hidden_dim": 4, "factor": 2})
    assert type(f.output_fusion).__name__ == "MFB" and f.output_fusion.in_dims == (10, 7)
    assert not hasattr(f, "glimpse_proj")
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters()
    assert f(torch.randn(2, 4, 5), torch.randn(2, 3, 7)).fused.shape == (2, 3)


# ---------------------------------------------------------------- mfb / mfh co-attention


@pytest.mark.parametrize("cls", [MFBCoAttention, MFHCoAttention])
@torch.no_grad()
def test_mf_coattention_reference(cls):
    torch.manual_seed(0)
    f = cls(3, 4, 5, glimpses=2, q_glimpses=2, hidden_dim=3, factor=2, mlp_dim=6, dtype=F64).eval()
    v, q, vm, qm = _inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    b, k = v.shape[:2]
    for n in range(b):
        q_hat, betas = word_attention_ref(f.q_attention, q, qm, n)
        z = {i: mfh_ref(f.attention_fusion, v[n, i], q_hat) for i in range(k) if vm[n, i]}
        maps, v_hat = [], []
        for g in range(2):
            alpha = softmax_valid({i: float(mlp2(f.v_score, zi)[g]) for i, zi in z.items()}, k)
            maps.append(alpha)
            v_hat.append(sum(alpha[i] * v[n, i] for i in range(k)))
        assert_maps(out.q_attn[n], betas)
        assert_maps(out.v_attn[n], maps)
        torch.testing.assert_close(out.fused[n], mfh_ref(f.output_fusion, torch.cat(v_hat), q_hat))


def test_mfh_coattention_uses_mfb_for_attention_and_mfh_for_the_output():
    f = MFHCoAttention(5, 7, 6, hidden_dim=4, factor=2, mlp_dim=8)
    assert type(f.attention_fusion).__name__ == "MFB" and f.attention_fusion.order == 1
    assert type(f.output_fusion).__name__ == "MFH" and f.output_fusion.order == 2
    assert (f.attention_fusion.hidden_dim, f.attention_fusion.factor) == (4, 2)
    assert isinstance(f.attention_fusion.head.linear, torch.nn.Identity)  # z_i is the pooled, normalised vector
    assert f.output_fusion.in_dims == (2 * 5, 2 * 7)
    g = MFBCoAttention(5, 7, 6, hidden_dim=4, factor=2, mlp_dim=8)
    assert type(g.output_fusion).__name__ == "MFB"
    paper = MFBCoAttention(5, 7, 6)
    assert (paper.hidden_dim, paper.factor, paper.mlp_dim, paper.glimpses, paper.q_glimpses) == (1000, 5, 512, 2, 2)
    assert paper.output_fusion.drop_expanded.p == 0.1


@torch.no_grad()
def test_mfh_coattention_without_output_linear_returns_the_normalised_blocks():
    torch.manual_seed(0)
    f = MFHCoAttention(5, 7, 8, hidden_dim=4, factor=2, mlp_dim=8, fusion_kwargs={"output_linear": False}).eval()
    z = f(torch.randn(3, 4, 5), torch.randn(3, 5, 7)).fused
    assert z.shape == (3, 8)
    torch.testing.assert_close(z[:, :4].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(z[:, 4:].norm(dim=1), torch.ones(3))


def test_mf_coattention_question_vector_is_a_one_word_question():
    torch.manual_seed(0)
    f = MFBCoAttention(5, 7, 6, hidden_dim=4, factor=2, mlp_dim=8).eval()
    v, qv = torch.randn(2, 4, 5), torch.randn(2, 7)
    a, b = f(v, qv), f(v, qv.unsqueeze(1))
    torch.testing.assert_close(a.fused, b.fused)
    assert torch.equal(a.q_attn, torch.ones(2, 2, 1))


# ---------------------------------------------------------------- mutan / block attention


REFS = {"Mutan": mutan_ref, "Block": block_ref, "MLB": mlb_ref, "MFH": mfh_ref, "MFB": mfh_ref}


def fusion_ref(m, *xs):
    return REFS[type(m).__name__](m, *xs)


def _bilinear_reference(f: BilinearAttention, v, q, vm, qm):
    b, k = v.shape[:2]
    fused, v_maps, q_maps = [], [], []
    for n in range(b):
        if f.q_attention is None:
            q_bar = mean_valid_words(q, qm, n)
        else:
            q_bar, betas = word_attention_ref(f.q_attention, q, qm, n)
            q_maps.append(betas)
        scores = {}
        for i in range(k):
            if vm[n, i]:
                z = fusion_ref(f.score_fusion, q_bar, v[n, i])  # the question first, as block.bootstrap
                scores[i] = z if f.score is None else mlp2(f.score, z)
        maps, v_hat = [], []
        for g in range(f.glimpses):
            alpha = softmax_valid({i: float(s[g]) for i, s in scores.items()}, k)
            maps.append(alpha)
            v_hat.append(sum(alpha[i] * v[n, i] for i in range(k)))
        v_maps.append(maps)
        fused.append(fusion_ref(f.output_fusion, q_bar, torch.cat(v_hat)))
    return torch.stack(fused), v_maps, q_maps


@pytest.mark.parametrize(
    "build",
    [
        lambda: MutanAttention(3, 4, 5, hidden_dim=4, rank=3, projected_dim=3, dtype=F64),
        lambda: MutanAttention(3, 4, 5, hidden_dim=4, rank=2, projected_dim=2, q_glimpses=2, q_mlp_dim=5, dtype=F64),
        lambda: BlockAttention(
            3, 4, 5, hidden_dim=7, rank=2, attention_dim=6, mlp_dim=5, q_mlp_dim=5, fusion_kwargs={"chunks": 3}, dtype=F64
        ),
        lambda: BilinearAttention(
            3, 4, 5, glimpses=3, q_glimpses=1, q_mlp_dim=4, attention_dim=6, mlp_dim=5, fusion="mfh",
            fusion_kwargs={"hidden_dim": 3, "factor": 2}, dtype=F64,
        ),
    ],
    ids=["mutan", "mutan-q-att", "block", "generic-mfh"],
)
@torch.no_grad()
def test_bilinear_attention_reference(build):
    torch.manual_seed(0)
    f = build().eval()
    v, q, vm, qm = _inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    fused, v_maps, q_maps = _bilinear_reference(f, v, q, vm, qm)
    assert_maps(out.v_attn, v_maps)
    if f.q_attention is None:
        assert out.q_attn is None
    else:
        assert_maps(out.q_attn, q_maps)
    torch.testing.assert_close(out.fused, fused)


def test_block_attention_uses_block_bootstrap_vqa2_settings():
    f = BlockAttention(6, 4, 3)
    assert (f.glimpses, f.q_glimpses, f.attention_dim, f.mlp_dim, f.q_mlp_dim) == (2, 2, 1000, 512, 512)
    for fusion, in_dims, out in ((f.score_fusion, (8, 6), 1000), (f.output_fusion, (8, 12), 3)):
        assert type(fusion).__name__ == "Block"
        assert (fusion.hidden_dim, fusion.chunks, fusion.rank) == (1600, 18, 15)
        assert fusion.in_dims == in_dims and fusion.out_dim == out
        assert fusion.inputs.drop_proj.p == 0.1 and isinstance(fusion.head.drop_pre, torch.nn.Identity)
    out = f(torch.randn(2, 5, 6), torch.randn(2, 3, 4))
    assert out.q_attn.shape == (2, 2, 3) and out.v_attn.shape == (2, 2, 5)


def test_mutan_attention_uses_the_mutan_papers_sizes():
    f = MutanAttention(6, 4, 3)
    att, outf = f.score_fusion, f.output_fusion
    assert f.score is None and f.q_attention is None and att.out_dim == 2  # MUTAN scores the G glimpses itself
    assert (att.hidden_dim, att.rank, att.projected_dims) == (510, 5, (310, 310))
    assert (outf.hidden_dim, outf.rank, outf.projected_dims) == (510, 5, (310, 620))
    assert att.inputs.drop_in.p == 0.5 and att.head.drop_pre.p == 0.5
    out = f(torch.randn(2, 5, 6), torch.randn(2, 3, 4))
    assert out.q_attn is None
    g = MutanAttention(6, 4, 3, glimpses=3, projected_dim=8, hidden_dim=4, rank=2)
    assert g.output_fusion.projected_dims == (8, 24)


def test_bilinear_attention_takes_any_fusion_name_or_module():
    torch.manual_seed(0)
    f = BlockAttention(6, 4, 3, fusion="mfb", rank=None, hidden_dim=None, fusion_kwargs={"hidden_dim": 4, "factor": 2})
    assert type(f.score_fusion).__name__ == "MFB" and type(f.output_fusion).__name__ == "MFB"
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters()
    m = mmfuse.create_fusion("concat_mlp", in_dims=(4, 6), out_dim=2)
    g = BilinearAttention(6, 4, 3, attention_dim=None, fusion=m, output_fusion="concat")
    assert g.score_fusion is m and type(g.output_fusion).__name__ == "Concat"
    assert sum(p.numel() for p in g.parameters()) == g.expected_num_parameters()
    assert g(torch.randn(2, 5, 6), torch.randn(2, 4)).fused.shape == (2, 3)
    with pytest.raises(ValueError, match="give output_fusion when fusion is a module"):
        BilinearAttention(6, 4, 3, attention_dim=None, fusion=m)
    with pytest.raises(ValueError, match="mutan_attention: q_glimpses must be a non-negative int, got -1"):
        MutanAttention(6, 4, 3, q_glimpses=-1)
    with pytest.raises(ValueError, match=r"mutan_attention: the fusion module must take in_dims \(4, 6\), it has \(6, 4\)"):
        MutanAttention(6, 4, 3, fusion=mmfuse.create_fusion("concat", in_dims=(6, 4), out_dim=2), output_fusion="concat")


@pytest.mark.parametrize("name", ["mcb_attention", "mlb_attention", "mfb_coattention", "mfh_coattention", "mutan_attention", "block_attention"])
def test_registered_with_paper_and_order_free(name):
    info = mmfuse.fusion_info(name)
    assert info.kind == "attention" and info.order_free and info.compile and info.export
    assert info.paper

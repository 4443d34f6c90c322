"""updown and multi_source against explicit loops over regions, glimpses and sources (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mmfuse
from mmfuse.attention import MultiSource, UpDown

F64 = torch.float64


def _inputs(b=2, k=6, t=4, dv=3, dq=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, k, dv, generator=g, dtype=F64)
    q = torch.randn(b, t, dq, generator=g, dtype=F64)
    v_mask = torch.ones(b, k, dtype=torch.bool)
    v_mask[0, 1] = False
    v_mask[b - 1, -1] = False
    q_mask = torch.ones(b, t, dtype=torch.bool)
    q_mask[b - 1, -2:] = False
    return v, q, v_mask, q_mask


def _softmax(logits: dict[int, float], k: int) -> list[float]:
    z = sum(math.exp(a) for a in logits.values())
    return [math.exp(logits[i]) / z if i in logits else 0.0 for i in range(k)]


def _question(q, q_mask, n):
    words = [q[n, t] for t in range(q.shape[1]) if q_mask[n, t]]
    return sum(words) / len(words)


# ---------------------------------------------------------------- updown


def _gated_tanh(module, x):
    W, b = module.proj.weight, module.proj.bias
    y, gate = (W @ x + b).chunk(2)
    return torch.tanh(y) * torch.sigmoid(gate)


def _relu_wn(module, x):
    lin = module.lin
    return torch.relu(lin.weight @ x + lin.bias)  # .weight = g · V / ||V|| (weight norm, dim=None)


def _updown_reference(f: UpDown, v, q, v_mask, q_mask):
    b, k = v.shape[:2]
    paper = f.variant == "paper"
    fused, maps = [], []
    for n in range(b):
        qv = _question(q, q_mask, n)
        row, v_hat = [], []
        for g in range(f.glimpses):
            logits = {}
            for i in range(k):
                if not v_mask[n, i]:
                    continue
                if paper:
                    joint = _gated_tanh(f.score_fusion, torch.cat([v[n, i], qv]))
                else:
                    joint = _relu_wn(f.score_fusion.v_proj, v[n, i]) * _relu_wn(f.score_fusion.q_proj, qv)
                logits[i] = float(f.score.weight[g] @ joint + f.score.bias[g])
            alpha = _softmax(logits, k)
            row.append(alpha)
            v_hat.append(sum(alpha[i] * v[n, i] for i in range(k)))
        v_hat = torch.cat(v_hat)
        if paper:
            h = _gated_tanh(f.q_net, qv) * _gated_tanh(f.v_net, v_hat)
        else:
            h = _relu_wn(f.q_net, qv) * _relu_wn(f.v_net, v_hat)
        maps.append(row)
        fused.append(f.out.weight @ h + f.out.bias)
    return torch.stack(fused), torch.tensor(maps, dtype=F64)


@pytest.mark.parametrize("variant", ["paper", "hengyuan-hu"])
@pytest.mark.parametrize("glimpses", [1, 2])
@torch.no_grad()
def test_updown_reference(variant, glimpses):
    torch.manual_seed(0)
    f = UpDown(3, 4, 5, glimpses=glimpses, hidden_dim=6, variant=variant, dtype=F64).eval()
    if variant == "hengyuan-hu":  # move every g away from its initial value ||V||
        for name, p in f.named_parameters():
            if name.endswith("original0"):
                p.mul_(1.7)
    v, q, v_mask, q_mask = _inputs()
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    fused, maps = _updown_reference(f, v, q, v_mask, q_mask)
    torch.testing.assert_close(out.v_attn, maps, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.fused, fused)
    assert out.q_attn is None


def test_updown_variant_defaults():
    paper = mmfuse.create_fusion("updown", v_dim=3, q_dim=4, out_dim=5)
    assert (paper.hidden_dim, paper.glimpses, type(paper.drop_att)) == (512, 1, nn.Identity)
    assert type(paper.score_fusion).__name__ == "GatedTanh"
    hu = mmfuse.create_fusion("updown", v_dim=3, q_dim=4, out_dim=5, variant="hengyuan-hu")
    assert hu.hidden_dim == 1024 and hu.drop_att.p == 0.2
    # every Linear of the reimplementation is weight-normed with a scalar g
    gs = [p for n, p in hu.named_parameters() if n.endswith("original0")]
    assert len(gs) == 5 and all(g.shape == () for g in gs)
    assert sum(p.numel() for p in hu.parameters()) == hu.expected_num_parameters()
    with pytest.raises(ValueError, match="updown: variant must be one of"):
        UpDown(3, 4, 5, variant="hu")


@torch.no_grad()
def test_updown_dropout_follows_the_product_in_the_reimplementation():
    torch.manual_seed(0)
    f = UpDown(3, 4, 5, hidden_dim=6, variant="hengyuan-hu", dtype=F64)
    v, q, _, _ = _inputs()
    f.train()
    assert not torch.equal(f(v, q).v_attn, f(v, q).v_attn)
    f.eval()
    assert torch.equal(f(v, q).v_attn, f(v, q).v_attn)


@torch.no_grad()
def test_updown_takes_a_scoring_fusion_by_name_or_module():
    torch.manual_seed(0)
    f = UpDown(3, 4, 5, hidden_dim=6, fusion="product", dtype=F64).eval()
    assert type(f.score_fusion).__name__ == "Product"
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters()
    v, q, v_mask, q_mask = _inputs()
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    # the fusion replaces f_a: scores are w^T fusion(v_i, q) + b
    qv = _question(q, q_mask, 0)
    w, b = f.score.weight[0], f.score.bias[0]
    logits = {i: float(w @ f.score_fusion(v[0, i], qv) + b) for i in range(6) if v_mask[0, i]}
    assert out.v_attn[0, 0].tolist() == pytest.approx(_softmax(logits, 6), abs=1e-12)

    gmu = mmfuse.create_fusion("gmu", in_dims=(3, 4), out_dim=6, dtype=F64)
    g = UpDown(3, 4, 5, hidden_dim=6, fusion=gmu, dtype=F64)
    assert g.score_fusion is gmu
    assert sum(p.numel() for p in g.parameters()) == g.expected_num_parameters()
    with pytest.raises(ValueError, match=r"updown: the fusion module must have out_dim 6, it has 7"):
        UpDown(3, 4, 5, hidden_dim=6, fusion=mmfuse.create_fusion("gmu", in_dims=(3, 4), out_dim=7))


# ---------------------------------------------------------------- multi_source


def _multi_source_reference(f: MultiSource, v, q, v_mask, q_mask, spans):
    b, k = v.shape[:2]
    gl, nsrc = f.glimpses, len(spans)
    fused, maps = [], []
    for n in range(b):
        qv = _question(q, q_mask, n)
        total, rows = 0, []
        for s, (lo, hi) in enumerate(spans):
            ctx = None
            if nsrc > 1:
                others = [j for j in range(k) if not lo <= j < hi and v_mask[n, j]]
                ce = f.context_embed[s]
                parts = [torch.tanh(ce.weight @ v[n, j] + ce.bias) for j in others]
                ctx = sum(parts) / len(parts) if parts else torch.zeros(f.hidden_dim, dtype=F64)
            q_e = torch.tanh(f.question_embed[s].weight @ qv + f.question_embed[s].bias)
            emb = {}
            for i in range(lo, hi):
                e = torch.tanh(f.region_embed[s].weight @ v[n, i] + f.region_embed[s].bias) * q_e
                if ctx is not None:
                    e = e * ctx
                emb[i] = e / e.norm()
            attended = []
            for g in range(gl):
                logits = {
                    i: float(f.score[s].weight[g] @ emb[i] + f.score[s].bias[g]) for i in range(lo, hi) if v_mask[n, i]
                }
                alpha = _softmax(logits, k)  # zero outside the source
                rows.append(alpha)
                v_hat = sum(alpha[i] * v[n, i] for i in range(k))
                lin = f.glimpse_embed[s][g]
                attended.append(torch.tanh(lin.weight @ v_hat + lin.bias))
            qo = f.question_out[s]
            total = total + torch.cat(attended) * torch.tanh(qo.weight @ qv + qo.bias)
        maps.append(rows)
        fused.append(f.out.weight @ total + f.out.bias)
    return torch.stack(fused), torch.tensor(maps, dtype=F64)


@pytest.mark.parametrize(
    "sources, spans",
    [(None, [(0, 6)]), ((2, -1), [(0, 2), (2, 6)]), ((1, 3, 2), [(0, 1), (1, 4), (4, 6)])],
)
@torch.no_grad()
def test_multi_source_reference(sources, spans):
    torch.manual_seed(0)
    f = MultiSource(3, 4, 5, sources=sources, glimpses=2, hidden_dim=6, dtype=F64).eval()
    v, q, v_mask, q_mask = _inputs()
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    fused, maps = _multi_source_reference(f, v, q, v_mask, q_mask, spans)
    assert out.v_attn.shape == (2, 2 * len(spans), 6)
    torch.testing.assert_close(out.v_attn, maps, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.fused, fused)


@torch.no_grad()
def test_multi_source_attention_layout_and_order():
    torch.manual_seed(0)
    f = MultiSource(3, 4, 5, sources=(2, -1), glimpses=2, hidden_dim=6, dtype=F64).eval()
    v, q, _, _ = _inputs()
    out = f(v, q)
    # rows 0-1: glimpses of source 0 (regions 0-1), rows 2-3: source 1 (regions 2-5)
    assert (out.v_attn[:, :2, 2:] == 0).all() and (out.v_attn[:, 2:, :2] == 0).all()
    torch.testing.assert_close(out.v_attn.sum(-1), torch.ones(2, 4, dtype=F64))
    # permuting regions inside a source permutes its attention and keeps the output ...
    perm = torch.tensor([1, 0, 5, 3, 2, 4])
    p = f(v[:, perm], q)
    torch.testing.assert_close(p.fused, out.fused)
    torch.testing.assert_close(p.v_attn, out.v_attn[..., perm])
    # ... moving a region to another source does not
    swap = torch.tensor([2, 1, 0, 3, 4, 5])
    assert not torch.allclose(f(v[:, swap], q).fused, out.fused)
    # the co-attention: a source's map depends on the other source's regions
    v2 = v.clone()
    v2[:, 2:] = torch.randn(2, 4, 3, dtype=F64)
    assert not torch.allclose(f(v2, q).v_attn[:, :2], out.v_attn[:, :2])


def test_multi_source_sources_are_checked():
    f = MultiSource(3, 4, 5, sources=(2, 3), hidden_dim=6)
    with pytest.raises(ValueError, match=r"multi_source: sources \(2, 3\) need 5 regions, got K = 6"):
        f(torch.randn(2, 6, 3), torch.randn(2, 4))
    g = MultiSource(3, 4, 5, sources=(4, -1), hidden_dim=6)
    with pytest.raises(ValueError, match=r"multi_source: sources \(4, -1\) need at least 4 regions, got K = 3"):
        g(torch.randn(2, 3, 3), torch.randn(2, 4))
    assert g(torch.randn(2, 4, 3), torch.randn(2, 4)).v_attn[:, 2:].abs().sum() == 0  # empty source
    for bad in ((2, -1, -1), (0, 2), (), 3, (2.0, 1)):
        with pytest.raises(ValueError, match="multi_source: "):
            MultiSource(3, 4, 5, sources=bad)


def test_multi_source_defaults():
    f = mmfuse.create_fusion("multi_source", v_dim=3, q_dim=4, out_dim=5)
    assert (f.sources, f.glimpses, f.hidden_dim, f.drop_in.p, f.drop.p) == ((-1,), 2, 1200, 0.5, 0.5)
    assert f.context_embed is None  # one source: nothing to co-attend
    out = f.eval()(torch.randn(2, 7, 3), torch.randn(2, 4))
    assert out.v_attn.shape == (2, 2, 7)

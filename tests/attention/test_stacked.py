"""san, sla and smem against explicit loops over hops, regions and words (float64)."""

from __future__ import annotations

import math

import pytest
import torch

import mmfuse
from mmfuse.attention import SAN, SLA, SMem

F64 = torch.float64


def _inputs(b=2, k=5, t=4, dv=3, dq=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, k, dv, generator=g, dtype=F64)
    q = torch.randn(b, t, dq, generator=g, dtype=F64)
    v_mask = torch.ones(b, k, dtype=torch.bool)
    v_mask[0, 2] = False  # a hole in the middle
    v_mask[b - 1, -1] = False
    q_mask = torch.ones(b, t, dtype=torch.bool)
    q_mask[0, -1] = False
    q_mask[b - 1, 1] = False
    return v, q, v_mask, q_mask


def _softmax(logits: dict[int, float], k: int) -> list[float]:
    z = sum(math.exp(a) for a in logits.values())
    return [math.exp(logits[i]) / z if i in logits else 0.0 for i in range(k)]


def _mean_valid_words(q, q_mask, n):
    words = [q[n, t] for t in range(q.shape[1]) if q_mask[n, t]]
    return sum(words) / len(words)


# ---------------------------------------------------------------- san / sla


def _stacked_reference(f, v, q, v_mask, q_mask, latent: bool):
    """SAN / SLA written from the paper's equations, one region and one hop at a time."""
    b, k = v.shape[:2]
    fused, maps = [], []
    for n in range(b):
        u = _mean_valid_words(q, q_mask, n)
        vp = [torch.tanh(f.v_proj.weight @ v[n, i] + f.v_proj.bias) for i in range(k)]
        prev = [None] * k
        row = []
        for h in range(f.hops):
            W_I, W_Q, b_A = f.v_att[h].weight, f.q_att[h].weight, f.q_att[h].bias
            w_P, b_P = f.score[h].weight[0], f.score[h].bias[0]
            s, logits = [None] * k, {}
            for i in range(k):
                x = vp[i] if prev[i] is None else torch.cat([vp[i], prev[i]])
                s[i] = torch.tanh(W_I @ x + (W_Q @ u + b_A))
                if v_mask[n, i]:
                    logits[i] = float(w_P @ s[i] + b_P)
            p = _softmax(logits, k)
            u = sum(p[i] * vp[i] for i in range(k)) + u
            prev = s if latent else prev
            row.append(p)
        maps.append(row)
        fused.append(f.out.weight @ u + f.out.bias)
    return torch.stack(fused), torch.tensor(maps, dtype=F64)


@pytest.mark.parametrize("cls", [SAN, SLA])
@pytest.mark.parametrize("hops", [1, 2, 3])
@torch.no_grad()
def test_stacked_attention_reference(cls, hops):
    torch.manual_seed(0)
    f = cls(3, 4, 5, hops=hops, hidden_dim=6, dtype=F64).eval()
    v, q, v_mask, q_mask = _inputs()
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    fused, maps = _stacked_reference(f, v, q, v_mask, q_mask, latent=cls is SLA)
    assert out.v_attn.shape == (2, hops, 5)
    torch.testing.assert_close(out.v_attn, maps, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.fused, fused)
    assert out.q_attn is None and out.extras == {}


@torch.no_grad()
def test_san_question_vector_is_the_first_query():
    torch.manual_seed(0)
    f = SAN(3, 4, 5, hidden_dim=6, dtype=F64).eval()
    v, q, v_mask, _ = _inputs()
    out = f(v, q[:, 0], v_mask=v_mask)
    one_word = f(v, q[:, :1], v_mask=v_mask)
    torch.testing.assert_close(out.fused, one_word.fused)
    torch.testing.assert_close(out.v_attn, one_word.v_attn)


@torch.no_grad()
def test_san_hops_stack_the_same_first_hop():
    """A 2-hop SAN's first map is the 1-hop SAN's map; the second hop refines it."""
    torch.manual_seed(0)
    two = SAN(3, 4, 5, hops=2, hidden_dim=6, dtype=F64).eval()
    one = SAN(3, 4, 5, hops=1, hidden_dim=6, dtype=F64).eval()
    one.load_state_dict({k: v for k, v in two.state_dict().items() if ".1." not in k})
    v, q, v_mask, q_mask = _inputs()
    a, b = two(v, q, v_mask, q_mask), one(v, q, v_mask, q_mask)
    torch.testing.assert_close(a.v_attn[:, :1], b.v_attn)
    assert not torch.allclose(a.v_attn[:, 1], a.v_attn[:, 0])
    assert not torch.allclose(a.fused, b.fused)


@torch.no_grad()
def test_sla_is_san_plus_a_latent_pathway():
    torch.manual_seed(0)
    sla = SLA(3, 4, 5, hops=3, hidden_dim=6, dtype=F64).eval()
    san = SAN(3, 4, 5, hops=3, hidden_dim=6, dtype=F64).eval()
    assert sla.expected_num_parameters() - san.expected_num_parameters() == 2 * 6 * 6
    v, q, v_mask, q_mask = _inputs()
    state = {k: (w[:, :4] if k.startswith("v_att.") else w) for k, w in sla.state_dict().items()}
    san.load_state_dict(state)
    # the latent columns make a difference ...
    assert not torch.allclose(sla(v, q, v_mask, q_mask).fused, san(v, q, v_mask, q_mask).fused)
    # ... and without them SLA is SAN
    for h in (1, 2):
        sla.v_att[h].weight[:, 4:] = 0
    torch.testing.assert_close(sla(v, q, v_mask, q_mask).fused, san(v, q, v_mask, q_mask).fused)
    torch.testing.assert_close(sla(v, q, v_mask, q_mask).v_attn, san(v, q, v_mask, q_mask).v_attn)


def test_san_defaults_and_dropout():
    f = mmfuse.create_fusion("san", v_dim=3, q_dim=4, out_dim=5)
    assert (f.hops, f.hidden_dim, f.drop.p) == (2, 512, 0.5)
    assert f.v_att[0].bias is None and f.q_att[0].bias is not None
    v, q, _, _ = _inputs()
    f = f.to(F64)
    f.train()
    assert not torch.equal(f(v, q).fused, f(v, q).fused)  # dropout on u before the output Linear
    f.eval()
    assert torch.equal(f(v, q).fused, f(v, q).fused)
    with pytest.raises(ValueError, match="san: hops must be a positive int, got 0"):
        SAN(3, 4, 5, hops=0)


# ---------------------------------------------------------------- smem


def _smem_reference(f, v, q, v_mask, q_mask):
    b, k, t = v.shape[0], v.shape[1], q.shape[1]
    W_A, b_A = f.attn_embed.weight, f.attn_embed.bias
    fused, maps, corr = [], [], torch.zeros(b, k, t, dtype=F64)
    for n in range(b):
        o = _mean_valid_words(q, q_mask, n)
        emb = [W_A @ v[n, i] + b_A for i in range(k)]
        logits = {}
        for i in range(k):
            scores = []
            for j in range(t):
                if q_mask[n, j]:
                    corr[n, i, j] = emb[i] @ q[n, j]
                    scores.append(float(corr[n, i, j]))
            if v_mask[n, i]:
                logits[i] = max(scores)
        p = _softmax(logits, k)
        row = [p]
        e = [f.evidence[0].weight @ v[n, i] + f.evidence[0].bias for i in range(k)]
        o = sum(p[i] * e[i] for i in range(k)) + o
        for h in range(1, f.hops):
            p = _softmax({i: float(e[i] @ o) for i in range(k) if v_mask[n, i]}, k)
            e = [f.evidence[h].weight @ v[n, i] + f.evidence[h].bias for i in range(k)]
            o = sum(p[i] * e[i] for i in range(k)) + o
            row.append(p)
        maps.append(row)
        fused.append(f.out.weight @ torch.relu(o) + f.out.bias)
    return torch.stack(fused), torch.tensor(maps, dtype=F64), corr


@pytest.mark.parametrize("hops", [1, 2, 3])
@torch.no_grad()
def test_smem_reference(hops):
    torch.manual_seed(0)
    f = SMem(3, 4, 5, hops=hops, dtype=F64).eval()
    v, q, v_mask, q_mask = _inputs()
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    fused, maps, corr = _smem_reference(f, v, q, v_mask, q_mask)
    assert out.v_attn.shape == (2, hops, 5)
    torch.testing.assert_close(out.v_attn, maps, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.fused, fused)
    torch.testing.assert_close(out.extras["word_region"], corr)


@torch.no_grad()
def test_smem_a_masked_word_is_a_removed_word_even_when_it_would_win_the_max():
    torch.manual_seed(0)
    f = SMem(3, 4, 5, dtype=F64).eval()
    v, q, v_mask, _ = _inputs()
    v, q, v_mask = v[:1], q[:1], v_mask[:1]
    # a padded word aligned with every region's attention embedding would dominate the max
    q[0, 1] = 50 * f.attn_embed(v[0]).mean(0)
    q_mask = torch.tensor([[True, False, True, True]])
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    ref = f(v, q[:, [0, 2, 3]], v_mask=v_mask)
    torch.testing.assert_close(out.fused, ref.fused)
    torch.testing.assert_close(out.v_attn, ref.v_attn)
    assert (out.extras["word_region"][0, :, 1] == 0).all()
    unmasked = f(v, q, v_mask=v_mask)
    assert not torch.allclose(unmasked.v_attn[:, 0], out.v_attn[:, 0])


@torch.no_grad()
def test_smem_without_valid_words_attends_uniformly_at_first():
    torch.manual_seed(0)
    f = SMem(3, 4, 5, dtype=F64).eval()
    v, q, v_mask, q_mask = _inputs()
    q_mask[0] = False
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    valid = v_mask[0].to(F64)
    torch.testing.assert_close(out.v_attn[0, 0], valid / valid.sum())
    assert torch.isfinite(out.fused).all()


def test_smem_defaults():
    f = mmfuse.create_fusion("smem", v_dim=3, q_dim=4, out_dim=5)
    assert (f.hops, f.drop_in.p, f.drop.p) == (2, 0.4, 0.4)
    assert len(f.evidence) == 2
    assert sum(p.numel() for p in f.parameters()) == 3 * (3 + 1) * 4 + (4 + 1) * 5

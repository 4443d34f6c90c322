"""soft_attention against an explicit loop over glimpses and regions."""

from __future__ import annotations

import math

import pytest
import torch

import mmfuse
from mmfuse.attention import SoftAttention


@pytest.mark.parametrize("glimpses", [1, 2])
@torch.no_grad()
def test_soft_attention_reference(glimpses):
    torch.manual_seed(0)
    f = SoftAttention(3, 4, 5, glimpses=glimpses, hidden_dim=6, dtype=torch.float64).eval()
    v = torch.randn(2, 5, 3, dtype=torch.float64)
    q = torch.randn(2, 3, 4, dtype=torch.float64)
    v_mask = torch.tensor([[True, True, False, True, True], [True] * 5])
    q_mask = torch.tensor([[True, True, False], [True, True, True]])
    out = f(v, q, v_mask=v_mask, q_mask=q_mask)
    W, b = f.score_fusion.proj.weight, f.score_fusion.proj.bias
    Wo, bo = f.output_fusion.proj.weight, f.output_fusion.proj.bias
    for n in range(2):
        words = [q[n, t] for t in range(3) if q_mask[n, t]]
        qv = sum(words) / len(words)
        v_hat = []
        for g in range(glimpses):
            logits = {}
            for i in range(5):
                if not v_mask[n, i]:
                    continue
                h = torch.tanh(W @ torch.cat([v[n, i], qv]) + b)
                logits[i] = float(f.score.weight[g] @ h + f.score.bias[g])
            z = sum(math.exp(a) for a in logits.values())
            alpha = [math.exp(logits[i]) / z if i in logits else 0.0 for i in range(5)]
            assert out.v_attn[n, g].tolist() == pytest.approx(alpha, abs=1e-12)
            v_hat.append(sum(alpha[i] * v[n, i] for i in range(5)))
        ref = Wo @ torch.cat([*v_hat, qv]) + bo
        torch.testing.assert_close(out.fused[n], ref)


def test_soft_attention_takes_any_vector_fusion_by_name_or_module():
    att = mmfuse.create_fusion("soft_attention", v_dim=6, q_dim=4, out_dim=3, fusion="product", hidden_dim=8)
    assert type(att.score_fusion).__name__ == "Product" and type(att.output_fusion).__name__ == "Product"
    gmu = mmfuse.create_fusion("gmu", in_dims=(6, 4), out_dim=8)
    att2 = SoftAttention(6, 4, 3, hidden_dim=8, fusion=gmu)
    assert att2.score_fusion is gmu and type(att2.output_fusion).__name__ == "Concat"
    out = att2(torch.randn(2, 5, 6), torch.randn(2, 4))
    assert out.fused.shape == (2, 3)
    with pytest.raises(ValueError, match=r"soft_attention: the fusion module must take in_dims \(6, 4\), it has \(6, 5\)"):
        SoftAttention(6, 4, 3, hidden_dim=8, fusion=mmfuse.create_fusion("gmu", in_dims=(6, 5), out_dim=8))
    with pytest.raises(ValueError, match="soft_attention: the fusion module must have out_dim 8, it has 7"):
        SoftAttention(6, 4, 3, hidden_dim=8, fusion=mmfuse.create_fusion("gmu", in_dims=(6, 4), out_dim=7))
    with pytest.raises(ValueError, match="unknown fusion 'mfhh'"):
        SoftAttention(6, 4, 3, fusion="mfhh")

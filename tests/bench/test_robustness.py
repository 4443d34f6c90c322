"""Robustness: the corruptions against explicit evaluations, and the two measures by hand."""
from __future__ import annotations

import math

import pytest
import torch

from mmfuse.bench import robustness as rb
from mmfuse.models import build_model


def _vector_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model({
        "task": {"kind": "classification", "num_outputs": 3},
        "inputs": {"x0": {"encoder": "vector", "in_dim": 5, "dim": 6}, "x1": {"encoder": "vector", "in_dim": 4}},
        "fusion": {"name": "lmf", "out_dim": 7, "rank": 2},
        "head": {"hidden_dims": [8]},
    }).eval()


def _vector_batches(n_batches: int = 3, b: int = 16):
    g = torch.Generator().manual_seed(1)
    return [{"x0": torch.randn(b, 5, generator=g), "x1": torch.randn(b, 4, generator=g),
             "label": torch.randint(0, 3, (b,), generator=g)} for _ in range(n_batches)]


def _attention_model():
    torch.manual_seed(0)
    return build_model({
        "task": {"kind": "classification", "num_outputs": 4},
        "inputs": {"v": {"encoder": "regions", "key": "regions", "mask_key": "region_mask", "in_dim": 3, "dim": 6},
                   "q": {"encoder": "bow", "key": "tokens", "mask_key": "token_mask", "vocab_size": 9, "dim": 6}},
        "fusion": {"name": "san", "out_dim": 5, "hidden_dim": 8},
        "head": {"hidden_dims": []},
    }).eval()


def _attention_batches():
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(2):
        tokens = torch.randint(1, 9, (10, 4), generator=g)
        tokens[0, -1] = 0
        region_mask = torch.ones(10, 5, dtype=torch.bool)
        region_mask[1, -2:] = False
        out.append({"regions": torch.rand(10, 5, 3, generator=g), "region_mask": region_mask, "tokens": tokens,
                    "token_mask": tokens > 0, "answer": torch.randint(0, 4, (10,), generator=g)})
    return out


def _explicit_accuracy(model, batches, target_key, fused_fn):
    right = total = 0
    with torch.no_grad():
        for batch in batches:
            logits = model.head(fused_fn(model, batch))
            right += int((logits.argmax(-1) == batch[target_key]).sum())
            total += len(batch[target_key])
    return right / total


def test_noise_level_zero_is_the_clean_accuracy_and_noise_changes_predictions():
    model, batches = _vector_model(), _vector_batches()
    clean = rb.accuracy(model, batches, target_key="label")
    stds = rb.feature_stds(model, batches)
    curve = rb.noise_curve(model, batches, "x0", target_key="label", stds=stds["x0"], levels=(0.0, 0.5, 50.0))
    assert curve[0] == clean
    with torch.no_grad():
        logits = torch.cat([model(b).logits for b in batches])
        g = torch.Generator().manual_seed(0)
        with rb.corrupted(model, "x0", noise_std={"vec": 50.0 * stds["x0"]["vec"]}, generator=g):
            noisy = torch.cat([model(b).logits for b in batches])
    assert not torch.allclose(logits, noisy)  # the hook reaches the fusion
    # the same seed gives the same curve
    assert rb.noise_curve(model, batches, "x0", target_key="label", stds=stds["x0"], levels=(0.0, 0.5, 50.0)) == curve


def test_feature_stds_match_a_direct_computation():
    model, batches = _vector_model(), _vector_batches()
    with torch.no_grad():
        x0 = torch.cat([model.encoders["x0"](b["x0"]).vec for b in batches])
    x1 = torch.cat([b["x1"] for b in batches])  # identity encoder
    stds = rb.feature_stds(model, batches)
    assert stds["x0"]["vec"] == pytest.approx(x0.double().std(unbiased=False).item(), rel=1e-9)
    assert stds["x1"]["vec"] == pytest.approx(x1.double().std(unbiased=False).item(), rel=1e-9)
    model, batches = _attention_model(), _attention_batches()
    with torch.no_grad():
        enc = [model.encoders["v"](b["regions"], b["region_mask"]) for b in batches]
    valid = torch.cat([e.seq[e.mask].reshape(-1) for e in enc]).double()
    assert rb.feature_stds(model, batches)["v"]["seq"] == pytest.approx(valid.std(unbiased=False).item(), rel=1e-9)


def test_missing_vector_modality_equals_the_explicit_zeroed_evaluation():
    model, batches = _vector_model(), _vector_batches()

    def zero_x1(m, batch):
        enc = m.encode(batch)
        return m.fusion(enc["x0"].vec, torch.zeros_like(enc["x1"].vec))

    want = _explicit_accuracy(model, batches, "label", zero_x1)
    assert rb.missing_accuracy(model, batches, "x1", target_key="label") == want
    with torch.no_grad(), rb.corrupted(model, "x1", missing=True):
        got = torch.cat([model(b).logits for b in batches])
    explicit = torch.cat([model.head(zero_x1(model, b)) for b in batches]).detach()
    torch.testing.assert_close(got, explicit, rtol=0, atol=0)


def test_missing_attention_modality_is_masked_out():
    model, batches = _attention_model(), _attention_batches()

    def drop_regions(m, batch):
        q = m.encode(batch)["q"]
        v = torch.zeros(batch["regions"].shape[0], 5, 6)
        return m.fusion(v, q.seq, v_mask=torch.zeros(v.shape[:2], dtype=torch.bool), q_mask=q.mask).fused

    assert rb.missing_accuracy(model, batches, "v", target_key="answer") == _explicit_accuracy(model, batches, "answer",
                                                                                                drop_regions)
    with torch.no_grad(), rb.corrupted(model, "v", missing=True):
        out = model(batches[0])
    assert torch.isfinite(out.logits).all()
    assert out.attention.v_attn is None or float(out.attention.v_attn.abs().sum()) == 0.0  # no weight on any region
    with pytest.raises(ValueError, match="no input 'image'; its inputs are \\['v', 'q'\\]"):
        rb.missing_accuracy(model, batches, "image", target_key="answer")


def test_relative_and_effective_robustness_by_hand():
    acc = [0.9, 0.8, 0.6]
    # trapezoids over t = 0, 0.5, 1: 0.5 * (0.9 + 0.8) / 2 + 0.5 * (0.8 + 0.6) / 2 = 0.425 + 0.35
    assert rb.relative_robustness(acc) == pytest.approx(0.775)
    # uneven levels 0, 1, 4 -> t = 0, 0.25, 1: 0.25 * 0.85 + 0.75 * 0.7
    assert rb.relative_robustness(acc, [0.0, 1.0, 4.0]) == pytest.approx(0.2125 + 0.525)
    assert rb.relative_robustness([0.7] * 11, rb.NOISE_LEVELS) == pytest.approx(0.7)  # flat: the clean accuracy
    base = [0.6, 0.55, 0.3]
    # (0 + -0.1 + -0.3) - (0 + -0.05 + -0.3) = -0.05
    assert rb.effective_robustness(acc, base) == pytest.approx(-0.05)
    assert rb.effective_robustness(base, base) == 0.0
    # shifting a curve by a constant (a different clean accuracy, same drops) changes nothing
    assert rb.effective_robustness([a - 0.2 for a in acc], base) == pytest.approx(-0.05)
    assert rb.maxmin_normalize({"a": 1.0, "b": 3.0, "c": 2.0}) == {"a": 0.0, "b": 1.0, "c": 0.5}
    with pytest.raises(ValueError, match="levels must increase from 0"):
        rb.relative_robustness(acc, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="curves of 3 and 2 points"):
        rb.effective_robustness(acc, [0.5, 0.4])
    with pytest.raises(ValueError, match="at least 2 finite"):
        rb.relative_robustness([0.5, math.nan])


def test_evaluate_robustness_reports_every_modality():
    model, batches = _vector_model(), _vector_batches()
    out = rb.evaluate_robustness(model, batches, target_key="label", levels=(0.0, 1.0, 2.0))
    assert out["levels"] == [0.0, 1.0, 2.0] and set(out["modalities"]) == {"x0", "x1"}
    for m, r in out["modalities"].items():
        assert r["noise"][0] == out["clean"]
        assert r["relative"] == pytest.approx(rb.relative_robustness(r["noise"], [0.0, 1.0, 2.0]))
        assert r["missing"] == rb.missing_accuracy(model, batches, m, target_key="label")

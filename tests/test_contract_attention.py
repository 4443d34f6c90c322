"""The attention-fusion contract (DESIGN.md), checked for every registered attention fusion.

Parametrised over the registry: a fusion is tested here the moment it is registered.
"""

from __future__ import annotations

import copy

import pytest
import torch

import mmfuse
from contract_helpers import OUT_DIM, Q_DIM, V_DIM, attention_names, make_attention, make_attention_inputs

NAMES = attention_names()
ORDER_FREE = [n for n in NAMES if mmfuse.fusion_info(n).order_free]


def _loss(out) -> torch.Tensor:
    w = torch.randn(out.fused.shape, generator=torch.Generator().manual_seed(7), dtype=out.fused.dtype)
    return (out.fused * w).sum()


def _check_maps(out, b, k, t_or_none):
    assert out.fused.shape == (b, OUT_DIM)
    assert torch.isfinite(out.fused).all()
    assert isinstance(out.extras, dict)
    if out.v_attn is not None:
        assert out.v_attn.dim() == 3 and out.v_attn.shape[0] == b and out.v_attn.shape[2] == k
    if out.q_attn is not None:
        assert out.q_attn.dim() == 3 and out.q_attn.shape[0] == b
        if t_or_none is not None:
            assert out.q_attn.shape[2] == t_or_none


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("b, k, t", [(3, 4, 5), (1, 4, 5), (2, 1, 1)])
def test_shapes_with_words(name, b, k, t):
    f = make_attention(name).eval()
    v, q, vm, qm = make_attention_inputs(b, k, t, masked=False)
    _check_maps(f(v, q), b, k, t)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_with_a_question_vector(name):
    f = make_attention(name).eval()
    v, q, vm, _ = make_attention_inputs(3, 4, vector=True)
    out = f(v, q, v_mask=vm)
    _check_maps(out, 3, 4, None)


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("name", NAMES)
def test_masked_positions_get_zero_attention_and_valid_ones_sum_to_one(name):
    f = make_attention(name).eval()
    v, q, vm, qm = make_attention_inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    for attn, mask in ((out.v_attn, vm), (out.q_attn, qm)):
        if attn is None:
            continue
        m = mask.unsqueeze(1).expand_as(attn)
        assert (attn[~m] == 0).all(), f"{name}: a masked position got attention"
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))


@pytest.mark.parametrize("name", NAMES)
def test_masked_features_change_nothing(name):
    f = make_attention(name).eval()
    v, q, vm, qm = make_attention_inputs()
    ref = f(v, q, v_mask=vm, q_mask=qm)
    v2, q2 = v.clone(), q.clone()
    v2[~vm] = 1e3 * torch.randn(int((~vm).sum()), V_DIM)
    q2[~qm] = 1e3 * torch.randn(int((~qm).sum()), Q_DIM)
    out = f(v2, q2, v_mask=vm, q_mask=qm)
    torch.testing.assert_close(out.fused, ref.fused)
    if ref.v_attn is not None:
        torch.testing.assert_close(out.v_attn, ref.v_attn)


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_rows_are_finite(name):
    f = make_attention(name).eval()
    v, q, vm, qm = make_attention_inputs()
    vm[0] = False
    qm[1] = False
    out = f(v, q, v_mask=vm, q_mask=qm)
    assert torch.isfinite(out.fused).all()
    if out.v_attn is not None:
        assert (out.v_attn[0] == 0).all()
    for t in out.extras.values():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            assert torch.isfinite(t).all()


@pytest.mark.parametrize("name", ORDER_FREE)
def test_permuting_regions_permutes_attention_and_keeps_fused(name):
    f = make_attention(name).eval()
    v, q, vm, qm = make_attention_inputs(k=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    ref = f(v, q, v_mask=vm, q_mask=qm)
    out = f(v[:, perm], q, v_mask=vm[:, perm], q_mask=qm)
    torch.testing.assert_close(out.fused, ref.fused, atol=1e-5, rtol=1e-4)
    if ref.v_attn is not None:
        torch.testing.assert_close(out.v_attn, ref.v_attn[..., perm], atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- parameters, gradients, state


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_and_finite_gradients(name):
    f = make_attention(name).eval()
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters()
    v, q, vm, qm = make_attention_inputs()
    v.requires_grad_(True)
    q.requires_grad_(True)
    _loss(f(v, q, v_mask=vm, q_mask=qm)).backward()
    for pname, p in f.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname} has a non-finite gradient"
    for x in (v, q):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # padding gets no gradient
    assert (v.grad[~vm] == 0).all() and (q.grad[~qm] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_train_mode_backward_is_finite(name):
    f = make_attention(name).train()
    v, q, vm, qm = make_attention_inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    _loss(out).backward()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_and_determinism(name):
    a, b = make_attention(name, seed=0).eval(), make_attention(name, seed=1).eval()
    v, q, vm, qm = make_attention_inputs()
    assert not torch.equal(a(v, q, vm, qm).fused, b(v, q, vm, qm).fused)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(a(v, q, vm, qm).fused, b(v, q, vm, qm).fused)
    c = make_attention(name, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    assert torch.equal(a(v, q, vm, qm).fused, a(v, q, vm, qm).fused)


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_independent(name):
    f = make_attention(name).eval()
    v, q, vm, qm = make_attention_inputs()
    full = f(v, q, v_mask=vm, q_mask=qm).fused
    for i in range(v.shape[0]):
        one = f(v[i : i + 1], q[i : i + 1], v_mask=vm[i : i + 1], q_mask=qm[i : i + 1]).fused
        torch.testing.assert_close(full[i : i + 1], one, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- compile / export / numerics


@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph_matches_eager(name):
    if not mmfuse.fusion_info(name).compile:
        pytest.skip(f"{name} does not claim torch.compile support")
    torch._dynamo.reset()
    f = make_attention(name).eval()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    for vector in (False, True):
        v, q, vm, qm = make_attention_inputs(vector=vector)
        a, b = compiled(v, q, v_mask=vm, q_mask=qm), f(v, q, v_mask=vm, q_mask=qm)
        torch.testing.assert_close(a.fused, b.fused)


@pytest.mark.parametrize("name", NAMES)
def test_export_matches_eager(name):
    if not mmfuse.fusion_info(name).export:
        pytest.skip(f"{name} does not claim torch.export support")
    f = make_attention(name).eval()
    v, q, vm, qm = make_attention_inputs()
    exported = torch.export.export(f, (v, q), {"v_mask": vm, "q_mask": qm})
    torch.testing.assert_close(exported.module()(v, q, v_mask=vm, q_mask=qm).fused, f(v, q, vm, qm).fused)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    f = make_attention(name, dtype=torch.float64).eval()
    v, q, vm, qm = make_attention_inputs(b=2, k=3, t=3, dtype=torch.float64)
    v.requires_grad_(True)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, c: f(a, c, v_mask=vm, q_mask=qm).fused, (v, q), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_autocast_is_finite(name):
    f = make_attention(name).train()
    v, q, vm, qm = make_attention_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = f(v, q, v_mask=vm, q_mask=qm)
    assert torch.isfinite(out.fused.float()).all()
    _loss(out).float().backward()


# ---------------------------------------------------------------- bad input


def _raises(parts, fn):
    with pytest.raises(ValueError) as err:
        fn()
    for part in parts:
        assert str(part) in str(err.value), f"{part!r} not in {str(err.value)!r}"


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(name):
    f = make_attention(name)
    v, q, vm, qm = make_attention_inputs()
    _raises([name, f"[B, K, {V_DIM}]", (3, 4, V_DIM + 1)], lambda: f(torch.randn(3, 4, V_DIM + 1), q))
    _raises([name, f"[B, K, {V_DIM}]", (4, V_DIM)], lambda: f(torch.randn(4, V_DIM), q))
    _raises([name, f"[B, T, {Q_DIM}] or [B, {Q_DIM}]", (3, 5, 2)], lambda: f(v, torch.randn(3, 5, 2)))
    _raises([name, "batch", (2, 5, Q_DIM)], lambda: f(v, torch.randn(2, 5, Q_DIM)))
    _raises([name, "floating", "torch.int64"], lambda: f(v.long(), q))
    _raises([name, "v_mask", "torch.bool", (3, 4)], lambda: f(v, q, v_mask=vm.float()))
    _raises([name, "v_mask", (3, 4), (3, 5)], lambda: f(v, q, v_mask=torch.ones(3, 5, dtype=torch.bool)))
    _raises([name, "q_mask", (3, 5)], lambda: f(v, q, q_mask=torch.ones(3, 4, dtype=torch.bool)))
    _raises([name, "q_mask needs word features"], lambda: f(v, q[:, 0], q_mask=qm))


@pytest.mark.parametrize("name", NAMES)
def test_bad_constructor_arguments_raise(name):
    tiny = mmfuse.fusion_info(name).tiny
    for key in ("v_dim", "q_dim", "out_dim"):
        args = {"v_dim": V_DIM, "q_dim": Q_DIM, "out_dim": OUT_DIM, **tiny, key: 0}
        _raises([name, key, "0"], lambda: mmfuse.create_fusion(name, **args))

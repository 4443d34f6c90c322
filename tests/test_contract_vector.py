"""The vector-fusion contract (DESIGN.md), checked for every registered vector fusion.

Parametrised over the registry: a fusion is tested here the moment it is registered.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.func import functional_call

import mmfuse
from contract_helpers import IN_DIMS, OUT_DIM, make_fusion, make_inputs, vector_cases

CASES = vector_cases()


def _loss(out: torch.Tensor) -> torch.Tensor:
    # a random projection, so that no gradient cancels by symmetry (a plain sum would zero the
    # gradient of anything a softmax or a normalisation feeds)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return (out * w).sum()


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name, m", CASES)
@pytest.mark.parametrize(
    "leading, expected",
    [
        ((4,), (4,)),  # 2-D inputs
        ((1,), (1,)),  # batch size 1
        ((3, 5), (3, 5)),  # 3-D inputs [B, K, D]
        ("bcast", (3, 5)),  # [B, K, Dv] with [B, 1, Dq] (and [B, K, D3])
        ("ranks", (3, 5)),  # [B, K, Dv] with [Dq]: right-aligned broadcasting
    ],
)
def test_output_shape(name, m, leading, expected):
    f = make_fusion(name, m).eval()
    if leading == "bcast":
        leading = [(3, 5), (3, 1)] + [(3, 5)] * (m - 2)
    elif leading == "ranks":
        leading = [(3, 5), ()] + [(1, 5)] * (m - 2)
    out = f(*make_inputs(f.in_dims, leading))
    assert out.shape == (*expected, f.out_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- parameters and gradients


@pytest.mark.parametrize("name, m", CASES)
def test_parameter_count_matches_docstring_formula(name, m):
    f = make_fusion(name, m)
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters()
    # and the formula scales with the dims (catches a constant that happens to agree)
    g = make_fusion(name, m, out_dim=OUT_DIM + 3)
    assert sum(p.numel() for p in g.parameters()) == g.expected_num_parameters()


@pytest.mark.parametrize("name, m", CASES)
def test_every_parameter_and_input_gets_a_finite_gradient(name, m):
    f = make_fusion(name, m).eval()
    xs = make_inputs(f.in_dims, (4, 3), requires_grad=True)
    _loss(f(*xs)).backward()
    for pname, p in f.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: parameter {pname} has an all-zero gradient"
    for i, x in enumerate(xs):
        assert x.grad is not None and torch.isfinite(x.grad).all(), f"{name}: input {i}"
        assert x.grad.abs().sum() > 0, f"{name}: input {i} does not influence the output"


@pytest.mark.parametrize("name, m", CASES)
def test_train_mode_backward_is_finite(name, m):
    f = make_fusion(name, m).train()
    xs = make_inputs(f.in_dims, (8,), requires_grad=True)
    _loss(f(*xs)).backward()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters() if p.grad is not None)


# ---------------------------------------------------------------- state and determinism


@pytest.mark.parametrize("name, m", CASES)
def test_state_dict_round_trip_gives_identical_outputs(name, m):
    a = make_fusion(name, m, seed=0).eval()
    b = make_fusion(name, m, seed=1).eval()
    xs = make_inputs(a.in_dims, (4,))
    if a.expected_num_parameters() > 0:
        assert not torch.equal(a(*xs), b(*xs)), "different seeds should give different weights"
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(a(*xs), b(*xs))


@pytest.mark.parametrize("name, m", CASES)
def test_same_seed_same_weights_and_eval_is_deterministic(name, m):
    a, b = make_fusion(name, m, seed=3), make_fusion(name, m, seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    a.eval()
    xs = make_inputs(a.in_dims, (4, 2))
    assert torch.equal(a(*xs), a(*xs))


@pytest.mark.parametrize("name, m", CASES)
def test_rows_are_independent(name, m):
    """Row i of a batched call equals the call on row i alone (no mixing across the batch)."""
    f = make_fusion(name, m).eval()
    xs = make_inputs(f.in_dims, (5,))
    full = f(*xs)
    for i in range(5):
        torch.testing.assert_close(full[i : i + 1], f(*[x[i : i + 1] for x in xs]))


# ---------------------------------------------------------------- compile / export


@pytest.mark.parametrize("name, m", CASES)
def test_compile_fullgraph_matches_eager(name, m):
    if not mmfuse.fusion_info(name).compile:
        pytest.skip(f"{name} does not claim torch.compile support")
    torch._dynamo.reset()
    f = make_fusion(name, m).eval()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    for leading in [(4,), [(2, 3)] + [(2, 1)] * (m - 1)]:
        xs = make_inputs(f.in_dims, leading)
        torch.testing.assert_close(compiled(*xs), f(*xs))


@pytest.mark.parametrize("name, m", CASES)
def test_export_matches_eager(name, m):
    if not mmfuse.fusion_info(name).export:
        pytest.skip(f"{name} does not claim torch.export support")
    f = make_fusion(name, m).eval()
    xs = tuple(make_inputs(f.in_dims, (4,)))
    exported = torch.export.export(f, xs)
    torch.testing.assert_close(exported.module()(*xs), f(*xs))


# ---------------------------------------------------------------- numerics


@pytest.mark.parametrize("name, m", CASES)
def test_gradcheck_float64(name, m):
    f = make_fusion(name, m, dtype=torch.float64).eval()
    xs = tuple(make_inputs(f.in_dims, (2,), dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda *a: f(*a), xs, eps=1e-6, atol=1e-5)
    # and with respect to the parameters
    names = [n for n, _ in f.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in f.named_parameters())
    inputs = tuple(x.detach() for x in xs)
    if params:

        def by_params(*ps):
            return functional_call(f, dict(zip(names, ps)), inputs)

        assert torch.autograd.gradcheck(by_params, params, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name, m", CASES)
def test_bfloat16_autocast_is_finite(name, m):
    f = make_fusion(name, m).train()
    xs = make_inputs(f.in_dims, (4, 3), requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = f(*xs)
    assert torch.isfinite(out.float()).all()
    _loss(out.float()).backward()
    assert all(torch.isfinite(x.grad).all() for x in xs)
    # close to float32 at bf16 precision
    with torch.no_grad():
        f.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = f(*xs).float()
        ref = f(*xs)
    torch.testing.assert_close(low, ref, atol=0.1 * ref.abs().max().item() + 0.05, rtol=0.1)


# ---------------------------------------------------------------- bad input


def _raises(match_parts, fn):
    with pytest.raises(ValueError) as err:
        fn()
    msg = str(err.value)
    for part in match_parts:
        assert str(part) in msg, f"{part!r} not in error message {msg!r}"


@pytest.mark.parametrize("name, m", CASES)
def test_bad_inputs_raise_clear_errors(name, m):
    f = make_fusion(name, m)
    dims = f.in_dims
    good = make_inputs(dims, (4,))
    # wrong number of inputs
    _raises([name, dims], lambda: f(*good[:-1]))
    _raises([name, dims], lambda: f(*good, good[0]))
    # wrong last dim: names the fusion, the expected dim and the one that came
    bad = list(good)
    bad[-1] = torch.randn(4, dims[-1] + 1)
    _raises([name, dims[-1], dims[-1] + 1], lambda: f(*bad))
    # leading dims that do not broadcast
    bad = [torch.randn(4, d) for d in dims]
    bad[-1] = torch.randn(3, dims[-1])
    _raises([name, "broadcast", (4, dims[0]), (3, dims[-1])], lambda: f(*bad))
    # integer dtype
    bad = list(good)
    bad[0] = torch.ones(4, dims[0], dtype=torch.int64)
    _raises([name, "floating", "torch.int64"], lambda: f(*bad))
    # not a tensor
    _raises([name, "list"], lambda: f([1.0] * dims[0], *good[1:]))


@pytest.mark.parametrize("name, m", CASES)
def test_bad_constructor_arguments_raise(name, m):
    info = mmfuse.fusion_info(name)
    tiny = info.tiny
    dims = IN_DIMS[:m]
    for bad_dim in (0, -3):
        bad = (bad_dim, *dims[1:])
        _raises([name, "in_dims", bad_dim], lambda: mmfuse.create_fusion(name, in_dims=bad, out_dim=4, **tiny))
    _raises([name, "in_dims"], lambda: mmfuse.create_fusion(name, in_dims=5, out_dim=4, **tiny))
    _raises([name, "out_dim", 0], lambda: mmfuse.create_fusion(name, in_dims=dims, out_dim=0, **tiny))
    _raises([name], lambda: mmfuse.create_fusion(name, in_dims=dims[:1], out_dim=4, **tiny))
    if info.max_modalities is not None:
        too_many = (*dims, 4)[: info.max_modalities + 1]
        too_many = too_many + (4,) * (info.max_modalities + 1 - len(too_many))
        _raises([name, f"exactly {info.max_modalities}"], lambda: mmfuse.create_fusion(name, in_dims=too_many, out_dim=4, **tiny))


# ---------------------------------------------------------------- properties


@st.composite
def broadcast_case(draw, m):
    dims = tuple(draw(st.integers(1, 6)) for _ in range(m))
    ndim = draw(st.integers(0, 3))
    full = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    shapes = []
    for _ in range(m):
        # each input keeps a suffix of the full leading shape, with some dims collapsed to 1
        keep = draw(st.integers(0, ndim))
        lead = full[ndim - keep :]
        lead = tuple(1 if draw(st.booleans()) else d for d in lead)
        shapes.append(lead)
    if all(len(s) == 0 for s in shapes) and ndim == 0:
        shapes[0] = (2,)
    out_dim = draw(st.integers(1, 5))
    return dims, shapes, out_dim


@pytest.mark.parametrize("name, m", CASES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_broadcasting_equals_explicit_expansion(name, m, data):
    dims, shapes, out_dim = data.draw(broadcast_case(m))
    info = mmfuse.fusion_info(name)
    torch.manual_seed(0)
    f = mmfuse.create_fusion(name, in_dims=dims, out_dim=out_dim, **info.tiny).eval()
    xs = make_inputs(dims, shapes)
    out = f(*xs)
    leading = torch.broadcast_shapes(*shapes)
    assert out.shape == (*leading, f.out_dim)
    expanded = [x.expand(*leading, x.shape[-1]).contiguous() for x in xs]
    torch.testing.assert_close(out, f(*expanded))

"""Reference tests for the bilinear-pooling family against explicit tensors at small dims.

Each test rebuilds the method's output from its defining formula (explicit sums, explicit
weight tensors) with the module's own weights, in float64.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mmfuse
from mmfuse.fusions import LMF, MCB, MFB, MFH, MLB, TFN, Bilinear, Block, BlockTucker, Mutan, Tucker
from mmfuse.fusions.factorized import chunk_sizes
from reference import _float64  # noqa: F401

DIMS = (3, 4, 2)


def inputs(dims, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for d in dims]


def ssqrt_l2(z):
    z = torch.sign(z) * torch.sqrt(z.abs())
    return z / z.norm(dim=-1, keepdim=True)


def test_bilinear_is_x_W_k_y():
    f = Bilinear((3, 4), 5)
    x, y = inputs((3, 4))
    out = f(x, y)
    for n in range(3):
        for k in range(5):
            ref = sum(x[n, i] * f.weight[k, i, j] * y[n, j] for i in range(3) for j in range(4)) + f.bias[k]
            assert out[n, k].item() == pytest.approx(ref.item(), abs=1e-12)


def test_bilinear_matches_torch_bilinear():
    f = Bilinear((3, 4), 5)
    x, y = inputs((3, 4))
    torch.testing.assert_close(f(x, y), torch.nn.functional.bilinear(x, y, f.weight, f.bias))


def _tensor_product(rows):
    """Explicit vec([1; x_1] ⊗ ..), element by element, row-major."""
    ext = [[1.0] + r.tolist() for r in rows]
    return torch.tensor([math.prod(c) for c in itertools.product(*ext)], dtype=torch.float64)


@pytest.mark.parametrize("m", [2, 3])
def test_tfn_is_an_mlp_on_the_explicit_outer_product(m):
    dims = DIMS[:m]
    f = TFN(dims, 2, hidden_dims=(4,)).eval()
    xs = inputs(dims)
    out = f(*xs)
    lin1, lin2 = [l for l in f.modules() if isinstance(l, torch.nn.Linear)]
    assert lin1.in_features == math.prod(d + 1 for d in dims)
    for n in range(3):
        t = _tensor_product([x[n] for x in xs])
        ref = lin2(torch.relu(lin1(t)))
        torch.testing.assert_close(out[n], ref)


def test_tfn_keeps_unimodal_terms():
    # the entry for (1, .., 1, x_m[i]) is x_m[i] itself; (1, .., 1) is the constant 1
    f = TFN((2, 3), 1, hidden_dims=())
    x, y = inputs((2, 3), n=1)
    with torch.no_grad():
        f.mlp.layers[0].weight.zero_()
        f.mlp.layers[0].bias.zero_()
        f.mlp.layers[0].weight[0, 0] = 1.0  # constant
        f.mlp.layers[0].weight[0, 2] = 10.0  # (1, y[1])
        f.mlp.layers[0].weight[0, 4 * 1] = 100.0  # (x[0], 1)
    ref = 1.0 + 10 * y[0, 1] + 100 * x[0, 0]
    assert f(x, y).item() == pytest.approx(ref.item(), abs=1e-10)


@pytest.mark.parametrize("m", [2, 3])
def test_lmf_equals_tfn_with_the_cp_reconstructed_weight(m):
    dims = DIMS[:m]
    f = LMF(dims, 5, rank=3)
    with torch.no_grad():
        f.bias.normal_()
    xs = inputs(dims)
    # W[o, i_1, .., i_M] = sum_r λ_r prod_m factor_m[i_m, r, o]
    letters = "abc"[:m]
    spec = ",".join(f"{a}ro" for a in letters) + ",r->o" + letters
    W = torch.einsum(spec, *f.factors, f.rank_weights)
    tfn = TFN(dims, 5, hidden_dims=())
    with torch.no_grad():
        tfn.mlp.layers[0].weight.copy_(W.reshape(5, -1))
        tfn.mlp.layers[0].bias.copy_(f.bias)
    torch.testing.assert_close(f(*xs), tfn(*xs))
    # and explicitly for one row
    t = _tensor_product([x[0] for x in xs])
    torch.testing.assert_close(f(*xs)[0], W.reshape(5, -1) @ t + f.bias)


def _explicit_count_sketch(x, h, s, d):
    out = [0.0] * d
    for i in range(len(x)):
        out[int(h[i])] += float(s[i]) * float(x[i])
    return out


def _explicit_circular_convolution(a, b):
    d = len(a)
    return [sum(a[i] * b[(j - i) % d] for i in range(d)) for j in range(d)]


@pytest.mark.parametrize("m", [2, 3])
def test_mcb_is_count_sketch_then_circular_convolution(m):
    dims = DIMS[:m]
    f = MCB(dims, 4, hidden_dim=11, dropout_pre_lin=0.0).eval()
    xs = inputs(dims)
    sk = f.sketch(*xs)
    out = f(*xs)
    for n in range(3):
        conv = None
        for x, (h, s) in zip(xs, f.hashes()):
            cs = _explicit_count_sketch(x[n], h, s, 11)
            conv = cs if conv is None else _explicit_circular_convolution(conv, cs)
        ref = torch.tensor(conv, dtype=torch.float64)
        torch.testing.assert_close(sk[n], ref)
        torch.testing.assert_close(out[n], f.head.linear(ssqrt_l2(ref)))


def test_mcb_sketch_is_the_count_sketch_of_the_outer_product():
    f = MCB((3, 4), 7, hidden_dim=7, output_linear=False, normalize=False).eval()
    x, y = inputs((3, 4), n=1)
    (hx, sx), (hy, sy) = f.hashes()
    ref = [0.0] * 7
    for i in range(3):
        for j in range(4):
            ref[(int(hx[i]) + int(hy[j])) % 7] += float(sx[i] * sy[j]) * float(x[0, i] * y[0, j])
    torch.testing.assert_close(f(x, y)[0], torch.tensor(ref, dtype=torch.float64))


@pytest.mark.parametrize("m, d, shapes", [(2, 11, [(2, 3, 5), (3, 4)]), (3, 8, [(3, 5), (1, 5), (2, 3, 6)]), (2, 16, [(4, 5), (4, 4)])])
def test_mcb_closed_form_gradient(m, d, shapes):
    """The sketch's hand-written backward (a cross-correlation, _CompactBilinear) against gradcheck
    and against autograd through rfft / irfft, odd and even d, broadcast leading dims."""
    from mmfuse.fusions.bilinear import _CompactBilinear, _compact_bilinear

    dims = tuple(s[-1] for s in shapes)
    f = MCB(dims, d, hidden_dim=d, output_linear=False, normalize=False)
    hs = [t for pair in f.hashes() for t in pair]
    g = torch.Generator().manual_seed(m * d)
    xs = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    with torch.enable_grad():  # the module's fixture runs tests under no_grad
        assert torch.autograd.gradcheck(lambda *a: _CompactBilinear.apply(d, m, *a, *hs), xs)
        z = f.sketch(*xs)
        w = torch.randn(z.shape, generator=g, dtype=torch.float64)
        got = torch.autograd.grad((z * w).sum(), xs)
        ref = torch.autograd.grad((_compact_bilinear(d, xs, hs)[0] * w).sum(), xs)
    for a, b, x in zip(got, ref, xs):
        assert a.shape == x.shape
        torch.testing.assert_close(a, b)


def test_mcb_gradient_keeps_the_input_dtype():
    f = MCB((6, 5), 4, hidden_dim=8, dtype=torch.float32)
    xs = [torch.randn(3, d).to(torch.bfloat16).requires_grad_(True) for d in (6, 5)]
    with torch.enable_grad():
        f(*xs).float().sum().backward()
    assert all(x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all() for x in xs)


def _mcb_inner_product_errors(d, seeds, x, y, x2, y2):
    true = float((x @ x2) * (y @ y2))
    est = []
    for seed in seeds:
        f = MCB((x.shape[0], y.shape[0]), d, hidden_dim=d, output_linear=False, normalize=False, hash_seed=seed).eval()
        est.append(float(f(x, y) @ f(x2, y2)))
    est = torch.tensor(est, dtype=torch.float64)
    return true, est


def test_mcb_inner_products_estimate_the_bilinear_kernel_without_bias():
    g = torch.Generator().manual_seed(3)
    x, x2 = torch.randn(2, 16, generator=g, dtype=torch.float64)
    y, y2 = torch.randn(2, 12, generator=g, dtype=torch.float64)
    x2 = 0.6 * x + 0.8 * x2  # correlated pairs: a kernel value far from 0
    y2 = 0.6 * y + 0.8 * y2
    true, est = _mcb_inner_product_errors(32, range(600), x, y, x2, y2)
    # unbiased: the mean over hash draws is within 4 standard errors of <x,x'><y,y'>
    se = est.std() / math.sqrt(len(est))
    assert abs(est.mean() - true) < 4 * se, (est.mean(), true, se)
    # and the error of one draw shrinks as d grows
    rmse = {}
    for d in (16, 256, 2048):
        _, e = _mcb_inner_product_errors(d, range(100), x, y, x2, y2)
        rmse[d] = float(((e - true) ** 2).mean().sqrt())
    assert rmse[2048] < rmse[256] < rmse[16], rmse


def test_mlb_equals_the_full_bilinear_form():
    """With identity σ and no biases on U, V: z_k = x^T W_k y + b, W_k = sum_j P_kj U_j V_j^T."""
    f = MLB((3, 4), 5, hidden_dim=6, activation=None, dropout_input=0.0, dropout_pre_lin=0.0)
    U, V = f.inputs.linears
    with torch.no_grad():
        U.bias.zero_()
        V.bias.zero_()
    P = f.head.linear.weight  # [5, 6]
    W = torch.einsum("kj,ji,jl->kil", P, U.weight, V.weight)
    full = Bilinear((3, 4), 5)
    with torch.no_grad():
        full.weight.copy_(W)
        full.bias.copy_(f.head.linear.bias)
    x, y = inputs((3, 4))
    torch.testing.assert_close(f(x, y), full(x, y))


@pytest.mark.parametrize("m", [2, 3])
def test_mlb_reference_with_tanh(m):
    dims = DIMS[:m]
    f = MLB(dims, 5, hidden_dim=6).eval()
    assert f.inputs.drop_in.p == 0.5 and f.head.drop_pre.p == 0.5  # the paper's dropouts
    xs = inputs(dims)
    prod = math.prod(torch.tanh(lin(x)) for lin, x in zip(f.inputs.linears, xs))
    torch.testing.assert_close(f(*xs), f.head.linear(prod))


def _mfb_block(f, xs, i, prev):
    """The i-th expanded vector of MFH, explicitly: projections of block i, multiplied."""
    kh = f.factor * f.hidden_dim
    e = math.prod(lin(x)[:, i * kh : (i + 1) * kh] for lin, x in zip(f.inputs.linears, xs))
    return e if prev is None else e * prev


def _sum_windows(e, k):
    return torch.stack([e[:, j * k : (j + 1) * k].sum(-1) for j in range(e.shape[1] // k)], dim=-1)


@pytest.mark.parametrize("m", [2, 3])
def test_mfb_reference(m):
    dims = DIMS[:m]
    f = MFB(dims, 2, hidden_dim=3, factor=4).eval()
    xs = inputs(dims)
    e = _mfb_block(f, xs, 0, None)
    z = ssqrt_l2(_sum_windows(e, 4))
    torch.testing.assert_close(f(*xs), f.head.linear(z))
    raw = MFB(dims, 3, hidden_dim=3, factor=4, output_linear=False).eval()
    assert raw.expected_num_parameters() == sum((d + 1) * 12 for d in dims)
    torch.testing.assert_close(raw(*xs), ssqrt_l2(_sum_windows(_mfb_block(raw, xs, 0, None), 4)))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_mfh_reference(order):
    f = MFH((3, 4), 2, hidden_dim=3, factor=2, order=order).eval()
    xs = inputs((3, 4))
    e, zs = None, []
    for i in range(order):
        e = _mfb_block(f, xs, i, e)
        zs.append(ssqrt_l2(_sum_windows(e, 2)))
    torch.testing.assert_close(f(*xs), f.head.linear(torch.cat(zs, -1)))


def test_mfh_passes_the_dropped_expanded_vector_to_the_next_block():
    f = MFH((3, 4), 6, hidden_dim=3, factor=2, order=2, dropout_expanded=0.5, normalize=False, output_linear=False)
    f.train()
    xs = inputs((3, 4), n=200)
    torch.manual_seed(0)
    out = f(*xs)
    # where block 1's dropout zeroed a whole window, block 2's window is zero too
    # (only possible if e_1 enters block 2 after its dropout)
    z1, z2 = out[:, :3], out[:, 3:]
    assert ((z1 == 0) <= (z2 == 0)).all() and (z1 == 0).any()


def test_tucker_is_an_explicit_triple_sum():
    f = Tucker((3, 4), 2, hidden_dim=3, projected_dims=(2, 5)).eval()
    x, y = inputs((3, 4))
    xt, yt = (torch.tanh(lin(a)) for lin, a in zip(f.inputs.linears, (x, y)))
    for n in range(3):
        t = torch.tensor(
            [sum(f.core_weight[k, i, j] * xt[n, i] * yt[n, j] for i in range(2) for j in range(5)) + f.core_bias[k] for k in range(3)],
            dtype=torch.float64,
        )
        torch.testing.assert_close(f(x, y)[n], f.head.linear(t))


def _tucker_like(src, core):
    """A Tucker with no activation whose projections and head are copied from ``src``."""
    t = Tucker(src.in_dims, src.out_dim, hidden_dim=src.hidden_dim, activation=None)
    with torch.no_grad():
        for a, b in zip(t.inputs.linears, src.inputs.linears):
            a.load_state_dict(b.state_dict())
        t.head.load_state_dict(src.head.state_dict())
        t.core_weight.copy_(core)
        t.core_bias.zero_()
    return t


def test_mutan_equals_tucker_with_the_core_built_from_its_rank_terms():
    f = Mutan((3, 4), 2, hidden_dim=5, rank=3, activation=None, dropout_input=0.0, dropout_pre_lin=0.0)
    A, B = f.rank_terms
    with torch.no_grad():
        A.bias.zero_()
        B.bias.zero_()
    # rank term r of modality m is rows [r*H, (r+1)*H) of its Linear
    Wa, Wb = A.weight.view(3, 5, 5), B.weight.view(3, 5, 5)  # [R, out, in]
    core = torch.einsum("roi,roj->oij", Wa, Wb)  # [H, t_x, t_y]
    x, y = inputs((3, 4))
    torch.testing.assert_close(f(x, y), _tucker_like(f, core)(x, y))


@pytest.mark.parametrize("m", [2, 3])
def test_mutan_reference(m):
    dims = DIMS[:m]
    f = Mutan(dims, 2, hidden_dim=4, rank=3).eval()
    xs = inputs(dims)
    terms = [lin(torch.tanh(p(x))) for lin, p, x in zip(f.rank_terms, f.inputs.linears, xs)]
    z = sum(math.prod(t[:, r * 4 : (r + 1) * 4] for t in terms) for r in range(3))
    torch.testing.assert_close(f(*xs), f.head.linear(z))


def test_block_equals_tucker_with_a_block_diagonal_core():
    f = Block((3, 4), 2, hidden_dim=7, chunks=3, rank=2, normalize=False, dropout_projected=0.0)
    assert f.sizes == [3, 3, 1]
    core = torch.zeros(7, 7, 7, dtype=torch.float64)
    start = 0
    for (count, size), (ma, mb) in zip(f.groups, f.merge):
        with torch.no_grad():
            ma.bias.zero_()
            mb.bias.zero_()
        for c in range(count):
            a = ma.weight[c].T.reshape(2, size, size)  # [R, out, in]
            b = mb.weight[c].T.reshape(2, size, size)
            sl = slice(start, start + size)
            core[sl, sl, sl] = torch.einsum("roi,roj->oij", a, b)
            start += size
    x, y = inputs((3, 4))
    torch.testing.assert_close(f(x, y), _tucker_like(f, core)(x, y))


@pytest.mark.parametrize("m", [2, 3])
def test_block_reference_normalises_each_chunk(m):
    dims = DIMS[:m]
    f = Block(dims, 2, hidden_dim=7, chunks=3, rank=2).eval()
    xs = inputs(dims)
    hs = [lin(x) for lin, x in zip(f.inputs.linears, xs)]
    zs, start = [], 0
    for g, (count, size) in enumerate(f.groups):
        for c in range(count):
            sl = slice(start, start + size)
            terms = [h[:, sl] @ lin.weight[c] + lin.bias[c] for h, lin in zip(hs, f.merge[g])]
            prod = math.prod(terms)  # [N, R*s]
            z = sum(prod[:, r * size : (r + 1) * size] for r in range(2))
            zs.append(ssqrt_l2(z))
            start += size
    torch.testing.assert_close(f(*xs), f.head.linear(torch.cat(zs, -1)))



@pytest.mark.parametrize("tile", [1 << 21, 40])  # one row tile; tiles of 2 rows and a remainder
@pytest.mark.parametrize("m", [2, 3])
def test_block_rank_product_node_passes_gradcheck(m, tile, monkeypatch):
    from mmfuse.fusions import factorized
    from mmfuse.fusions.factorized import _RankProductSum

    monkeypatch.setattr(factorized, "_TILE_ELEMENTS", tile)

    g = torch.Generator().manual_seed(1)
    args = []
    for _ in range(m):  # p [C, B, K, s], W [C, s, R*s], b [C, R*s]: chunk-major, 3-D rows
        args += [torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64).requires_grad_(),
                 torch.randn(3, 5, 6, generator=g, dtype=torch.float64).requires_grad_(),
                 torch.randn(3, 6, generator=g, dtype=torch.float64).requires_grad_()]
    with torch.enable_grad():  # the module's float64 fixture runs tests under no_grad
        assert torch.autograd.gradcheck(lambda *a: _RankProductSum.apply(2, *a), args)


@pytest.mark.parametrize("m", [2, 3])
def test_block_fused_and_broadcast_paths_agree(m):
    # same-shape inputs take the fused autograd node, broadcast ones the plain path: the
    # values and every parameter's gradient must not depend on which one ran
    dims = DIMS[:m]
    f = Block(dims, 2, hidden_dim=7, chunks=3, rank=2).eval()
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(2, 4, d, generator=g, dtype=torch.float64) for d in dims]
    # the broadcast path: the first modality given as [2, 1, D] and repeated on its own
    first = xs[0][:, :1]
    xs_same = [first.expand(2, 4, -1).contiguous()] + xs[1:]
    xs_bcast = [first] + xs[1:]
    grads = []
    for inp in (xs_same, xs_bcast):
        f.zero_grad()
        with torch.enable_grad():  # the module's float64 fixture runs tests under no_grad
            out = f(*inp)
            (out * torch.arange(out.numel(), dtype=out.dtype).view(out.shape).cos()).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in f.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)



def test_block_empty_batch_gives_empty_output_and_zero_gradients():
    f = Block((3, 4), 2, hidden_dim=7, chunks=3, rank=2)
    x = torch.randn(0, 3, requires_grad=True)
    with torch.enable_grad():  # the module's float64 fixture runs tests under no_grad
        out = f(x, torch.randn(0, 4))
        out.sum().backward()
    assert out.shape == (0, 2) and x.grad.shape == (0, 3)
    assert all(p.grad is None or not p.grad.any() for p in f.merge.parameters())
    assert f(torch.randn(0, 5, 3), torch.randn(0, 5, 4)).shape == (0, 5, 2)


def test_block_tucker_reference():
    f = BlockTucker((3, 4), 2, hidden_dim=7, chunks=2).eval()
    assert f.sizes == [4, 3]
    x, y = inputs((3, 4))
    xt, yt = (lin(a) for lin, a in zip(f.inputs.linears, (x, y)))
    zs, start = [], 0
    for (count, size), core, bias in zip(f.groups, f.core_weights, f.core_biases):
        for c in range(count):
            sl = slice(start, start + size)
            z = torch.einsum("ni,kij,nj->nk", xt[:, sl], core[c], yt[:, sl]) + bias[c]
            zs.append(ssqrt_l2(z))
            start += size
    torch.testing.assert_close(f(x, y), f.head.linear(torch.cat(zs, -1)))


def test_block_tucker_chunk_matches_torch_bilinear():
    f = BlockTucker((3, 4), 2, hidden_dim=6, chunks=2, normalize=False, dropout_projected=0.0)
    x, y = inputs((3, 4))
    xt, yt = (lin(a) for lin, a in zip(f.inputs.linears, (x, y)))
    core, bias = f.core_weights[0], f.core_biases[0]
    z0 = torch.nn.functional.bilinear(xt[:, :3], yt[:, :3], core[0], bias[0])
    z1 = torch.nn.functional.bilinear(xt[:, 3:], yt[:, 3:], core[1], bias[1])
    torch.testing.assert_close(f(x, y), f.head.linear(torch.cat([z0, z1], -1)))


def test_chunk_sizes_follow_block_bootstrap():
    assert chunk_sizes(1600, 18) == [89] * 17 + [87]
    assert chunk_sizes(1800, 10) == [180] * 10
    assert chunk_sizes(9, 6) == [2, 2, 2, 1, 1, 1]
    with pytest.raises(ValueError, match="chunks"):
        mmfuse.create_fusion("block", in_dims=(3, 3), out_dim=2, hidden_dim=4, chunks=5)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), st.integers(1, 60))
def test_chunk_sizes_cover_the_dim_with_nonempty_chunks(dim, chunks):
    if chunks > dim:
        return
    sizes = chunk_sizes(dim, chunks)
    assert len(sizes) == chunks and sum(sizes) == dim and min(sizes) > 0


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("mfb", {"order": 2}, "mfb: order is fixed to 1"),
        ("mfh", {"output_linear": False}, "mfh: without the output Linear out_dim must equal the fused width 2000, got 6"),
        ("mutan", {"projected_dims": (3,)}, r"mutan: projected_dims needs one width per modality \(2\), got \(3,\)"),
        ("lmf", {"rank": 0}, "lmf: rank must be a positive int, got 0"),
        ("tucker", {"hidden_dim": -1}, "tucker: hidden_dim must be a positive int, got -1"),
    ],
)
def test_bad_knobs(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mmfuse.create_fusion(name, in_dims=(3, 4), out_dim=6, **kwargs)


@torch.enable_grad()
def test_normalize_has_finite_gradients_at_exact_zeros():
    f = MFB((3, 4), 2, hidden_dim=3, factor=2)
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        for lin in f.inputs.linears:
            lin.bias.zero_()
    out = f.eval()(x, y)  # the joint vector is exactly 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters() if p.grad is not None)


def _grads_of(f, xs):
    """Output, input gradients and parameter gradients of one weighted-sum backward."""
    f.zero_grad()
    for x in xs:
        x.grad = None
    with torch.enable_grad():
        out = f(*xs)
        (out * torch.arange(out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
    return out, [x.grad for x in xs], {n: p.grad.clone() for n, p in f.named_parameters()}


def _assert_same(got, ref):
    """Two ``_grads_of`` results agree: output, input and parameter gradients."""
    torch.testing.assert_close(got[0], ref[0])
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b)
    assert got[2].keys() == ref[2].keys()
    for n in ref[2]:
        assert got[2][n].shape == ref[2][n].shape, n
        torch.testing.assert_close(got[2][n], ref[2][n], msg=n)


@pytest.mark.parametrize("activation, normalize", [("tanh", False), ("sigmoid", True), (None, True)])
@pytest.mark.parametrize("shape", [(4,), (2, 3)])
def test_tucker_padded_gemms_same_values_and_gradients(activation, normalize, shape, monkeypatch):
    """The CUDA path that pads t_x, t_o, t_y to aligned widths (run here on the CPU) gives the
    unpadded values and gradients, parameters included; sigmoid maps the padded features to 0.5,
    which the core's zero padding must cancel."""
    f = Tucker((6, 5), 4, hidden_dim=5, projected_dims=(3, 7), activation=activation, normalize=normalize).eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(*shape, d, generator=g, requires_grad=True) for d in (6, 5)]
    ref = _grads_of(f, xs)
    monkeypatch.setattr(Tucker, "force_padding", True)
    pads, calls = Tucker._pads, []

    def spy(self, *a):
        calls.append(pads(self, *a))
        return calls[-1]

    monkeypatch.setattr(Tucker, "_pads", spy)
    got = _grads_of(f, xs)
    assert calls and all(p == (5, 3, 1) for p in calls)  # the padded path ran: t_x 3, t_o 5, t_y 7 to 8
    _assert_same(got, ref)


@pytest.mark.parametrize("activation, normalize", [("tanh", False), ("sigmoid", True)])
@pytest.mark.parametrize("in_dims, projected", [((6, 5), (3, 7)), ((6, 5, 4), (9, 2, 8))])
def test_mutan_padded_gemms_same_values_and_gradients(activation, normalize, in_dims, projected, monkeypatch):
    """MUTAN's 16-bit CUDA path pads t_m and hidden_dim to aligned widths (here forced on the
    CPU, float32): same values and gradients, parameters included, for 2 and 3 modalities; the
    sigmoid's 0.5 on padded features must meet zero weights."""
    f = Mutan(in_dims, 4, hidden_dim=5, rank=3, projected_dims=projected, activation=activation,
              normalize=normalize, dropout_input=0.0, dropout_pre_lin=0.0).eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 3, d, generator=g, requires_grad=True) for d in in_dims]
    ref = _grads_of(f, xs)
    monkeypatch.setattr(Mutan, "force_padding", True)
    seen = []
    linear = torch.nn.functional.linear

    def spy(x, w, b=None):
        seen.append(tuple(w.shape))
        return linear(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    got = _grads_of(f, xs)
    monkeypatch.undo()
    # the padded path ran: each rank term [3 ranks * 8, t_m up to a multiple of 8], the head reads 8
    assert all((24, -(-t // 8) * 8) in seen for t in projected) and (4, 8) in seen, seen
    _assert_same(got, ref)


@pytest.mark.parametrize("in_dims, shapes", [
    ((6, 5), ((2, 3), (2, 3))),  # one shape: the tiled autograd node
    ((6, 5, 4), ((2, 3), (2, 3), (2, 3))),  # 3 modalities
    ((6, 5), ((2, 3), (1, 3))),  # broadcasting leading dims: plain autograd
])
def test_block_padded_chunks_same_values_and_gradients(in_dims, shapes, monkeypatch):
    """BLOCK's 16-bit CUDA path pads each chunk (sizes 4, 4, 3 here) to a multiple of 8, its rank
    terms per rank (forced on the CPU, float32): same values and gradients, parameters included,
    and the same inference output without autograd."""
    f = Block(in_dims, 4, hidden_dim=11, chunks=3, rank=2, dropout_projected=0.0).eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(*shape, d, generator=g, requires_grad=True) for shape, d in zip(shapes, in_dims)]
    ref = _grads_of(f, xs)
    with torch.no_grad():
        ref_eval = f(*xs)
    monkeypatch.setattr(Block, "force_padding", True)
    seen = []
    baddbmm = torch.baddbmm

    def spy(*a, **k):  # the chunk maps' weights [C, s_in, R * s]
        seen.append(tuple(a[2].shape))
        return baddbmm(*a, **k)

    monkeypatch.setattr(torch, "baddbmm", spy)
    got = _grads_of(f, xs)
    with torch.no_grad():
        got_eval = f(*xs)
    monkeypatch.undo()
    assert seen and all(w[1:] == (8, 16) for w in seen), seen  # padded: s_in 8, R * s = 2 * 8
    _assert_same(got, ref)
    torch.testing.assert_close(got_eval, ref_eval)


@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3), (1, 3))])
def test_block_tucker_padded_chunks_same_values_and_gradients(shapes, monkeypatch):
    """BLOCK-Tucker's 16-bit CUDA path pads each chunk and its core to a multiple of 8 (forced on
    the CPU, float32): same values and gradients, parameters included."""
    f = BlockTucker((6, 5), 4, hidden_dim=11, chunks=3, dropout_projected=0.0).eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(*shape, d, generator=g, requires_grad=True) for shape, d in zip(shapes, (6, 5))]
    ref = _grads_of(f, xs)
    monkeypatch.setattr(BlockTucker, "force_padding", True)
    from mmfuse.fusions import factorized

    seen, core = [], factorized.bilinear_core

    def spy(x, y, w):
        seen.append(tuple(w.shape))
        return core(x, y, w)

    monkeypatch.setattr(factorized, "bilinear_core", spy)
    got = _grads_of(f, xs)
    monkeypatch.undo()
    assert seen == [(2, 8, 8, 8), (1, 8, 8, 8)], seen  # chunks of 4, 4 and 3, each core padded to 8
    _assert_same(got, ref)


def test_tucker_pads_only_for_16_bit_compute():
    from mmfuse.fusions.factorized import _half_compute

    assert not _half_compute(torch.zeros(2, dtype=torch.float32))
    assert _half_compute(torch.zeros(2, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _half_compute(torch.zeros(2, dtype=torch.float32))


def test_bilinear_core_is_the_triple_sum_with_its_gradients():
    from mmfuse.fusions.factorized import _BilinearCore, bilinear_core

    g = torch.Generator().manual_seed(0)
    x, y, w = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 3, 4), (2, 3, 5), (2, 6, 4, 5)))
    ref = torch.einsum("cni,ckij,cnj->cnk", x, w, y)
    torch.testing.assert_close(bilinear_core(x, y, w), ref)  # no gradients: the plain path
    for need in [(True, True, True), (True, False, False), (False, True, False), (False, False, True)]:
        args = [a.clone().requires_grad_(r) for a, r in zip((x, y, w), need)]
        with torch.enable_grad():  # the module's float64 fixture runs under no_grad
            assert torch.autograd.gradcheck(_BilinearCore.apply, args)
            out = bilinear_core(*args)
        assert out.grad_fn is not None and "BilinearCore" in type(out.grad_fn).__name__
        torch.testing.assert_close(out, ref)
    empty = bilinear_core(x[:, :0].requires_grad_(), y[:, :0], w.requires_grad_())
    assert empty.shape == (2, 0, 6)


def test_bilinear_core_under_bf16_autocast_returns_gradients_in_the_inputs_dtypes():
    from mmfuse.fusions.factorized import bilinear_core

    g = torch.Generator().manual_seed(1)
    f32 = dict(generator=g, dtype=torch.float32)  # the module's fixture makes float64 the default
    x, y = torch.randn(1, 8, 16, **f32), torch.randn(1, 8, 12, **f32)
    w = torch.randn(1, 10, 16, 12, **f32, requires_grad=True)
    with torch.enable_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            xb, yb = (a.bfloat16().requires_grad_() for a in (x, y))
            z = bilinear_core(xb, yb, w)
        assert z.dtype == torch.bfloat16
        z.float().sum().backward()
    assert xb.grad.dtype == yb.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    ref_w = torch.einsum("cni,cnj->cij", x, y).unsqueeze(1).expand_as(w)  # dz = 1 everywhere
    torch.testing.assert_close(w.grad, ref_w, atol=0.1, rtol=0.05)
    torch.testing.assert_close(z.float(), torch.einsum("cni,ckij,cnj->cnk", x, w.detach(), y), atol=0.5, rtol=0.05)


def test_state_dicts_of_the_earlier_core_layout_load_converted():
    torch.manual_seed(0)
    x, y = inputs((3, 4))
    f = Tucker((3, 4), 2, hidden_dim=3, projected_dims=(2, 5)).eval()
    old = f.state_dict()
    old["core"] = old.pop("core_weight").permute(1, 0, 2)  # [t_x, H, t_y], as stored before
    g = Tucker((3, 4), 2, hidden_dim=3, projected_dims=(2, 5)).eval()
    g.load_state_dict(old)
    torch.testing.assert_close(g(x, y), f(x, y))

    f = BlockTucker((3, 4), 2, hidden_dim=7, chunks=2).eval()
    assert len(f.groups) == 2
    old = f.state_dict()
    for k in range(2):
        old[f"cores.{k}"] = old.pop(f"core_weights.{k}").permute(0, 2, 1, 3)  # [chunk, i, k, j]
    g = BlockTucker((3, 4), 2, hidden_dim=7, chunks=2).eval()
    g.load_state_dict(old)
    torch.testing.assert_close(g(x, y), f(x, y))


def test_bilinear_core_in_tiles_keeps_no_outer_products_and_gives_the_same_values(monkeypatch):
    from mmfuse.fusions import factorized
    from mmfuse.fusions.factorized import _BilinearCore, _core_tiles, bilinear_core

    g = torch.Generator().manual_seed(2)
    x, y, w = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 5, 4), (2, 5, 3), (2, 6, 4, 3)))
    ref = torch.einsum("cni,ckij,cnj->cnk", x, w, y)
    dz = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    with torch.enable_grad():
        whole_args = [a.clone().requires_grad_() for a in (x, y, w)]
        whole = bilinear_core(*whole_args)
        assert len(whole.grad_fn.saved_tensors) == 4  # one tile: the outer products are kept
        whole_grads = torch.autograd.grad(whole, whole_args, dz)
        monkeypatch.setattr(factorized, "_CORE_TILE", 24)  # 2 rows of 12 products a tile
        assert _core_tiles(x, 12) == [(c, slice(a, a + 2)) for c in range(2) for a in (0, 2, 4)]
        assert torch.autograd.gradcheck(_BilinearCore.apply, [a.clone().requires_grad_() for a in (x, y, w)])
        args = [a.clone().requires_grad_() for a in (x, y, w)]
        tiled = bilinear_core(*args)
        assert len(tiled.grad_fn.saved_tensors) == 3  # x, y, w only
        for a, b in zip(torch.autograd.grad(tiled, args, dz, retain_graph=True), whole_grads):
            torch.testing.assert_close(a, b)  # float64: to about 1e-7
        tiled.backward(torch.ones_like(tiled))
    torch.testing.assert_close(tiled, ref)
    torch.testing.assert_close(args[2].grad, torch.einsum("cni,cnj->cij", x, y).unsqueeze(1).expand_as(w))
    with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        xb, yb = (a.float().bfloat16().requires_grad_() for a in (x, y))
        wf = w.float().requires_grad_()
        zb = bilinear_core(xb, yb, wf)
        zb.float().sum().backward()
    assert zb.dtype == xb.grad.dtype == torch.bfloat16 and wf.grad.dtype == torch.float32
    torch.testing.assert_close(wf.grad.double(), args[2].grad, atol=0.1, rtol=0.05)


def test_bilinear_core_by_output_feature_where_no_products_are_kept(monkeypatch):
    from mmfuse.fusions import factorized
    from mmfuse.fusions.factorized import bilinear_core

    calls = []
    by_output = factorized._bilinear_core_by_output
    monkeypatch.setattr(factorized, "_bilinear_core_by_output", lambda *a: calls.append(a[0].shape[1]) or by_output(*a))
    g = torch.Generator().manual_seed(3)
    x, y, w = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 5, 4), (2, 5, 3), (2, 6, 4, 3)))
    ref = torch.einsum("cni,ckij,cnj->cnk", x, w, y)
    torch.testing.assert_close(bilinear_core(x, y, w), ref)
    assert calls == []  # 5 rows, under _BY_OUTPUT_ROWS: the outer products
    monkeypatch.setattr(factorized, "_BY_OUTPUT_ROWS", 5)
    torch.testing.assert_close(bilinear_core(x, y, w), ref)
    torch.testing.assert_close(bilinear_core(x[:, :0], y[:, :0], w), ref[:, :0])  # no rows: the outer path
    assert calls == [5]
    dz = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    with torch.enable_grad():
        args = [a.clone().requires_grad_() for a in (x, y, w)]
        kept = bilinear_core(*args)  # one tile with gradients: the products are kept for backward
        assert len(kept.grad_fn.saved_tensors) == 4 and calls == [5]
        grads = torch.autograd.grad(kept, args, dz)
        monkeypatch.setattr(factorized, "_CORE_TILE", 24)  # tiled: the backward forms the products again
        tiled = bilinear_core(*args)
        assert len(tiled.grad_fn.saved_tensors) == 3 and calls == [5, 5]
        torch.testing.assert_close(tiled, ref)
        for a, b in zip(torch.autograd.grad(tiled, args, dz), grads):
            torch.testing.assert_close(a, b)  # the backward by output feature, float64
        for need in [(True, False, False), (False, True, False), (False, False, True)]:
            part = [a.detach().requires_grad_(r) for a, r in zip((x, y, w), need)]
            (got,) = torch.autograd.grad(bilinear_core(*part), [a for a in part if a.requires_grad], dz)
            torch.testing.assert_close(got, grads[need.index(True)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            xb, yb = (a.float().bfloat16().requires_grad_() for a in (x, y))
            wf = w.float().requires_grad_()
            zb = bilinear_core(xb, yb, wf)
        zb.float().sum().backward()
    assert calls == [5, 5, 5, 5, 5, 5]
    assert zb.dtype == xb.grad.dtype == torch.bfloat16 and wf.grad.dtype == torch.float32
    torch.testing.assert_close(zb.double(), ref, atol=0.1, rtol=0.05)
    ones = torch.ones_like(ref)
    torch.testing.assert_close(xb.grad.double(), torch.einsum("cnk,ckij,cnj->cni", ones, w, y), atol=0.1, rtol=0.05)
    torch.testing.assert_close(yb.grad.double(), torch.einsum("cnk,ckij,cni->cnj", ones, w, x), atol=0.1, rtol=0.05)
    torch.testing.assert_close(wf.grad.double(), torch.einsum("cni,cnj->cij", x, y).unsqueeze(1).expand_as(w),
                               atol=0.1, rtol=0.05)


def test_tucker_and_block_tucker_agree_across_the_core_paths(monkeypatch):
    from mmfuse.fusions import factorized

    torch.manual_seed(4)
    x, y = (a.view(3, 4, -1) for a in inputs((6, 5), n=12, seed=4))  # [B, K, D] rows, as attention applies them
    for f in (Tucker((6, 5), 3, hidden_dim=4, projected_dims=(3, 5)).eval(), BlockTucker((6, 5), 3, hidden_dim=8, chunks=2).eval()):
        with torch.no_grad():
            ref = f(x, y)
            monkeypatch.setattr(factorized, "_BY_OUTPUT_ROWS", 1)
            torch.testing.assert_close(f(x, y), ref)
            monkeypatch.undo()


def test_by_output_order_is_for_cpu_rows_from_the_threshold_only():
    from mmfuse.fusions.factorized import _BY_OUTPUT_ROWS, _by_output

    w = torch.empty(1, 2, 3, 3)
    assert _by_output(torch.empty(1, _BY_OUTPUT_ROWS, 3), w)
    assert not _by_output(torch.empty(1, _BY_OUTPUT_ROWS - 1, 3), w)
    assert not _by_output(torch.empty(1, _BY_OUTPUT_ROWS, 3), torch.empty(1, 0, 3, 3))  # no output features
    meta = torch.empty(1, 10 * _BY_OUTPUT_ROWS, 3, device="meta")  # any other device keeps the outer products
    assert not _by_output(meta, w.to("meta"))

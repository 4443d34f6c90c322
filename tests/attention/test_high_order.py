"""high_order (Schwartz et al., NIPS 2017) against explicit loops over the positions of every
modality, written from the potentials' equations, in float64."""

from __future__ import annotations

import pytest
import torch

import mmfuse
from mmfuse.attention import HighOrderAttention

F64 = torch.float64
MAXES = (6, 5, 4)  # max regions, max words, max answers


def lin(layer, x):
    return layer.weight @ x + layer.bias


def valid(row) -> list[int]:
    return [i for i, ok in enumerate(row.tolist()) if ok]


def make(m=3, order=3, **kw):
    torch.manual_seed(0)
    others = dict(other_dims=(2,), other_sizes=(MAXES[2],)) if m == 3 else {}
    return HighOrderAttention(
        3, 4, 5, max_regions=MAXES[0], max_words=MAXES[1], hidden_dim=6, order=order, dtype=F64, **others, **kw
    ).eval()


def inputs(b=2, sizes=(5, 4, 3), seed=5):
    """v [b, 5, 3], q [b, 4, 4], answers [b, 3, 2], each shorter than its maximum, with masks."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, n, d, generator=g, dtype=F64) for n, d in zip(sizes, (3, 4, 2))]
    masks = [torch.ones(b, n, dtype=torch.bool) for n in sizes]
    masks[0][0, 2] = False  # a padded region in the middle
    masks[0][1, -1] = False
    masks[1][1, 0] = False
    masks[2][0, 1] = False
    return xs, masks


def reference(f: HighOrderAttention, xs, masks, n):
    """Attention maps [N_m] per modality and the attended vectors, for batch row ``n``."""
    m = len(xs)
    ok = [valid(mask[n]) for mask in masks]
    zero = torch.zeros((), dtype=F64)
    pots = [{i: [lin(u.score, torch.tanh(lin(u.proj, xs[a][n, i])))[0]] for i in ok[a]} for a, u in enumerate(f.unary)]
    # pairwise, in the order (v, q), (v, a), (q, a): each modality gets its partners in order
    for a in range(m if f.order >= 2 else 0):
        for b in range(a + 1, m):
            pw = f.pairwise[f.pair_index.index((a, b))]
            ea = {i: lin(pw.proj[0], xs[a][n, i]) for i in ok[a]}
            eb = {j: lin(pw.proj[1], xs[b][n, j]) for j in ok[b]}
            c = {(i, j): pw.scale[i, j] * (ea[i] @ eb[j]) for i in ok[a] for j in ok[b]}
            w_a, w_b = pw.marginal[0], pw.marginal[1]
            for i in ok[a]:
                pots[a][i].append(torch.tanh(sum((w_a.weight[0, j] * c[i, j] for j in ok[b]), zero) + w_a.bias[0]))
            for j in ok[b]:
                pots[b][j].append(torch.tanh(sum((w_b.weight[0, i] * c[i, j] for i in ok[a]), zero) + w_b.bias[0]))
    if m == 3 and f.order == 3:
        tr = f.ternary[0]
        e = [{i: lin(tr.proj[a], xs[a][n, i]) for i in ok[a]} for a in range(3)]
        t = {
            (i, j, k): tr.scale[i, j, k] * (e[0][i] * e[1][j] * e[2][k]).sum()
            for i in ok[0]
            for j in ok[1]
            for k in ok[2]
        }
        n0, n1, n2 = MAXES  # the marginalisation weights are laid out over the maximum sizes
        w0, w1, w2 = (lin_.weight[0] for lin_ in tr.marginal)
        for i in ok[0]:
            s = sum(w0[j * n2 + k] * t[i, j, k] for j in ok[1] for k in ok[2])
            pots[0][i].append(torch.tanh(s + tr.marginal[0].bias[0]))
        for j in ok[1]:
            s = sum(w1[i * n2 + k] * t[i, j, k] for i in ok[0] for k in ok[2])
            pots[1][j].append(torch.tanh(s + tr.marginal[1].bias[0]))
        for k in ok[2]:
            s = sum(w2[i * n1 + j] * t[i, j, k] for i in ok[0] for j in ok[1])
            pots[2][k].append(torch.tanh(s + tr.marginal[2].bias[0]))
    maps, hats = [], []
    for a in range(m):
        logits = {i: lin(f.merge[a], torch.stack(p))[0] for i, p in pots[a].items()}
        z = sum(torch.exp(s) for s in logits.values())
        alpha = torch.stack([torch.exp(logits[i]) / z if i in logits else zero for i in range(xs[a].shape[1])])
        maps.append(alpha)
        hats.append(alpha @ xs[a][n])
    return maps, hats


@pytest.mark.parametrize("m, order", [(2, 1), (2, 2), (2, 3), (3, 2), (3, 3)])
@torch.no_grad()
def test_high_order_reference(m, order):
    f = make(m=m, order=order)
    xs, masks = inputs()
    xs, masks = xs[:m], masks[:m]
    extra = dict(others=xs[2:], others_mask=masks[2:]) if m == 3 else {}
    out = f(xs[0], xs[1], v_mask=masks[0], q_mask=masks[1], **extra)
    for n in range(2):
        maps, hats = reference(f, xs, masks, n)
        torch.testing.assert_close(out.v_attn[n, 0], maps[0])
        torch.testing.assert_close(out.q_attn[n, 0], maps[1])
        if m == 3:
            torch.testing.assert_close(out.extras["other_attn_0"][n, 0], maps[2])
        torch.testing.assert_close(out.fused[n], f.fusion(*(h[None] for h in hats))[0])
    assert len(f.ternary) == int(m == 3 and order == 3)
    assert f.merge[0].in_features == {(2, 1): 1, (2, 2): 2, (2, 3): 2, (3, 2): 3, (3, 3): 4}[m, order]


@torch.no_grad()
def test_shorter_inputs_equal_zero_padding_to_the_maximum_sizes():
    f = make()
    xs, masks = inputs()
    out = f(xs[0], xs[1], masks[0], masks[1], others=xs[2:], others_mask=masks[2:])
    padded, pmasks = [], []
    for x, mask, size in zip(xs, masks, MAXES):
        extra = size - x.shape[1]
        padded.append(torch.cat([x, torch.randn(2, extra, x.shape[2], dtype=F64)], 1))
        pmasks.append(torch.cat([mask, torch.zeros(2, extra, dtype=torch.bool)], 1))
    full = f(padded[0], padded[1], pmasks[0], pmasks[1], others=padded[2:], others_mask=pmasks[2:])
    torch.testing.assert_close(full.fused, out.fused)
    torch.testing.assert_close(full.v_attn[..., :5], out.v_attn)
    torch.testing.assert_close(full.q_attn[..., :4], out.q_attn)
    torch.testing.assert_close(full.extras["other_attn_0"][..., :3], out.extras["other_attn_0"])
    assert (full.v_attn[..., 5:] == 0).all()


@torch.no_grad()
def test_order_one_is_unary_only_and_higher_orders_couple_the_modalities():
    xs, masks = inputs()
    q2 = xs[1] + torch.randn_like(xs[1])
    for order, coupled in ((1, False), (2, True), (3, True)):
        f = make(m=2, order=order)
        a = f(xs[0], xs[1], masks[0], masks[1]).v_attn
        b = f(xs[0], q2, masks[0], masks[1]).v_attn
        assert torch.allclose(a, b) != coupled, order


@torch.no_grad()
def test_ternary_potentials_couple_the_third_modality_into_pairs():
    """With order 2 the image attention depends on the answers only through the (v, a) pair;
    with order 3 also through the (v, q, a) triple: zeroing the pairwise term shows it."""
    xs, masks = inputs()
    a2 = xs[2] + torch.randn_like(xs[2])
    for order in (2, 3):
        f = make(order=order)
        with torch.no_grad():
            f.merge[0].weight[0, 2] = 0.0  # drop the (v, a) pairwise potential from v's merge
        run = lambda a: f(xs[0], xs[1], masks[0], masks[1], others=[a], others_mask=masks[2:]).v_attn
        assert torch.allclose(run(xs[2]), run(a2)) == (order == 2), order


def test_parameter_count_with_three_modalities():
    f = make()
    h, dims, ns = 6, (3, 4, 2), MAXES
    unary = sum((d + 1) * h + h + 1 for d in dims)
    pairs = [(0, 1), (0, 2), (1, 2)]
    pairwise = sum((dims[a] + 1) * h + (dims[b] + 1) * h + ns[a] * ns[b] + ns[b] + 1 + ns[a] + 1 for a, b in pairs)
    n0, n1, n2 = ns
    ternary = sum((d + 1) * h for d in dims) + n0 * n1 * n2 + (n1 * n2 + 1) + (n0 * n2 + 1) + (n0 * n1 + 1)
    merge = 3 * (4 + 1)
    fusion = sum(p.numel() for p in f.fusion.parameters())
    assert sum(p.numel() for p in f.parameters()) == unary + pairwise + ternary + merge + fusion
    assert f.expected_num_parameters() == unary + pairwise + ternary + merge + fusion


def test_three_modalities_backward_reaches_every_parameter_and_not_the_padding():
    f = make()
    xs, masks = inputs()
    for x in xs:
        x.requires_grad_(True)
    out = f(xs[0], xs[1], masks[0], masks[1], others=xs[2:], others_mask=masks[2:])
    out.fused.square().sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for x, mask in zip(xs, masks):
        assert (x.grad[~mask] == 0).all() and x.grad[mask].abs().sum() > 0


def test_three_modalities_under_compile():
    torch._dynamo.reset()
    f = make()
    xs, masks = inputs()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    kw = dict(others=xs[2:], others_mask=masks[2:])
    torch.testing.assert_close(compiled(xs[0], xs[1], masks[0], masks[1], **kw).fused, f(xs[0], xs[1], masks[0], masks[1], **kw).fused)


def test_high_order_errors():
    f = make()
    xs, masks = inputs()
    v, q, a = xs
    with pytest.raises(ValueError, match=r"high_order: expected at most 6 regions \(max_regions=6\), got shape \(2, 7, 3\)"):
        f(torch.randn(2, 7, 3, dtype=F64), q, others=[a])
    with pytest.raises(ValueError, match=r"high_order: expected at most 5 words \(max_words=5\), got shape \(2, 6, 4\)"):
        f(v, torch.randn(2, 6, 4, dtype=F64), others=[a])
    with pytest.raises(ValueError, match=r"high_order: expected 1 extra modalities in others \(other_dims=\(2,\)\), got 0"):
        f(v, q)
    with pytest.raises(ValueError, match=r"high_order: expected others\[0\] float of shape \[2, N, 2\], got \(2, 3, 5\)"):
        f(v, q, others=[torch.randn(2, 3, 5, dtype=F64)])
    with pytest.raises(ValueError, match=r"expected at most 4 positions in others\[0\] \(other_sizes\[0\]=4\)"):
        f(v, q, others=[torch.randn(2, 5, 2, dtype=F64)])
    with pytest.raises(ValueError, match=r"high_order: expected others_mask\[0\] bool of shape \(2, 3\), got torch.float64"):
        f(v, q, others=[a], others_mask=[masks[2].double()])
    with pytest.raises(ValueError, match="high_order: expected 1 entries in others_mask, got 2"):
        f(v, q, others=[a], others_mask=[None, None])
    two = make(m=2)
    with pytest.raises(ValueError, match=r"high_order: expected 0 extra modalities in others \(other_dims=\(\)\), got 1"):
        two(v, q, others=[a])
    with pytest.raises(ValueError, match=r"high_order: other_dims and other_sizes must have the same length, got \(2,\) and \(\)"):
        HighOrderAttention(3, 4, 5, other_dims=(2,))
    with pytest.raises(ValueError, match="high_order: order must be 1, 2 or 3, got 4"):
        HighOrderAttention(3, 4, 5, order=4)
    with pytest.raises(ValueError, match="high_order: max_regions must be a positive int, got 0"):
        HighOrderAttention(3, 4, 5, max_regions=0)


def test_registry_entry_and_defaults():
    info = mmfuse.fusion_info("high_order")
    assert not info.order_free and info.modalities == "2+"
    f = HighOrderAttention(3, 4, 5)
    assert (f.max_regions, f.max_words, f.order, f.hidden_dim) == (196, 26, 3, 512)
    assert type(f.fusion).__name__ == "Product" and f.fusion.in_dims == (3, 4)

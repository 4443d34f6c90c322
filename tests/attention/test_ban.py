"""ban (Kim et al., NeurIPS 2018) and its counting module (Zhang et al., ICLR 2018) against
explicit loops over regions, words, glimpses and boxes written from the papers' equations, in
float64 with the modules' own weights; then the method-specific claims."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mmfuse
from mmfuse.attention import BAN, Counter

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


def _boxes(b, k, seed=3, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, k, 2, generator=g, dtype=dtype) * 0.6
    wh = 0.05 + torch.rand(b, k, 2, generator=g, dtype=dtype) * 0.4
    return torch.cat([xy, xy + wh], dim=-1)


def relu_wn(proj, x):
    """ReLU(g · V x / ||V|| + b) on one vector (``.weight`` is the weight-normed matrix)."""
    y = proj.linear.weight @ x + proj.linear.bias
    return torch.relu(y) if proj.relu else y


# ---------------------------------------------------------------- counting module, explicitly


def piecewise_ref(pl, x: float) -> float:
    n = pl.pieces
    w = [abs(float(a)) for a in pl.weight.detach()]
    s = sum(w)
    w = [a / s for a in w]
    y = n * x
    i = min(int(y), n)
    return sum(w[: i + 1]) + (y - int(y)) * w[min(i + 1, n)]


def iou_ref(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter + 1e-12)


def counter_ref(counter: Counter, boxes, scores) -> list[float]:
    """Zhang et al.'s algorithm on one image (all boxes valid), one scalar at a time."""
    f = [lambda x, m=m: piecewise_ref(m, x) for m in counter.f]
    n = min(counter.objects, len(scores))
    keep = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:n]
    a = [1 / (1 + math.exp(-float(scores[i]))) for i in keep]
    bx = [[float(c) for c in boxes[i]] for i in keep]
    A = [[a[i] * a[j] for j in range(n)] for i in range(n)]
    D = [[1 - iou_ref(bx[i], bx[j]) for j in range(n)] for i in range(n)]
    S = [[f[0](A[i][j]) * f[1](D[i][j]) for j in range(n)] for i in range(n)]
    E = [[f[3](A[i][j]) * f[4](D[i][j]) for j in range(n)] for i in range(n)]
    sim = [[0.0] * n for _ in range(n)]
    for j in range(n):
        for l in range(n):  # noqa: E741
            p = f[2](1 - abs(a[j] - a[l]))
            for i in range(n):
                p *= f[2](1 - abs(E[i][j] - E[i][l]))
            sim[j][l] = p
    r = [sum(row) for row in sim]
    total = sum(S[i][j] / (r[i] * r[j]) for i in range(n) for j in range(n))
    total += sum(f[0](a[i] * a[i]) / r[i] for i in range(n))
    c = min(max(math.sqrt(total + 1e-20), 0.0), counter.objects)
    lo, frac = int(c), c - int(c)
    one_hot = [0.0] * (counter.objects + 1)
    one_hot[min(lo, counter.objects)] += 1 - frac
    one_hot[min(lo + 1, counter.objects)] += frac
    att_conf = sum(abs(f[5](x) - 0.5) for x in a) / n
    dist_conf = sum(abs(f[6](D[i][j]) - 0.5) for i in range(n) for j in range(n)) / (n * n)
    conf = f[7](att_conf + dist_conf)
    return [h * conf for h in one_hot]


def _random_counter(objects=4, seed=0):
    torch.manual_seed(seed)
    c = Counter(objects, pieces=5, dtype=F64)
    with torch.no_grad():
        for m in c.f:  # random monotone maps (weight[0] stays 0)
            m.weight[1:] = torch.rand(m.pieces, dtype=F64) + 0.1
    return c


@pytest.mark.parametrize("k", [6, 3])
@torch.no_grad()
def test_counter_reference(k):
    c = _random_counter(objects=4)
    boxes, scores = _boxes(3, k), torch.randn(3, k, dtype=F64) * 2
    boxes[0, 2] = boxes[0, 0]  # an exact duplicate
    out = c(boxes, scores)
    assert out.shape == (3, 5)
    for n in range(3):
        torch.testing.assert_close(out[n], torch.tensor(counter_ref(c, boxes[n], scores[n]), dtype=F64))


@torch.no_grad()
def test_counter_counts_distinct_objects_and_merges_duplicates():
    c = Counter(objects=10, dtype=F64)  # maps start as the identity
    boxes = torch.tensor(
        [[0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3], [0.5, 0.5, 0.7, 0.6], [0.0, 0.0, 0.1, 0.1], [0.8, 0.8, 0.9, 0.9]],
        dtype=F64,
    )
    logits = torch.tensor([30.0, 30.0, 30.0, 30.0, -30.0], dtype=F64)  # box 3 duplicates box 0; box 4 irrelevant
    out = c(boxes[None], logits[None])[0]
    assert int(out.argmax()) == 3
    assert out[3] / out.sum() > 0.999
    two = c(boxes[None, :2], logits[None, :2])[0]
    assert int(two.argmax()) == 2


@torch.no_grad()
def test_counter_ignores_padded_boxes_exactly():
    c = _random_counter(objects=5)
    boxes, scores = _boxes(2, 7), torch.randn(2, 7, dtype=F64)
    mask = torch.tensor([[True, False, True, True, False, True, False], [True] * 7])
    scores[0, 1] = 50.0  # a padded box with the highest score
    out = c(boxes, scores, mask)
    keep = mask[0]
    torch.testing.assert_close(out[0], c(boxes[:1, keep], scores[:1, keep])[0])  # 4 valid < 5 objects
    torch.testing.assert_close(out[1], c(boxes[1:], scores[1:])[0])
    empty = c(boxes, scores, torch.zeros(2, 7, dtype=torch.bool))
    assert torch.isfinite(empty).all() and (empty[:, 1:] == 0).all()


def test_piecewise_linear_reference_and_gradient():
    c = _random_counter()
    x = torch.tensor([0.0, 0.03, 0.2, 0.5, 0.77, 0.999, 1.0], dtype=F64)
    for m in c.f:
        torch.testing.assert_close(m(x), torch.tensor([piecewise_ref(m, float(a)) for a in x], dtype=F64))
    assert torch.autograd.gradcheck(lambda t: c.f[0](t), (torch.tensor([0.13, 0.52, 0.91], dtype=F64, requires_grad=True),))


# ---------------------------------------------------------------- BAN, explicitly


def ban_reference(f: BAN, v, q, vm, qm, boxes=None):
    """Per row: the maps pair by pair, the joint features entry by entry, the residual loop."""
    b, k, t = v.shape[0], v.shape[1], q.shape[1]
    p, bias = f.map_weights.weight, f.map_weights.bias  # [G, R], [G]
    fused, all_maps = [], []
    for n in range(b):
        xm = [relu_wn(f.map_v, v[n, i]) for i in range(k)]
        ym = [relu_wn(f.map_q, q[n, j]) for j in range(t)]
        valid = [(i, j) for i in range(k) for j in range(t) if vm[n, i] and qm[n, j]]
        maps, logits = [], []
        for g in range(f.glimpses):
            lg = {(i, j): float((p[g] * xm[i] * ym[j]).sum() + bias[g]) for i in range(k) for j in range(t)}
            z = sum(math.exp(lg[ij]) for ij in valid)
            maps.append([[math.exp(lg[(i, j)]) / z if (i, j) in valid else 0.0 for j in range(t)] for i in range(k)])
            logits.append(lg)
        y = [q[n, j].clone() for j in range(t)]
        for g in range(f.glimpses):
            xj = [relu_wn(f.joint_v[g], v[n, i]) for i in range(k)]
            yj = [relu_wn(f.joint_q[g], y[j]) for j in range(t)]
            width = xj[0].shape[0]
            joint = torch.stack(
                [sum(maps[g][i][j] * xj[i][c] * yj[j][c] for i in range(k) for j in range(t)) for c in range(width)]
            )
            fac = f.joint_factor
            if fac > 1:  # sum-pooling over windows of joint_factor
                joint = torch.stack([joint[h * fac : (h + 1) * fac].sum() for h in range(width // fac)])
            step = relu_wn(f.residual[g], joint)
            y = [yy + step for yy in y]
            if boxes is not None:
                att = torch.tensor(
                    [max(logits[g][(i, j)] for j in range(t) if qm[n, j]) if vm[n, i] else -1e300 for i in range(k)],
                    dtype=F64,
                )
                cnt = f.counter(boxes[n : n + 1], att[None], vm[n : n + 1])[0]  # Counter: tested on its own above
                add = relu_wn(f.count_proj[g], cnt)
                y = [yy + add for yy in y]
        pooled = sum(y[j] for j in range(t) if qm[n, j])
        fused.append(lin(f.out, pooled) if f.output_linear else pooled)
        all_maps.append(maps)
    return torch.stack(fused), torch.tensor(all_maps, dtype=F64)


def lin(layer, x):
    return layer.weight @ x + layer.bias


@pytest.mark.parametrize(
    "kw",
    [
        dict(glimpses=3, hidden_dim=2, map_factor=3),
        dict(glimpses=2, hidden_dim=3, map_factor=2, joint_factor=2),
        dict(glimpses=2, hidden_dim=2, output_linear=False),
    ],
    ids=["G3", "joint-pooled", "no-output-linear"],
)
@torch.no_grad()
def test_ban_reference(kw):
    torch.manual_seed(0)
    out_dim = 4 if kw.get("output_linear", True) is False else 5
    f = BAN(3, 4, out_dim, dtype=F64, **kw).eval()
    v, q, vm, qm = _inputs()
    out = f(v, q, v_mask=vm, q_mask=qm)
    fused, maps = ban_reference(f, v, q, vm, qm)
    torch.testing.assert_close(out.extras["bilinear_maps"], maps, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.v_attn, maps.sum(-1))
    torch.testing.assert_close(out.q_attn, maps.sum(-2))
    torch.testing.assert_close(out.fused, fused)


@torch.no_grad()
def test_ban_with_counter_reference():
    torch.manual_seed(0)
    f = BAN(3, 4, 5, glimpses=2, hidden_dim=2, counter=True, count_objects=3, dtype=F64).eval()
    with torch.no_grad():
        for m in f.counter.f:
            m.weight[1:] = torch.rand(m.pieces, dtype=F64) + 0.1
    v, q, vm, qm = _inputs()
    boxes = _boxes(2, 5)
    out = f(v, q, v_mask=vm, q_mask=qm, v_boxes=boxes)
    fused, maps = ban_reference(f, v, q, vm, qm, boxes)
    torch.testing.assert_close(out.fused, fused)
    assert out.extras["counts"].shape == (2, 2, 4)
    # the counter changes the output
    f2 = BAN(3, 4, 5, glimpses=2, hidden_dim=2, dtype=F64).eval()
    f2.load_state_dict(f.state_dict(), strict=False)
    assert not torch.allclose(f2(v, q, v_mask=vm, q_mask=qm).fused, out.fused)


def test_ban_paper_defaults():
    f = BAN(5, 7, 3)
    assert (f.glimpses, f.hidden_dim, f.map_factor, f.joint_factor) == (8, 1280, 3, 1)
    assert f.map_weights.weight.shape == (8, 3 * 1280) and f.map_weights.bias.shape == (8,)
    assert f.map_v.linear.weight.shape == (3840, 5) and f.joint_v[0].linear.weight.shape == (1280, 5)
    assert f.map_v.drop.p == 0.2 and f.drop_map.p == 0.5 and f.residual[0].drop.p == 0.2
    assert f.counter is None and len(f.residual) == 8
    # one gain for the whole map weight tensor (weight_norm(dim=None) on h_mat)
    assert f.map_weights.parametrizations.weight.original0.numel() == 1


def test_ban_memory_never_forms_region_rank_or_pair_hidden_tensors():
    """The largest tensor of a forward stays below B·G·K·R (and far below B·G·K·T·H)."""

    class Biggest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor):
                    self.numel = max(self.numel, o.numel())
            return out

    b, k, t, g, h = 2, 40, 3, 4, 16
    torch.manual_seed(0)
    f = BAN(8, 8, 8, glimpses=g, hidden_dim=h).eval()
    v, q = torch.randn(b, k, 8), torch.randn(b, t, 8)
    with torch.no_grad(), Biggest() as rec:
        f(v, q)
    rank = 3 * h
    assert rec.numel < b * g * k * rank  # 15360; the [B, K, R] side (3840) and [B, G, T, R] (1152) are fine
    assert rec.numel <= max(b * k * rank, f.map_v.linear.weight.numel(), b * g * k * t)


def test_ban_boxes_errors():
    f = BAN(5, 7, 3, hidden_dim=4, glimpses=2)
    v, q = torch.randn(2, 4, 5), torch.randn(2, 3, 7)
    with pytest.raises(ValueError, match="ban: v_boxes given but the counter is off"):
        f(v, q, v_boxes=torch.rand(2, 4, 4))
    c = BAN(5, 7, 3, hidden_dim=4, glimpses=2, counter=True)
    with pytest.raises(ValueError, match=r"ban: counter=True needs float v_boxes of shape \(2, 4, 4\)"):
        c(v, q)
    with pytest.raises(ValueError, match=r"got \(2, 4, 2\)"):
        c(v, q, v_boxes=torch.rand(2, 4, 2))
    with pytest.raises(ValueError, match="ban: without the output Linear out_dim must equal q_dim 7, got 3"):
        BAN(5, 7, 3, output_linear=False)
    assert sum(p.numel() for p in c.parameters()) == c.expected_num_parameters()


def test_ban_counter_under_compile_and_export():
    torch.manual_seed(0)
    f = BAN(5, 7, 3, hidden_dim=4, glimpses=2, counter=True, count_objects=3).eval()
    v, q = torch.randn(2, 6, 5), torch.randn(2, 3, 7)
    vm = torch.ones(2, 6, dtype=torch.bool)
    vm[0, :4] = False
    boxes = _boxes(2, 6, dtype=torch.float32)
    ref = f(v, q, v_mask=vm, v_boxes=boxes).fused
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(v, q, v_mask=vm, v_boxes=boxes).fused, ref)
    exported = torch.export.export(f, (v, q), {"v_mask": vm, "v_boxes": boxes})
    torch.testing.assert_close(exported.module()(v, q, v_mask=vm, v_boxes=boxes).fused, ref)


def test_ban_counter_gradients_and_padding():
    torch.manual_seed(0)
    f = BAN(5, 7, 3, hidden_dim=4, glimpses=2, counter=True, count_objects=3, dtype=F64).eval()
    v, q = torch.randn(2, 6, 5, dtype=F64, requires_grad=True), torch.randn(2, 3, 7, dtype=F64, requires_grad=True)
    vm = torch.ones(2, 6, dtype=torch.bool)
    vm[0, 1] = False
    boxes = _boxes(2, 6).requires_grad_(True)
    out = f(v, q, v_mask=vm, v_boxes=boxes)
    out.fused.sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert (v.grad[~vm] == 0).all() and (boxes.grad[~vm] == 0).all()
    # padded regions' features and boxes change nothing
    v2, b2 = v.detach().clone(), boxes.detach().clone()
    v2[~vm], b2[~vm] = 1e3, 7.0
    torch.testing.assert_close(f(v2, q.detach(), v_mask=vm, v_boxes=b2).fused, out.fused.detach())
    assert torch.autograd.gradcheck(
        lambda a, c: f(a, c, v_mask=vm, v_boxes=boxes.detach()).fused, (v, q), eps=1e-6, atol=1e-5
    )


def test_ban_registered():
    info = mmfuse.fusion_info("ban")
    assert info.kind == "attention" and info.order_free and info.compile and info.export

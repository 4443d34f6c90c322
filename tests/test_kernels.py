"""The fused Triton kernels (mmfuse/kernels.py) against the torch ops they replace.

They run on CUDA; on a CPU they run in Triton's interpreter when Triton is installed (set
``TRITON_INTERPRET=1`` before starting pytest); without either the tests skip. The dispatch test
runs everywhere.
"""

from __future__ import annotations

import pytest
import torch

import mmfuse
import mmfuse.functional as Fn
import mmfuse.fusions.factorized as fac
from mmfuse import kernels

try:  # the kernels' module, and a kernel of the tests' own that calls its dropout draw
    import triton
    import triton.language as tl

    from mmfuse import _triton_kernels as tk
except ImportError:
    tk = None
else:

    @triton.jit
    def _write_keep(OUT, W, seed, p_drop, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        for start in range(0, W, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            keep = tk.dropout_keep(seed, row * W + cols, p_drop)
            tl.store(OUT + row * W + cols, keep.to(tl.float32), mask=cols < W)


CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
needs_kernels = pytest.mark.skipif(
    not (kernels.triton_available() and (CUDA or kernels.interpreting())),
    reason="needs Triton and CUDA, or Triton's interpreter (TRITON_INTERPRET=1)",
)


def torch_power_normalize(x, eps=1e-12):
    return Fn.l2_normalize(Fn.signed_sqrt(x, eps), eps)


def _compare(x: torch.Tensor, rtol: float, atol: float):
    a = x.detach().clone().requires_grad_(True)
    b = x.detach().clone().requires_grad_(True)
    ya = kernels.PowerNormalize.apply(a, 1e-12, 1e-12)
    yb = torch_power_normalize(b)
    assert ya.dtype == x.dtype and ya.shape == x.shape
    torch.testing.assert_close(ya, yb, rtol=rtol, atol=atol)
    g = torch.randn_like(yb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert a.grad.dtype == x.dtype
    # the gradient is about 1/sqrt(|x|): compare relative to each row's scale
    scale = b.grad.float().abs().amax(-1, keepdim=True).clamp_min(1e-6)
    diff = (a.grad.float() - b.grad.float()).abs() / scale
    assert diff.max().item() < (1e-4 if x.dtype == torch.float32 else 3e-2), diff.max().item()


@needs_kernels
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 300), (4, 5000), (2, 17, 89)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_power_normalize_matches_torch(shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(*shape, device=DEVICE).to(dtype)
    x.view(-1)[0] = 0.0  # an exact zero: the linearised root
    x.view(-1)[1] = 1e-14
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=4e-3)
    _compare(x, **tol)


@needs_kernels
def test_power_normalize_zero_rows_and_empty():
    x = torch.zeros(3, 6, device=DEVICE)
    x[1] = torch.randn(6)
    _compare(x, rtol=1e-5, atol=1e-6)  # an all-zero row: the norm's floor, gradient g / eps
    e = torch.zeros(2, 0, 3, device=DEVICE, requires_grad=True)
    y = kernels.PowerNormalize.apply(e, 1e-12, 1e-12)
    assert y.shape == e.shape
    y.sum().backward()
    assert e.grad.shape == e.shape


@needs_kernels
def test_power_normalize_non_contiguous_input():
    x = torch.randn(40, 6, device=DEVICE).t()  # [6, 40], stride (1, 6)
    _compare(x, rtol=1e-5, atol=1e-6)


@needs_kernels
def test_power_normalize_strided_rows_in_and_out():
    """Rows that are column slices of a wider tensor (read in place, through a row stride), and a
    gradient that arrives as such a slice (the backward of a ``cat``)."""
    torch.manual_seed(1)
    base = torch.randn(4, 5, 20, device=DEVICE)
    ba = base.clone().requires_grad_(True)
    bb = base.clone().requires_grad_(True)
    a, b = ba[..., 2:11], bb[..., 2:11]  # rows 9 wide, 20 apart
    assert not a.is_contiguous() and kernels._rows(a).data_ptr() == a.data_ptr()  # read in place
    ya = kernels.PowerNormalize.apply(a, 1e-12, 1e-12)
    yb = torch_power_normalize(b)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    w = torch.randn(4, 5, 16, device=DEVICE)
    (torch.cat([ya, a[..., :7]], -1) * w).sum().backward()
    (torch.cat([yb, b[..., :7]], -1) * w).sum().backward()
    torch.testing.assert_close(ba.grad, bb.grad, rtol=1e-4, atol=1e-4)


def torch_mfh_tail(joint, order, factor, normalize, eps=1e-12):
    """MFB / MFH's tail as the torch ops of MFH.fuse: cascade, sum pooling, power norm per block."""
    blocks = joint.unflatten(-1, (order, -1))
    e, zs = None, []
    for i in range(order):
        e = blocks[..., i, :] if e is None else blocks[..., i, :] * e
        z = Fn.sum_pool(e, factor)
        zs.append(torch_power_normalize(z, eps) if normalize else z)
    return torch.cat(zs, -1)


def _compare_tail(joint, order, factor, normalize, rtol, atol, grad_tol):
    a = joint.detach().clone().requires_grad_(True)
    b = joint.detach().clone().requires_grad_(True)
    ya = kernels.MFHTail.apply(a, order, factor, normalize, 1e-12)
    yb = torch_mfh_tail(b.float(), order, factor, normalize).to(joint.dtype)
    assert ya.dtype == joint.dtype and ya.shape == yb.shape
    torch.testing.assert_close(ya, yb, rtol=rtol, atol=atol)
    g = torch.randn_like(yb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert a.grad.dtype == joint.dtype and a.grad.shape == joint.shape
    scale = b.grad.float().abs().amax(-1, keepdim=True).clamp_min(1e-6)
    diff = (a.grad.float() - b.grad.float()).abs() / scale
    assert diff.max().item() < grad_tol, diff.max().item()


@needs_kernels
@pytest.mark.parametrize(
    "order, factor, hidden, normalize",
    [(2, 5, 7, True), (1, 5, 33, True), (3, 3, 20, False), (2, 5, 340, True), (2, 2, 300, False), (4, 1, 9, True)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mfh_tail_matches_torch(order, factor, hidden, normalize, dtype):
    torch.manual_seed(0)
    joint = torch.randn(2, 3, order * factor * hidden, device=DEVICE).to(dtype)
    joint[0, 0, :factor] = 0.0  # a pooled zero: the linearised root
    if dtype == torch.float32:
        _compare_tail(joint, order, factor, normalize, rtol=1e-5, atol=1e-6, grad_tol=1e-4)
    else:
        # the kernel keeps the cascade in float32; the torch ops are run in float32 too, then cast
        _compare_tail(joint, order, factor, normalize, rtol=2e-2, atol=4e-3, grad_tol=3e-2)


@needs_kernels
def test_mfh_tail_zero_rows_strided_rows_and_empty():
    torch.manual_seed(2)
    joint = torch.randn(3, 2 * 3 * 6, device=DEVICE)
    joint[1] = 0.0  # every block's norm at its floor
    _compare_tail(joint, 2, 3, True, rtol=1e-5, atol=1e-6, grad_tol=1e-4)
    wide = torch.randn(4, 50, device=DEVICE)
    rows = wide[:, 5:41]  # 36 = 2 * 3 * 6 columns, rows 50 apart: read in place
    assert kernels._rows(rows).data_ptr() == rows.data_ptr()
    _compare_tail(rows, 2, 3, True, rtol=1e-5, atol=1e-6, grad_tol=1e-4)
    e = torch.zeros(0, 12, device=DEVICE, requires_grad=True)
    y = kernels.MFHTail.apply(e, 2, 3, True, 1e-12)
    assert y.shape == (0, 4)
    y.sum().backward()
    assert e.grad.shape == e.shape


def kernel_keep_masks(n: int, width: int, seed: int, p: float) -> torch.Tensor:
    """The keep masks MFHTail draws for ``n`` rows of ``width`` (through the kernels' own
    ``dropout_keep``, at each element's flat index)."""
    out = torch.empty(n, width, device=DEVICE)
    _write_keep[(n,)](out, width, seed, p, BLOCK=64)
    return out


@needs_kernels
@pytest.mark.parametrize("normalize", [True, False])
def test_mfh_tail_dropout_matches_torch_with_the_same_masks(normalize):
    """With dropout on the expanded vectors, the kernels equal the torch ops given the masks they
    drew, forward and backward (the backward draws them again); about p of them are dropped."""
    torch.manual_seed(3)
    order, factor, hidden, p, seed = 3, 5, 40, 0.3, 1234
    joint = torch.randn(6, order * factor * hidden, device=DEVICE)
    keep = kernel_keep_masks(6, joint.shape[1], seed, p)
    assert abs(1 - keep.mean().item() - p) < 0.03
    a = joint.clone().requires_grad_(True)
    b = joint.clone().requires_grad_(True)
    ya = kernels.MFHTail.apply(a, order, factor, normalize, 1e-12, p, seed)
    blocks, masks = b.unflatten(-1, (order, -1)), keep.unflatten(-1, (order, -1)) / (1 - p)
    e, zs = None, []
    for i in range(order):
        e = blocks[:, i] * masks[:, i] if e is None else blocks[:, i] * e * masks[:, i]
        z = Fn.sum_pool(e, factor)
        zs.append(torch_power_normalize(z) if normalize else z)
    yb = torch.cat(zs, -1)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(yb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    scale = b.grad.abs().amax(-1, keepdim=True).clamp_min(1e-6)
    assert ((a.grad - b.grad).abs() / scale).max().item() < 1e-4
    assert (a.grad[keep == 0] == 0).all()  # a dropped element passes no gradient


@needs_kernels
def test_mfh_dropout_in_the_kernel_follows_the_torch_seed_and_the_mode(monkeypatch):
    """A training MFH with dropout runs the fused tail with a seed from torch's generator: the
    same torch seed, the same output; another seed, another one; eval mode drops nothing (the
    torch ops' output)."""
    calls = []
    real = kernels.MFHTail.apply
    monkeypatch.setattr(kernels.MFHTail, "apply", lambda *a: calls.append((a[-2], int(a[-1]))) or real(*a))
    torch.manual_seed(0)
    m = mmfuse.create_fusion("mfh", in_dims=(6, 5), out_dim=3, hidden_dim=8, factor=2, dropout_expanded=0.5).to(DEVICE)
    xs = [torch.randn(4, d, device=DEVICE) for d in (6, 5)]
    torch.manual_seed(7)
    y1 = m.train()(*xs)
    torch.manual_seed(7)
    y2 = m(*xs)
    y3 = m(*xs)
    assert calls[0][0] == 0.5 and calls[0] == calls[1] != calls[2]
    torch.testing.assert_close(y1, y2)
    assert not torch.allclose(y1, y3)
    y_eval = m.eval()(*xs)
    assert calls[-1] == (0.0, 0)
    monkeypatch.setattr(fac, "use_kernels", lambda x: False)
    torch.testing.assert_close(y_eval, m(*xs), rtol=1e-5, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("name", ["mcb", "mfh", "mfb", "block"])
def test_fusions_same_with_and_without_kernels(name, monkeypatch):
    kw = dict(mmfuse.fusion_info(name).tiny)
    torch.manual_seed(0)
    m = mmfuse.create_fusion(name, in_dims=(12, 10), out_dim=6, **kw).to(DEVICE).eval()
    xs = [torch.randn(5, d, device=DEVICE, requires_grad=True) for d in (12, 10)]
    out = m(*xs)
    out.square().sum().backward()
    grads = [x.grad.clone() for x in xs]
    monkeypatch.setattr(Fn, "use_kernels", lambda x: False)
    monkeypatch.setattr(fac, "use_kernels", lambda x: False)
    for x in xs:
        x.grad = None
    ref = m(*xs)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for g, x in zip(grads, xs):
        torch.testing.assert_close(g, x.grad, rtol=1e-3, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("name", ["mcb", "mfh", "block"])
def test_fusions_with_kernels_compile_fullgraph_and_export(name):
    """The kernels are custom ops (torch.ops.mmfuse.*): torch.compile and torch.export keep them
    as single opaque calls instead of tracing into the Triton launch (which fails: a Triton kernel
    cannot run on fake tensors)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = mmfuse.create_fusion(name, in_dims=(12, 10), out_dim=6, **dict(mmfuse.fusion_info(name).tiny)).to(DEVICE).eval()
    xs = [torch.randn(5, d, device=DEVICE) for d in (12, 10)]
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*xs), m(*xs))
    exported = torch.export.export(m, tuple(xs))
    op = "mfh_tail" if name == "mfh" else "power_normalize"
    assert f"mmfuse.{op}" in str(exported.graph)
    torch.testing.assert_close(exported.module()(*xs), m(*xs))


@needs_kernels
def test_mfh_with_dropout_compiles_fullgraph_in_training():
    """Training with dropout under torch.compile: the seed is drawn in the graph, from the same
    generator, so the compiled step repeats the eager one under the same torch seed."""
    torch._dynamo.reset()
    m = mmfuse.create_fusion("mfh", in_dims=(6, 5), out_dim=3, hidden_dim=8, factor=2, dropout_expanded=0.5).to(DEVICE)
    xs = [torch.randn(4, d, device=DEVICE, requires_grad=True) for d in (6, 5)]
    compiled = torch.compile(m.train(), fullgraph=True, backend="eager")
    outs = []
    for f in (m, compiled):
        torch.manual_seed(11)
        y = f(*xs)
        (g,) = torch.autograd.grad(y.square().sum(), xs[0])
        outs.append((y.detach(), g))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    torch.testing.assert_close(outs[1][1], outs[0][1])


def test_capture_check_is_skipped_while_compiling(monkeypatch):
    """MFH asks whether a CUDA stream is being captured before it draws a dropout seed; under
    torch.compile that query is not traceable (a fullgraph compile of a training MFH failed on it on
    an H200), so it must not be asked while compiling. Runs without a GPU: a stand-in CUDA tensor."""
    from mmfuse.fusions import factorized

    class CudaLike:
        is_cuda = True

    def capturing():
        raise AssertionError("is_current_stream_capturing called")

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", capturing)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert factorized._capturing(CudaLike()) is False
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert factorized._capturing(CudaLike()) is True
    assert factorized._capturing(torch.zeros(1)) is False  # a CPU tensor: never asked


def test_dispatch(monkeypatch):
    """float64 and CPU tensors (outside the interpreter) take the torch ops; MMFUSE_TRITON=0 turns
    the kernels off."""
    assert not kernels.use_kernels(torch.zeros(2, device=DEVICE, dtype=torch.float64))
    if not kernels.interpreting():
        assert not kernels.use_kernels(torch.zeros(2))
    monkeypatch.setenv("MMFUSE_TRITON", "0")
    kernels.triton_available.cache_clear()
    try:
        assert not kernels.use_kernels(torch.zeros(2, device=DEVICE))
    finally:
        monkeypatch.delenv("MMFUSE_TRITON")
        kernels.triton_available.cache_clear()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize(
    "name, kw",
    [
        ("mcb", {"hidden_dim": 16}),
        ("tucker", {"hidden_dim": 5, "projected_dims": (3, 7), "normalize": True}),  # the padded GEMMs
        ("mutan", {"hidden_dim": 5, "rank": 3, "projected_dims": (3, 7), "normalize": True}),  # the same
        ("block", {"hidden_dim": 10, "chunks": 3, "rank": 2}),  # GPU tiles and padded chunks
        ("block_tucker", {"hidden_dim": 10, "chunks": 3}),
        ("mfh", {"hidden_dim": 4, "factor": 3}),
    ],
)
def test_cuda_paths_match_the_cpu(name, kw, monkeypatch):
    """The CUDA-only paths (Triton power-normalize, the padded GEMMs of Tucker, MUTAN, BLOCK and
    BLOCK-Tucker, BLOCK's GPU tiles) give the CPU's values and gradients, in float32 with TF32 off
    (the padding is for 16-bit GEMMs only, so it is forced here)."""
    from mmfuse.fusions import Block, BlockTucker, Mutan, Tucker

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for cls in (Tucker, Mutan, Block, BlockTucker):
        monkeypatch.setattr(cls, "gemm_alignment", 8)
        monkeypatch.setattr(cls, "force_padding", cls.fusion_name == name)
    torch.manual_seed(0)
    cpu = mmfuse.create_fusion(name, in_dims=(12, 10), out_dim=6, **kw).eval()
    gpu = mmfuse.create_fusion(name, in_dims=(12, 10), out_dim=6, **kw).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    outs = []
    for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
        g = torch.Generator().manual_seed(1)
        xs = [torch.randn(2, 5, d, generator=g).to(dev).requires_grad_(True) for d in (12, 10)]
        out = m(*xs)
        (out * torch.linspace(-1, 1, out.numel(), device=dev).view(out.shape)).sum().backward()
        outs.append((out.detach().cpu(), [x.grad.cpu() for x in xs], {n: p.grad.cpu() for n, p in m.named_parameters()}))
    (o1, g1, p1), (o2, g2, p2) = outs
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-5)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    for n in p1:
        torch.testing.assert_close(p2[n], p1[n], rtol=1e-3, atol=1e-4, msg=n)

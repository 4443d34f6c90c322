"""Each GPU speed-up of the bilinear fusions against the code it replaced, in one run.

Issue 3's GPU target compares a fusion's forward + backward at batch 2048, bf16 autocast, with
one square GEMM of the same weight count (``benchmarks/fusions.py --square-baseline``). Session
12 found four causes of the misses and changed the code; this script times each change both
ways, eager and as a CUDA-graph replay (the GPU's own time), at ``benchmarks/fusions.py``'s
VQA2 configurations:

- ``mcb``: the sketch's closed-form backward (``_CompactBilinear``) against autograd through
  rfft / irfft; with ``normalize`` also the fused power-normalize kernel off / on;
- ``tucker``: GEMM widths padded to multiples of 8 (``Tucker.gemm_alignment``) against none (1);
- ``mutan``: the same padding (``Mutan.gemm_alignment``, session 17: its widths of 700 are not
  16-byte aligned in bf16) against none;
- ``block``: one row tile on the GPU (``_TILE_ELEMENTS_CUDA`` 2^27) against the CPU's 2^23; and
  chunks padded to multiples of 8 (``Block.gemm_alignment``, session 17: chunks of 89) against
  none;
- ``mfh``, ``mfb``: torch ops, the Triton power-normalize alone (session 12), and the fused
  tail (``kernels.MFHTail``: cascade, pooling and norms in one kernel each way; session 13);
- ``block_tucker``: the Triton power-normalize (mmfuse/kernels.py) off / on; chunks padded to
  multiples of 8 (``BlockTucker.gemm_alignment``, session 17: chunks of 180) against none.

Each group starts with its square GEMM. Rows go to stdout as JSON lines and to ``--json``.

    python benchmarks/gpu_ablations.py --json gpu_ablations.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import mmfuse
import mmfuse.functional as Fn
import mmfuse.fusions.bilinear as bil
import mmfuse.fusions.factorized as fac
from mmfuse.bench import micro
from mmfuse.data._io import atomic_write_bytes
from mmfuse.kernels import use_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusions import CONFIGS  # noqa: E402
from profile_fusions import square_of, step_fn  # noqa: E402


def _autograd_sketch(self, *xs):
    """MCB's sketch before session 12: autograd through the FFTs."""
    return bil._compact_bilinear(self.hidden_dim, xs, [t for pair in self.hashes() for t in pair])[0]


def _kernels(on: bool, tail: bool | None = None):
    """The fused power-normalize kernel on (where it applies) or off (torch ops everywhere);
    ``tail``: MFB / MFH's fused tail (default: as ``on``)."""
    Fn.use_kernels = use_kernels if on else (lambda x: False)
    fac.use_kernels = use_kernels if (on if tail is None else tail) else (lambda x: False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    print(f"# {micro.machine()}; batch {args.batch}, bf16 autocast, f+b ms (median of {args.repeat})", flush=True)
    rows = []

    def fusion(name, **over):
        cfg = CONFIGS[name]
        torch.manual_seed(0)
        m = mmfuse.create_fusion(name, in_dims=cfg.in_dims, out_dim=cfg.out_dim, **{**cfg.kwargs, **over})
        xs = [torch.randn(args.batch, d, device=dev, requires_grad=True) for d in cfg.in_dims]
        return m.to(dev).train(), xs

    def run(name, variant, m, xs):
        step = step_fn(m, xs, True, dev)
        row = {"fusion": name, "variant": variant, "eager ms": micro.time_ms(step, dev, args.repeat, warmup=3),
               "graph ms": micro.cuda_graph_ms(step, dev, args.repeat)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            atomic_write_bytes(Path(args.json), json.dumps(rows, indent=1).encode())

    def square(name, m):
        lin, sx = square_of(sum(q.numel() for q in m.parameters()), args.batch, dev, torch.float32)
        run(name, "square GEMM", lin, sx)

    closed_form = bil.MCB.sketch
    try:
        for norm in (False, True):
            m, xs = fusion("mcb", normalize=norm)
            if not norm:
                square("mcb", m)
            for label, sketch in (("autograd sketch", _autograd_sketch), ("closed-form sketch", closed_form)):
                bil.MCB.sketch = sketch
                for on in ((False,) if not norm else (False, True)):
                    _kernels(on)
                    run("mcb", f"{label}, normalize={norm}" + (f", kernel={on}" if norm else ""), m, xs)
            bil.MCB.sketch = closed_form
            _kernels(True)

        m, xs = fusion("tucker")
        square("tucker", m)
        for a in (1, 8):
            fac.Tucker.gemm_alignment = a
            run("tucker", f"gemm_alignment {a}", m, xs)

        m, xs = fusion("mutan")
        square("mutan", m)
        for a in (1, 8):
            fac.Mutan.gemm_alignment = a
            run("mutan", f"gemm_alignment {a}", m, xs)

        m, xs = fusion("block")
        square("block", m)
        fac.Block.gemm_alignment = 1
        for tile in (23, 27):
            fac._TILE_ELEMENTS_CUDA = 1 << tile
            run("block", f"tile 2^{tile} elements", m, xs)
        fac.Block.gemm_alignment = 8
        run("block", "tile 2^27 elements, gemm_alignment 8", m, xs)

        for name in ("mfh", "mfb"):
            m, xs = fusion(name)
            square(name, m)
            for label, on, tail in (("torch ops", False, False), ("power-normalize kernel", True, False),
                                    ("fused tail kernel", True, True)):
                _kernels(on, tail)
                run(name, label, m, xs)
        _kernels(True)

        m, xs = fusion("block_tucker")
        square("block_tucker", m)
        fac.BlockTucker.gemm_alignment = 1
        for on in (False, True):
            _kernels(on)
            run("block_tucker", f"kernel={on}", m, xs)
        fac.BlockTucker.gemm_alignment = 8
        run("block_tucker", "kernel=True, gemm_alignment 8", m, xs)
    finally:
        bil.MCB.sketch = closed_form
        for cls in (fac.Tucker, fac.Mutan, fac.Block, fac.BlockTucker):
            cls.gemm_alignment = 8
        fac._TILE_ELEMENTS_CUDA = 1 << 27
        _kernels(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

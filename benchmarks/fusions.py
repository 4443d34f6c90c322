"""Micro-benchmark of every vector fusion: parameters, forward and forward+backward time, peak
memory, the time of the fusion's own GEMMs alone, and block.bootstrap.pytorch side by side.

The measurement core (timing, GEMM replay, peak memory, machine line) is
:mod:`mmfuse.bench.micro`, shared with ``mmfuse bench fusions``; this script keeps the VQA-sized
configurations and the block.bootstrap comparison.

    python benchmarks/fusions.py                        # CPU, 2 threads, float32, 2-D and 3-D inputs
    python benchmarks/fusions.py --fusions "mf*" --shapes 2d --repeat 20
    python benchmarks/fusions.py --device cuda --batch 2048 --autocast bf16 --compile --square-baseline
    python benchmarks/fusions.py --device cuda --batch 2048 --shapes 2d --autocast bf16 --square-baseline --cuda-graph

Configurations are block.bootstrap's VQA2 ones (in_dims (2400, 2048), out_dim 3000, batch 128):
MLB hidden 1200; MFB hidden 1000 factor 5; MFH hidden 340 factor 5; MUTAN hidden 700 rank 10;
Tucker hidden 235; BLOCK hidden 1600 chunks 18 rank 15; BLOCK-Tucker hidden 1800 chunks 10; MCB
d 16000; ConcatMLP [1600, 1600]. Both sides run with the same activations and no dropout, so
that the same arithmetic is timed. "3d" inputs are [128, 36, D] for both modalities; block's
modules only handle [B, D] correctly, so they get the same rows flattened to [4608, D].

Columns: ``fwd`` forward under no_grad, ``f+b`` forward + backward of ``out.sum()``, medians
in ms; ``x blk`` = block's time / mmfuse's (>= 1.0: mmfuse is faster); ``gemm`` = the same
GEMMs (shapes and layouts recorded from one forward + backward) timed alone; ``/gemm`` =
f+b / gemm; ``peak MB`` = peak extra memory of one forward + backward (CPU: resident set
measured in a fresh process; CUDA: max_memory_allocated). With ``--cuda-graph``, ``graph f+b``
is the same forward + backward captured once and replayed as a CUDA graph: the GPU's own time,
without the host's per-operator launch cost, which dominates small steps in eager mode
(docs/BENCHMARKS.md); ``graph / square graph`` is its ratio to the square GEMM's graph.
``--square-baseline``: the bare GEMM is one bias-free square Linear with the fusion's weight
count, the fastest per weight of the sides ``isqrt(params)`` and that rounded down to multiples
of 8, 64 and 128, its time scaled to the fusion's weight count (``micro.square_sides``: one slow
GEMM shape would otherwise flatter a fusion; ``square side`` records the side used).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

import mmfuse
from mmfuse.bench import micro
from mmfuse.bench.micro import GemmRecorder, machine  # noqa: F401  (re-exported: benchmarks/attention.py)
from mmfuse.data._io import atomic_write_bytes

# the measurement core lives in mmfuse.bench.micro; these names are kept for benchmarks/attention.py
_time, _sync, _status_mb, _fmt = micro.time_ms, micro.sync, micro.status_mb, micro.fmt

IN_DIMS, OUT_DIM = (2400, 2048), 3000
NO_DROPOUT = {"dropout_input": 0.0, "dropout_pre_lin": 0.0}


@dataclass
class Config:
    kwargs: dict[str, Any]
    block: tuple[str, dict[str, Any]] | None = None
    in_dims: tuple[int, ...] = IN_DIMS
    out_dim: int = OUT_DIM
    note: str = ""


RELU = {"activation": "relu", "output_activation": "relu"}
CONFIGS: dict[str, Config] = {
    "linear_sum": Config({"hidden_dim": 1200, **RELU}, ("LinearSum", {"mm_dim": 1200})),
    "concat_mlp": Config({"hidden_dims": (1600, 1600)}, ("ConcatMLP", {"dimensions": [1600, 1600]})),
    "mlb": Config({"hidden_dim": 1200, **RELU, **NO_DROPOUT}, ("MLB", {"mm_dim": 1200})),
    "mfb": Config(
        {"hidden_dim": 1000, "factor": 5, **RELU, "dropout_expanded": 0.0},
        ("MFB", {"mm_dim": 1000, "factor": 5, "normalize": True}),
    ),
    "mfh": Config(
        {"hidden_dim": 340, "factor": 5, **RELU, "dropout_expanded": 0.0},
        ("MFH", {"mm_dim": 340, "factor": 5, "normalize": True}),
    ),
    "mutan": Config(
        {"hidden_dim": 700, "rank": 10, "activation": None, "normalize": True, **NO_DROPOUT},
        ("Mutan", {"mm_dim": 700, "rank": 10, "normalize": True}),
    ),
    "tucker": Config(
        {"hidden_dim": 235, "activation": None, "normalize": True}, ("Tucker", {"mm_dim": 235, "normalize": True})
    ),
    "block": Config(
        {"hidden_dim": 1600, "chunks": 18, "rank": 15, "dropout_projected": 0.0},
        ("Block", {"mm_dim": 1600, "chunks": 18, "rank": 15}),
    ),
    "block_tucker": Config(
        {"hidden_dim": 1800, "chunks": 10, "dropout_projected": 0.0}, ("BlockTucker", {"mm_dim": 1800, "chunks": 10})
    ),
    "mcb": Config(
        {"hidden_dim": 16000, "normalize": False, "output_activation": "relu", "dropout_pre_lin": 0.0},
        ("MCB", {"mm_dim": 16000}),
        note="block's MCB through a torch.rfft shim",
    ),
    # no block.bootstrap counterpart
    "concat": Config({}),
    "product": Config({"hidden_dim": 1200}),
    "weighted_sum": Config({}),
    "gmu": Config({}),
    "mrn": Config({"dropout_input": 0.0}, out_dim=1200),
    "dpp": Config({"hash_size": 40000}, out_dim=256, note="dynamic weights: out_dim 256"),
    "lmf": Config({"rank": 4}),
    "bilinear": Config({}, in_dims=(300, 300), out_dim=300, note="full bilinear only at small dims"),
    "tfn": Config({}, in_dims=(128, 128), out_dim=128, note="the outer product only at small dims"),
}


# 3-D inputs ([128, 36, D] = 4608 rows) are skipped where one call would take minutes on 2 cores
# or its intermediate gigabytes: full cores (Tucker 4608 x 235^3, BLOCK-Tucker 4608 x 10 x 180^3
# multiply-adds), the outer product (TFN) and per-row dynamic weights (DPP). Named in --fusions
# by their exact name, Tucker and BLOCK-Tucker run at 3-D too (their cores go over the rows in
# tiles; block's nn.Bilinear forms [4608, 180, 180] per chunk)
SKIP_3D = ("bilinear", "tfn", "dpp", "tucker", "block_tucker")
ON_REQUEST_3D = ("tucker", "block_tucker")

# ------------------------------------------------------------------ block.bootstrap


def _shim_old_torch_api() -> None:
    """Give block's MCB the torch.rfft / irfft / positional-value addcmul it was written for."""
    if getattr(torch, "_mmfuse_shim", False):
        return
    addcmul = torch.addcmul

    def rfft(x, signal_ndim):
        return torch.view_as_real(torch.fft.rfft(x, dim=-1))

    def irfft(x, signal_ndim, signal_sizes):
        return torch.fft.irfft(torch.view_as_complex(x.contiguous()), n=signal_sizes[0], dim=-1)

    def addcmul_compat(inp, *args, **kwargs):
        if len(args) == 3 and isinstance(args[0], (int, float)):
            value, t1, t2 = args
            return addcmul(inp, t1, t2, value=value)
        return addcmul(inp, *args, **kwargs)

    torch.rfft, torch.irfft, torch.addcmul = rfft, irfft, addcmul_compat
    torch._mmfuse_shim = True


def block_module(name: str, cfg: Config):
    try:
        from block.models.networks.fusions import fusions as bf
    except Exception:
        return None
    if cfg.block is None:
        return None
    cls, kwargs = cfg.block
    if name == "mcb":
        _shim_old_torch_api()
    return getattr(bf, cls)(list(cfg.in_dims), cfg.out_dim, **kwargs)


# ------------------------------------------------------------------ measurement


def _inputs(cfg: Config, shape: str, batch: int, device, dtype, flat: bool):
    g = torch.Generator().manual_seed(0)
    lead = (batch,) if shape == "2d" else (batch, 36)
    if flat:
        lead = (int(torch.tensor(lead).prod()),)
    return [torch.randn(*lead, d, generator=g).to(device=device, dtype=dtype) for d in cfg.in_dims]


def _runner(module, xs, is_block: bool, autocast: str | None, device):
    return micro.runners(module, xs, list_input=is_block, autocast=autocast, device=device)


def gemm_time(module, xs, is_block, device, repeat) -> float:
    """Time of the GEMMs that one forward + backward runs, replayed alone."""
    return micro.gemm_time(module, xs, is_block, device, repeat)


def peak_memory_mb(name: str, impl: str, shape: str, args) -> float | None:
    """Peak extra memory of one forward + backward, measured in a fresh process (CPU)."""
    cmd = [
        sys.executable, __file__, "--_memory", name, impl, shape,
        "--batch", str(args.batch), "--threads", str(args.threads),
    ]
    return micro.child_peak_mb(cmd)


def _measure_memory_child(name: str, impl: str, shape: str, batch: int) -> None:
    """Print the peak resident memory of one forward + backward above the level before it."""
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    if impl == "block":
        module = block_module(name, cfg)
    else:
        module = mmfuse.create_fusion(name, in_dims=cfg.in_dims, out_dim=cfg.out_dim, **cfg.kwargs)
    xs = _inputs(cfg, shape, batch, torch.device("cpu"), torch.float32, flat=impl == "block")
    for x in xs:
        x.requires_grad_(True)

    def fwd_bwd():
        out = module(list(xs)) if impl == "block" else module(*xs)
        out.sum().backward()

    print(f"{micro.peak_rss_mb(fwd_bwd):.1f}")


@dataclass
class Row:
    name: str
    shape: str
    params: int
    fwd: float
    fb: float
    gemm: float | None = None
    block_fwd: float | None = None
    block_fb: float | None = None
    peak: float | None = None
    block_peak: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _graph(module, xs, list_input: bool, args, device) -> float | None:
    """Median ms of one forward + backward replayed as a CUDA graph (None off CUDA)."""
    _, fb = micro.runners(module, xs, list_input=list_input, autocast=args.autocast, device=device,
                          autocast_cache=False)
    return micro.cuda_graph_ms(fb, device, args.repeat)


def measure(name: str, shape: str, args, device, dtype) -> Row:
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    m = mmfuse.create_fusion(name, in_dims=cfg.in_dims, out_dim=cfg.out_dim, **cfg.kwargs).to(device=device, dtype=dtype)
    m.train()
    xs = _inputs(cfg, shape, args.batch, device, dtype, flat=False)
    for x in xs:
        x.requires_grad_(True)
    b = block_module(name, cfg) if args.block else None
    if b is not None:
        b = b.to(device=device, dtype=dtype).train()
        bxs = _inputs(cfg, shape, args.batch, device, dtype, flat=True)
        for x in bxs:
            x.requires_grad_(True)
    fwd, fb = _runner(m, xs, False, args.autocast, device)
    if b is not None:
        bfwd, bfb = _runner(b, bxs, True, args.autocast, device)
    row = Row(name, shape, sum(p.numel() for p in m.parameters()), 0.0, 0.0, note=cfg.note)
    # interleave the two implementations so that drift in the machine's load hits both alike
    f_t, fb_t, bf_t, bfb_t = [], [], [], []
    for _ in range(args.rounds):
        f_t.append(_time(fwd, device, args.repeat))
        fb_t.append(_time(fb, device, args.repeat))
        if b is not None:
            bf_t.append(_time(bfwd, device, args.repeat))
            bfb_t.append(_time(bfb, device, args.repeat))
    row.fwd, row.fb = min(f_t), min(fb_t)
    if b is not None:
        row.block_fwd, row.block_fb = min(bf_t), min(bfb_t)
    if args.autocast is None:
        row.gemm = gemm_time(m, xs, False, device, args.repeat)
    if args.compile:
        torch._dynamo.reset()
        cm = torch.compile(m)
        _, cfb = _runner(cm, xs, False, args.autocast, device)
        row.extra["compiled f+b"] = _time(cfb, device, args.repeat, warmup=3)
    if args.cuda_graph:
        # the same forward + backward replayed as one CUDA graph: the GPU's time without the host's
        row.extra["graph f+b"] = _graph(m, xs, False, args, device)
        if b is not None:
            row.extra["block graph f+b"] = _graph(b, bxs, True, args, device)
    if args.square_baseline:
        # one square Linear with the fusion's weight count, same rows and dtype: the fastest per
        # weight of a few sides (micro.square_sides), scaled to the fusion's weight count
        rows = xs[0].shape[:-1].numel()
        squares = {}

        def square(side):
            if side not in squares:
                squares[side] = micro.square_linear(side, rows, device, dtype)
            return squares[side]

        def eager(side):
            lin, sx = square(side)
            return min(_time(_runner(lin, sx, False, args.autocast, device)[1], device, args.repeat)
                       for _ in range(args.rounds))

        row.extra["square GEMM f+b"], row.extra["square side"] = micro.square_baseline(row.params, eager)
        if b is not None:
            row.extra["block / square"] = row.block_fb / row.extra["square GEMM f+b"]
        row.extra["mmfuse / square"] = row.fb / row.extra["square GEMM f+b"]
        square_graph = None
        if args.cuda_graph:
            def graph(side):
                lin, sx = square(side)
                return _graph(lin, sx, False, args, device)

            square_graph, row.extra["square graph side"] = micro.square_baseline(row.params, graph)
        if square_graph:
            row.extra["square graph f+b"] = square_graph
            for key, impl in (("graph / square graph", "graph f+b"), ("block graph / square graph", "block graph f+b")):
                if row.extra.get(impl):
                    row.extra[key] = row.extra[impl] / square_graph
    if args.memory:
        if device.type == "cuda":
            for impl, (mod, f) in {"mmfuse": (m, fb), "block": (b, bfb if b is not None else None)}.items():
                if mod is None:
                    continue
                setattr(row, "peak" if impl == "mmfuse" else "block_peak", micro.cuda_peak_mb(f))
        else:
            row.peak = peak_memory_mb(name, "mmfuse", shape, args)
            if b is not None:
                row.block_peak = peak_memory_mb(name, "block", shape, args)
    return row


def render(rows: list[Row]) -> str:
    extra_keys = sorted({k for r in rows for k in r.extra})
    head = ["fusion", "input", "params", "fwd ms", "blk fwd", "x blk", "f+b ms", "blk f+b", "x blk", "gemm ms", "/gemm",
            "peak MB", "blk MB", *extra_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.name, r.shape, f"{r.params / 1e6:.2f}M", _fmt(r.fwd), _fmt(r.block_fwd),
            _fmt(r.block_fwd / r.fwd if r.block_fwd else None, ".2f"), _fmt(r.fb), _fmt(r.block_fb),
            _fmt(r.block_fb / r.fb if r.block_fb else None, ".2f"), _fmt(r.gemm),
            _fmt(r.fb / r.gemm if r.gemm else None, ".2f"), _fmt(r.peak, ".0f"), _fmt(r.block_peak, ".0f"),
            *[_fmt(r.extra.get(k), ".2f") for k in extra_keys],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fusions", default="*", help="comma-separated fnmatch patterns over the configured fusions")
    p.add_argument("--shapes", default="2d,3d")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5, help="timed calls per round (median)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--autocast", choices=("bf16",), default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--square-baseline", action="store_true")
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time f+b replayed as a CUDA graph (mmfuse, block, the square GEMM)")
    p.add_argument("--no-block", dest="block", action="store_false")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._memory:
        _measure_memory_child(*args._memory, args.batch)
        return 0
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    try:
        names = mmfuse.select_fusions(args.fusions, list(CONFIGS))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    missing = sorted(set(mmfuse.list_fusions(kind="vector")) - set(CONFIGS))
    if args.block and block_module("mlb", CONFIGS["mlb"]) is None:
        print("block.bootstrap.pytorch not importable: mmfuse only", file=sys.stderr)
        args.block = False
    print(f"# machine: {machine()}; device {device}, {args.dtype}, autocast {args.autocast}, batch {args.batch}")
    if missing:
        print(f"# not configured here: {', '.join(missing)}")
    rows = []
    named = {p.strip() for p in args.fusions.split(",")}  # named outright, not through a pattern
    for name in names:
        for shape in args.shapes.split(","):
            if name in SKIP_3D and shape == "3d" and not (name in ON_REQUEST_3D and name in named):
                continue
            try:
                rows.append(measure(name, shape, args, device, dtype))
            except RuntimeError as err:  # e.g. out of memory on a small machine
                print(f"# {name} {shape}: {err}", file=sys.stderr)
                continue
            print(render(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            if args.json:  # after every row, so that a run stopped at a time cap keeps what it measured
                _write_json(args.json, [r.__dict__ for r in rows])
    print(render(rows))
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note and r.shape == "2d"]
    if notes:
        print("\n" + "\n".join(dict.fromkeys(notes)))
    if args.json:
        _write_json(args.json, [r.__dict__ for r in rows])
    return 0


def _write_json(path: str, payload) -> None:
    """Write ``payload`` as JSON atomically (mmfuse's temp file + fsync + rename)."""
    atomic_write_bytes(path, json.dumps(payload, indent=1).encode())


if __name__ == "__main__":
    sys.exit(main())

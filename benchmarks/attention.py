"""Micro-benchmark of every attention fusion: parameters, forward+backward time, peak memory.

    python benchmarks/attention.py                                   # CPU, 2 threads, B 64, K 36
    python benchmarks/attention.py --regions 36,100 --fwd            # the full CPU table
    python benchmarks/attention.py --quick --fusions "ban,mcb_attention"
    python benchmarks/attention.py --device cuda                     # K 36 and 100, + bf16 and compile

Every fusion registered with ``kind="attention"`` is measured (``mmfuse.list_fusions``), so new
ones are included without editing this file; ``CONFIGS`` only holds the few constructor
arguments a method needs beyond the contract. Sizes are VQA's: batch 64, K = 36 and 100
bottom-up regions of Dv = 2048, T = 14 word states of Dq = 1024 (questions of 4 to 14 valid
words, all regions valid), out_dim 3000 (the size of VQA v2's answer vocabulary, ``--out``);
every method runs with its paper defaults.

Columns: ``f+b`` forward + backward of ``fused.sum()`` and ``fwd`` forward under no_grad (CPU:
with ``--fwd``), medians in ms (train mode: dropout on); ``peak MB`` = peak extra memory of one forward +
backward (CPU: resident set of a fresh process per measurement, as ``benchmarks/fusions.py``
does, whose helpers this script imports; CUDA: ``max_memory_allocated``). On CUDA the float32
columns are followed by bf16 autocast (``bf16 f+b``, ``bf16 MB``) and ``torch.compile``
(``compiled f+b``, float32, default inductor backend).

Run time on two CPU cores: each measurement runs in its own process (about 5 s to start): one
forward + backward for the memory, which is also the warm-up, then ``--repeat`` (1) timed
ones. Measured on 2 cores (session 3, docs/BENCHMARKS.md): the default (B 64, K 36) takes
about two and a half minutes, ``--regions 100`` about four and a half (BAN-8 at batch 256:
about a minute and a half, 48 s per forward + backward); ``--fwd`` adds about a third. On CUDA
the default is K 36 and 100, three timed calls after two warm-up calls.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import mmfuse


def _load_vector_bench():
    """``benchmarks/fusions.py`` as a module (its timing, memory and machine helpers)."""
    path = Path(__file__).with_name("fusions.py")
    spec = importlib.util.spec_from_file_location("mmfuse_bench_fusions", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


vb = _load_vector_bench()

V_DIM, Q_DIM = 2048, 1024
DEFAULT_OUT_DIM = 3000
OUT_DIM = DEFAULT_OUT_DIM  # set from --out in main()

# constructor arguments beyond (v_dim, q_dim, out_dim) where a method needs them; the rest run
# with their paper defaults
CONFIGS: dict[str, dict[str, Any]] = {}


@dataclass
class Row:
    name: str
    regions: int
    params: int | None = None
    fwd: float | None = None
    fb: float | None = None
    peak: float | None = None
    extra: dict[str, float | None] = field(default_factory=dict)
    error: str = ""


def build(name: str, device, dtype=torch.float32):
    torch.manual_seed(0)
    m = mmfuse.create_fusion(name, v_dim=V_DIM, q_dim=Q_DIM, out_dim=OUT_DIM, **CONFIGS.get(name, {}))
    return m.to(device=device, dtype=dtype).train()


def make_inputs(batch: int, regions: int, words: int, device, dtype=torch.float32):
    """``(v, q, v_mask, q_mask)``: all regions valid, questions of 4..words valid words."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(batch, regions, V_DIM, generator=g)
    q = torch.randn(batch, words, Q_DIM, generator=g)
    lengths = torch.randint(min(4, words), words + 1, (batch,), generator=g)
    q_mask = torch.arange(words)[None, :] < lengths[:, None]
    v_mask = torch.ones(batch, regions, dtype=torch.bool)
    return [t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in (v, q, v_mask, q_mask)]


def runners(module, inputs, autocast: bool, device):
    v, q, vm, qm = inputs

    def call():
        a, c = v.detach().requires_grad_(True), q.detach().requires_grad_(True)
        if autocast:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return module(a, c, v_mask=vm, q_mask=qm)
        return module(a, c, v_mask=vm, q_mask=qm)

    def fwd():
        with torch.no_grad():
            call()

    def fwd_bwd():
        call().fused.float().sum().backward()

    return fwd, fwd_bwd


# ------------------------------------------------------------------ CPU: one fresh process per measurement


def _child(name: str, regions: int, args) -> None:
    """Print one JSON row: params, peak resident memory of the first forward + backward (which
    is also the warm-up), then the median times."""
    device = torch.device("cpu")
    module = build(name, device)
    inputs = make_inputs(args.batch, regions, args.words, device)
    fwd, fb = runners(module, inputs, False, device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one
    base = vb._status_mb("VmRSS")
    fb()
    peak = vb._status_mb("VmHWM") - base
    row = {
        "params": sum(p.numel() for p in module.parameters()),
        "peak": peak,
        "fb": vb._time(fb, device, args.repeat, warmup=0),
        "fwd": vb._time(fwd, device, args.repeat, warmup=0) if args.fwd else None,
    }
    print(json.dumps(row))


def measure_cpu(name: str, regions: int, args) -> Row:
    cmd = [
        sys.executable, __file__, "--_child", name, str(regions), "--batch", str(args.batch), "--words",
        str(args.words), "--out", str(args.out), "--repeat", str(args.repeat), "--threads", str(args.threads),
        *(["--fwd"] if args.fwd else []),
    ]
    row = Row(name, regions)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        row.error = f"timed out after {args.timeout} s"
        return row
    try:
        data = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        row.error = tail[:160]
        return row
    row.params, row.peak, row.fb, row.fwd = data["params"], data["peak"], data["fb"], data["fwd"]
    return row


# ------------------------------------------------------------------ CUDA: in process


def _cuda_fb_and_peak(module, inputs, autocast: bool, device, repeat: int, warmup: int = 2):
    fwd, fb = runners(module, inputs, autocast, device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fb()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return vb._time(fwd, device, repeat, warmup), vb._time(fb, device, repeat, warmup), peak


def measure_cuda(name: str, regions: int, args) -> Row:
    device = torch.device(args.device)
    row = Row(name, regions)
    try:
        module = build(name, device)
        inputs = make_inputs(args.batch, regions, args.words, device)
        row.params = sum(p.numel() for p in module.parameters())
        row.fwd, row.fb, row.peak = _cuda_fb_and_peak(module, inputs, False, device, args.repeat)
    except Exception as err:  # noqa: BLE001 - one failing method must not stop the table
        row.error = f"{type(err).__name__}: {err}"[:160]
        return row
    try:
        _, row.extra["bf16 f+b"], row.extra["bf16 MB"] = _cuda_fb_and_peak(module, inputs, True, device, args.repeat)
    except Exception as err:  # noqa: BLE001
        row.extra["bf16 f+b"] = row.extra["bf16 MB"] = None
        print(f"# {name} K={regions} bf16: {type(err).__name__}: {err}", file=sys.stderr)
    if args.compile and mmfuse.fusion_info(name).compile:
        try:
            torch._dynamo.reset()
            compiled = torch.compile(module)
            _, cfb = runners(compiled, inputs, False, device)
            row.extra["compiled f+b"] = vb._time(cfb, device, args.repeat, warmup=3)
        except Exception as err:  # noqa: BLE001
            row.extra["compiled f+b"] = None
            print(f"# {name} K={regions} compile: {type(err).__name__}: {err}", file=sys.stderr)
    del module
    torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------ table


def render(rows: list[Row]) -> str:
    extra = list(dict.fromkeys(k for r in rows for k in r.extra))
    head = ["fusion", "K", "params", "fwd ms", "f+b ms", "peak MB", *extra, "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.name, str(r.regions), "" if r.params is None else f"{r.params / 1e6:.2f}M", vb._fmt(r.fwd), vb._fmt(r.fb),
            vb._fmt(r.peak, ".0f"), *[vb._fmt(r.extra.get(k)) for k in extra], r.error.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    global OUT_DIM
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fusions", default="*", help="comma-separated fnmatch patterns over the attention fusions")
    p.add_argument("--regions", default=None, help="K values (default: 36 on CPU, 36,100 on CUDA)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--words", type=int, default=14)
    p.add_argument("--out", type=int, default=DEFAULT_OUT_DIM, help="out_dim of every fusion (3000, VQA v2's answers)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls, median (default: 1 on CPU, 3 on CUDA)")
    p.add_argument("--fwd", action="store_true", help="CPU: also time the forward alone (always on CUDA)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="CUDA: skip the torch.compile column")
    p.add_argument("--timeout", type=int, default=300, help="CPU: seconds per measurement process")
    p.add_argument("--quick", action="store_true", help="batch 16, K 36, one repeat")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    OUT_DIM = args.out
    cuda = torch.device(args.device).type == "cuda"
    if args.quick:
        args.batch, args.regions, args.repeat = 16, "36", 1
    args.regions = args.regions or ("36,100" if cuda else "36")
    args.repeat = args.repeat or (3 if cuda else 1)
    torch.set_num_threads(args.threads)
    if args._child:
        _child(args._child[0], int(args._child[1]), args)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    try:
        names = mmfuse.select_fusions(args.fusions, mmfuse.list_fusions(kind="attention"))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    ks = [int(k) for k in args.regions.split(",")]
    where = vb.machine()
    if device.type == "cuda":
        where += f"; {torch.cuda.get_device_name(device)}"
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)])
    header = [
        f"command: `{command}`",
        f"machine: {where}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"sizes: batch {args.batch}, K {args.regions}, T {args.words}, Dv {V_DIM}, Dq {Q_DIM}, out {OUT_DIM}; "
        f"device {device}, float32; median of {args.repeat}",
    ]
    rows = []
    for name in names:
        for k in ks:
            row = measure_cuda(name, k, args) if device.type == "cuda" else measure_cpu(name, k, args)
            rows.append(row)
            print(f"# {name} K={k}: f+b {vb._fmt(row.fb)} ms, peak {vb._fmt(row.peak, '.0f')} MB {row.error}",
                  file=sys.stderr, flush=True)
            if args.json:  # after every row, so that a run stopped at a time cap keeps what it measured
                vb._write_json(args.json, {"header": header, "rows": [r.__dict__ for r in rows]})
    print("\n".join(f"- {h}" for h in header) + "\n")
    print(render(rows))
    if args.json:
        vb._write_json(args.json, {"header": header, "rows": [r.__dict__ for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a fusion's forward + backward goes on the GPU: Python and launches, or kernels, and which.

Issue 3's GPU target (every fusion's forward + backward within 2x of one square GEMM with the
same weight count, batch 2048, bf16 autocast) is missed by MFH, BLOCK, Tucker and MCB
(docs/BENCHMARKS.md, session 4). This script tells why, for each fusion at the VQA2
configuration of ``benchmarks/fusions.py``:

- ``eager``: median wall milliseconds of one forward + backward, as ``fusions.py``'s ``f+b``;
- ``graph``: the same step captured once and replayed as a CUDA graph (no Python, no launch
  gaps; CUDA only): ``eager`` far above ``graph`` means the GPU waits for the host;
- ``kernels``, ``kernel ms``, ``GEMM ms``: GPU kernels per step, their summed device time, and
  the part spent in GEMM kernels (cuBLAS / CUTLASS names), from ``torch.profiler``;
- the same three for the square GEMM (one bias-free ``Linear``), then each fusion's top kernels.

On a CPU (``--device cpu``, for checking the script) there is no graph and the profile lists
operators instead of kernels.

    python benchmarks/profile_fusions.py --device cuda                   # mfh, block, tucker, mcb, mlb
    python benchmarks/profile_fusions.py --device cuda --fusions block --top 15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

import mmfuse
from mmfuse.bench import micro
from mmfuse.data._io import atomic_write_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusions import CONFIGS  # noqa: E402

GEMM_NAMES = ("gemm", "xmma", "cutlass", "nvjet", "cublas")  # cuBLAS / CUTLASS kernel names
DEFAULT_FUSIONS = "mfh,block,tucker,mcb,mlb"  # the four that miss the target, and one that meets it


def step_fn(module: torch.nn.Module, xs: list[torch.Tensor], autocast: bool, device: torch.device):
    """One forward + backward of ``out.sum()``, the inputs' gradients included."""

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
            out = module(*xs)
        out.float().sum().backward()

    return step


def kernel_profile(step, device: torch.device, steps: int) -> tuple[list[dict[str, Any]], int, float, float]:
    """``(top rows, kernels per step, device ms per step, GEMM ms per step)`` over ``steps`` steps.

    On CUDA the rows are GPU kernels (name, calls per step, ms per step); on a CPU they are
    operators with their self CPU time, and the GEMM share counts ``mm`` / ``addmm`` / ``bmm``."""
    step()
    micro.sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        micro.sync(device)
    rows: dict[str, dict[str, Any]] = {}
    if device.type == "cuda":
        for e in prof.events():
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            r = rows.setdefault(e.name, {"name": e.name, "calls": 0, "us": 0.0})
            r["calls"] += 1
            r["us"] += e.time_range.elapsed_us()
        is_gemm = lambda name: any(k in name.lower() for k in GEMM_NAMES)  # noqa: E731
    else:
        for e in prof.key_averages():
            if e.self_cpu_time_total > 0:
                rows[e.key] = {"name": e.key, "calls": e.count, "us": e.self_cpu_time_total}
        is_gemm = lambda name: name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")  # noqa: E731
    table = sorted(rows.values(), key=lambda r: -r["us"])
    for r in table:
        r["calls"] /= steps
        r["ms"] = r.pop("us") / steps / 1e3
    calls = round(sum(r["calls"] for r in table))
    total = sum(r["ms"] for r in table)
    gemm = sum(r["ms"] for r in table if is_gemm(r["name"]))
    return table, calls, total, gemm


def measure(name: str, module: torch.nn.Module, xs: list[torch.Tensor], args, device) -> dict[str, Any]:
    step = step_fn(module, xs, args.autocast == "bf16", device)
    eager = micro.time_ms(step, device, args.repeat, warmup=3)
    table, calls, total, gemm = kernel_profile(step, device, args.steps)
    return {"fusion": name, "params": sum(p.numel() for p in module.parameters()), "eager ms": eager,
            "graph ms": micro.cuda_graph_ms(step, device, args.repeat), "kernels": calls, "kernel ms": total,
            "GEMM ms": gemm, "top": table[: args.top]}


def square_of(params: int, rows: int, device, dtype) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """One bias-free square Linear with ``params`` weights and its input of ``rows`` rows."""
    return micro.square_linear(int(params**0.5), rows, device, dtype)


def render(rows: list[dict[str, Any]]) -> str:
    f = micro.fmt
    lines = ["| fusion | params | eager ms | graph ms | kernels | kernel ms | GEMM ms | square eager | square graph "
             "| square kernel ms | eager / square | kernel ms / square |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["square"]
        lines.append(
            f"| {r['fusion']} | {r['params'] / 1e6:.2f}M | {f(r['eager ms'], '.2f')} | {f(r['graph ms'], '.2f')} "
            f"| {r['kernels']} | {f(r['kernel ms'], '.2f')} | {f(r['GEMM ms'], '.2f')} | {f(s['eager ms'], '.2f')} "
            f"| {f(s['graph ms'], '.2f')} | {f(s['kernel ms'], '.2f')} | {r['eager ms'] / s['eager ms']:.2f} "
            f"| {r['kernel ms'] / max(s['kernel ms'], 1e-9):.2f} |")
    for r in rows:
        lines += ["", f"{r['fusion']}: top kernels (calls and ms per step)", ""]
        lines += [f"    {t['ms']:8.3f} ms  {t['calls']:5.1f}x  {t['name'][:110]}" for t in r["top"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fusions", default=DEFAULT_FUSIONS, help="comma-separated names of benchmarks/fusions.py's configs")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--autocast", choices=["bf16", "none"], default="bf16")
    p.add_argument("--repeat", type=int, default=10, help="timed steps (median)")
    p.add_argument("--steps", type=int, default=5, help="profiled steps")
    p.add_argument("--top", type=int, default=8, help="kernels listed per fusion")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.fusions.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--fusions: unknown {unknown}; expected names among {sorted(CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# {micro.machine()}; batch {args.batch}, autocast {args.autocast}, {args.steps} profiled steps", flush=True)
    rows = []
    for name in names:
        cfg = CONFIGS[name]
        torch.manual_seed(0)
        m = mmfuse.create_fusion(name, in_dims=cfg.in_dims, out_dim=cfg.out_dim, **cfg.kwargs).to(device).train()
        xs = [torch.randn(args.batch, d, device=device, requires_grad=True) for d in cfg.in_dims]
        row = measure(name, m, xs, args, device)
        lin, sx = square_of(row["params"], args.batch, device, torch.float32)
        row["square"] = measure("square", lin, sx, args, device)
        rows.append(row)
        print(f"{name}: eager {row['eager ms']:.2f} ms, {row['kernels']} kernels, {row['kernel ms']:.2f} ms in them; "
              f"square eager {row['square']['eager ms']:.2f} ms", flush=True)
        if args.json:
            atomic_write_bytes(Path(args.json), json.dumps(rows, indent=1).encode())
        del m, lin, xs, sx
    print()
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time the two orders of ``mmfuse.fusions.factorized.bilinear_core``: forward, forward + backward.

``bilinear_core`` computes ``z[c, n, k] = sum_ij w[c, k, i, j] x[c, n, i] y[c, n, j]`` for
Tucker (one 235^3 core at block.bootstrap's VQA sizes) and BLOCK-Tucker (10 cores of 180^3).
Two orders are implemented:

- **outer products**: the rows' ``x ⊗ y``, then one GEMM ``[N, I · J] x [I · J, K]`` per
  chunk (in tiles past ``_CORE_TILE`` elements). Kept for the backward where they fit one tile.
- **by output feature**: one GEMM ``x @ w[c, k]`` per chunk and feature, then a batched dot with
  ``y`` (the order of ``torch.nn.functional.bilinear``), its ``[N, J]`` intermediate in cache.

On a CPU the second runs from ``_BY_OUTPUT_ROWS`` rows wherever no products are kept: forward
without gradients, and forward and backward where the products would pass one tile. This script
measures both at several row counts, so that the threshold can be checked on another machine
(the ratios are outer / by output: above 1, by output is faster):

    python benchmarks/bilinear_core.py                       # 2 threads, rows 128 .. 4608
    python benchmarks/bilinear_core.py --rows 256,384,512 --cores tucker --no-backward
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from mmfuse.bench import micro
from mmfuse.fusions import factorized

# (chunks, I = J = K) of each core at block.bootstrap's VQA configurations (benchmarks/fusions.py)
CORES = {"tucker": (1, 235), "block_tucker": (10, 180)}
ORDERS = ("outer", "by_output")


def operands(chunks: int, side: int, rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [C, N, I]``, ``y [C, N, J]``, ``w [C, K, I, J]`` in float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(chunks, rows, side, generator=g)
    y = torch.randn(chunks, rows, side, generator=g)
    w = torch.randn(chunks, side, side, side, generator=g) / side
    return x, y, w


@contextlib.contextmanager
def order(name: str):
    """Run ``bilinear_core`` in one order whatever the row count: ``outer`` (the products, kept
    for the backward where they fit one tile, else tiled) or ``by_output`` (forward and backward
    by output feature: every call counts as tiled, so no products are kept)."""
    names = ("_BY_OUTPUT_ROWS", "_CORE_TILE", "_CORE_TILE_CUDA")
    saved = {k: getattr(factorized, k) for k in names}
    if name == "outer":
        factorized._BY_OUTPUT_ROWS = sys.maxsize
    elif name == "by_output":
        factorized._BY_OUTPUT_ROWS, factorized._CORE_TILE, factorized._CORE_TILE_CUDA = 1, 0, 0
    else:
        raise ValueError(f"order: expected 'outer' or 'by_output', got {name!r}")
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(factorized, k, v)


def run(name: str, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, dz: torch.Tensor | None):
    """One forward in order ``name`` (no gradients where ``dz`` is None), else forward + backward;
    returns ``z`` or the gradients of ``x``, ``y``, ``w``."""
    with order(name):
        if dz is None:
            with torch.no_grad():
                return factorized.bilinear_core(x, y, w)
        args = [a.detach().requires_grad_() for a in (x, y, w)]
        with torch.enable_grad():
            return torch.autograd.grad(factorized.bilinear_core(*args), args, dz)


def time_orders(chunks: int, side: int, rows: int, rounds: int, repeat: int, backward: bool) -> dict[str, float]:
    """Best-of-``rounds`` median ms of each order, interleaved, forward alone and (``backward``)
    forward + backward, and ``diff``: the largest difference between the orders' outputs and
    gradients (a check that both computed the same thing)."""
    x, y, w = operands(chunks, side, rows)
    dz = operands(chunks, side, rows, seed=1)[0]
    cpu = torch.device("cpu")
    passes = {"fwd": None, "fb": dz} if backward else {"fwd": None}
    best = {f"{p} {o}": float("inf") for p in passes for o in ORDERS}
    for _ in range(rounds):
        for p, d in passes.items():
            for o in ORDERS:
                ms = micro.time_ms(lambda: run(o, x, y, w, d), cpu, repeat, warmup=1)
                best[f"{p} {o}"] = min(best[f"{p} {o}"], ms)
    diffs = []
    for d in passes.values():
        a, b = (run(o, x, y, w, d) for o in ORDERS)
        a, b = ([a], [b]) if d is None else (a, b)
        diffs += [(u - v).abs().max().item() / max(u.abs().max().item(), 1e-30) for u, v in zip(a, b)]
    best["diff"] = max(diffs)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", default="tucker,block_tucker", help=f"comma-separated, of {sorted(CORES)}")
    p.add_argument("--rows", default="128,256,384,1024,4608", help="comma-separated row counts N")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-backward", action="store_true", help="time the forward alone")
    args = p.parse_args(argv)
    cores = [c for c in args.cores.split(",") if c]
    unknown = [c for c in cores if c not in CORES]
    if unknown:
        p.error(f"--cores: expected names of {sorted(CORES)}, got {unknown}")
    try:
        rows = [int(r) for r in args.rows.split(",") if r]
    except ValueError:
        p.error(f"--rows: expected comma-separated integers, got {args.rows!r}")
    if not rows or min(rows) < 1:
        p.error(f"--rows: expected positive row counts, got {args.rows!r}")
    torch.set_num_threads(args.threads)
    print(f"# machine: {micro.machine()}; float32")
    print(f"# defaults: _BY_OUTPUT_ROWS = {factorized._BY_OUTPUT_ROWS}, _CORE_TILE = {factorized._CORE_TILE}")
    cols = ["fwd outer", "fwd by_output"] + ([] if args.no_backward else ["fb outer", "fb by_output"])
    print("| core | chunks x side^3 | rows | " + " | ".join(f"{c} ms" for c in cols) + " | fwd ratio | "
          + ("" if args.no_backward else "f+b ratio | ") + "max rel. diff |")
    print("|---" * (len(cols) + 6 - args.no_backward) + "|")
    for name in cores:
        chunks, side = CORES[name]
        for n in rows:
            t = time_orders(chunks, side, n, args.rounds, args.repeat, backward=not args.no_backward)
            ratios = [t["fwd outer"] / t["fwd by_output"]]
            if not args.no_backward:
                ratios.append(t["fb outer"] / t["fb by_output"])
            print(f"| {name} | {chunks} x {side}^3 | {n} | " + " | ".join(f"{t[c]:.1f}" for c in cols) + " | "
                  + " | ".join(f"{r:.2f}" for r in ratios) + f" | {t['diff']:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the generated datasets: building the default Sort-of-CLEVR and reading it back.

    python benchmarks/data_generation.py            # in a throw-away cache folder
    python benchmarks/data_generation.py --repeat 3 # best of 3

Prints a Markdown table (command, seconds). Each timing is the best of ``--repeat`` runs in
this process (imports excluded); the cache folder is ``$MMFUSE_CACHE`` when ``--use-cache``
is given, else a temporary folder that is removed at the end.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mmfuse.data import (
    generate_sort_of_clevr,
    load_interactions,
    load_sort_of_clevr,
    make_interactions,
    make_sort_of_clevr,
)


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs (default 1)")
    parser.add_argument("--use-cache", action="store_true", help="use $MMFUSE_CACHE / the user cache, not a temp dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mmfuse-bench-") as tmp:
        if not args.use_cache:
            os.environ["MMFUSE_CACHE"] = tmp
        rows: list[tuple[str, float]] = []

        seconds, _ = best_of(args.repeat, generate_sort_of_clevr)
        rows.append(("generate_sort_of_clevr()  (9,800 + 200 images, in memory)", seconds))
        seconds, root = best_of(args.repeat, lambda: make_sort_of_clevr(overwrite=True))
        rows.append(("make_sort_of_clevr(overwrite=True)  (generate + write)", seconds))
        seconds, _ = best_of(args.repeat, make_sort_of_clevr)
        rows.append(("make_sort_of_clevr()  (cache hit)", seconds))
        seconds, data = best_of(args.repeat, lambda: load_sort_of_clevr(root))
        rows.append(("load_sort_of_clevr(path)  (read back from the cache)", seconds))
        ds = data.dataset("train")
        seconds, _ = best_of(args.repeat, lambda: [ds[i] for i in range(0, len(ds), len(ds) // 1000)])
        rows.append(("1,000 items (strided) of the torch Dataset view", seconds))
        seconds, iroot = best_of(args.repeat, lambda: make_interactions(overwrite=True))
        rows.append(("make_interactions(overwrite=True)  (10,000 + 2,000, dims (16, 16))", seconds))
        seconds, _ = best_of(args.repeat, lambda: load_interactions(iroot))
        rows.append(("load_interactions(path)", seconds))

        size_mb = sum(p.stat().st_size for p in Path(root).iterdir()) / 2**20
        print(f"Sort-of-CLEVR cache: {root} ({size_mb:.0f} MiB)")
        machine = platform.processor() or platform.machine()
        print(f"{machine}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, best of {args.repeat}\n")
        print("| command | seconds |")
        print("|---|---:|")
        for command, seconds in rows:
            print(f"| `{command}` | {seconds:.2f} |")


if __name__ == "__main__":
    main()

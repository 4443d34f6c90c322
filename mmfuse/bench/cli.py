"""``mmfuse bench``: the leaderboard and the fusion micro-benchmark on the command line.

    mmfuse bench leaderboard [--tasks T ...] [--fusions PATTERN] [--seeds N] [--epochs N | --steps N]
                             [--quick] [--robustness] [--out DIR] [--n-train N] [--n-test N]
    mmfuse bench fusions [--fusions PATTERN] [--batch B] [--dim D] [--regions K] [--words T]
                         [--preset paper|small] [--device cuda] [--json FILE]

:func:`add_bench_parser` adds the subcommand to ``mmfuse``'s parser; :func:`run_bench` runs it.
Bad values (an unknown task, a pattern that matches no fusion, a budget < 1) raise
``ValueError``, which ``mmfuse`` prints as ``mmfuse: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from collections.abc import Sequence

from ..cli import positive_int

__all__ = ["add_bench_parser", "parse_tasks", "run_bench"]


def parse_tasks(values: Sequence[str] | None) -> list[str] | None:
    """``["soc,soc_bits", "interactions_o2"]`` -> checked task names (``None``: the default set)."""
    if not values:
        return None
    from .leaderboard import check_tasks

    return check_tasks([t.strip() for v in values for t in v.split(",") if t.strip()])


def add_bench_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench leaderboard``, ``bench fusions`` and ``bench merge`` to ``sub`` (``mmfuse``'s subparsers)."""
    from .leaderboard import DEFAULT_TASKS, QUICK, TASKS

    p = sub.add_parser("bench", help="benchmarks: the fusion leaderboard (and merging its parts), the fusion micro-benchmark",
                       description="leaderboard: train every fusion that fits each task (same encoders, budget and "
                       "seeds) and write tables and plots. fusions: time and measure every registered fusion. merge: join "
                       "leaderboard parts run apart into one run folder.")
    bench = p.add_subparsers(dest="bench_command", required=True, metavar="BENCH")

    lb = bench.add_parser(
        "leaderboard", help="train every fusion on the benchmark tasks; tables + plots",
        description="Tasks: " + "; ".join(f"{n} ({t.description}{', GPU-sized' if t.gpu else ''})" for n, t in TASKS.items())
        + f". Default: {', '.join(DEFAULT_TASKS)}. Rerunning with the same --out skips finished entries. "
        f"--quick: {', '.join(QUICK['tasks'])}, {QUICK['seeds']} seeds, {QUICK['budget']['epochs']} epochs, "
        f"{QUICK['n_train']} training samples: every fusion that fits, well within 30 minutes on 2 CPU cores.",
    )
    lb.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help=f"tasks (space or comma separated): {', '.join(TASKS)}")
    lb.add_argument("--fusions", default="*", metavar="PATTERN",
                    help="comma-separated fnmatch patterns (default: all); entries train in this order, and a "
                         "pattern that matches no fusion is an error")
    lb.add_argument("--seeds", type=positive_int, default=None, metavar="N", help="seeds 0..N-1 (default 3)")
    budget = lb.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_int, default=None, help="epochs per entry (default: the task's)")
    budget.add_argument("--steps", type=positive_int, default=None, help="optimizer steps per entry instead of epochs")
    lb.add_argument("--quick", action="store_true", help="the quick preset: every fusion on one small task")
    lb.add_argument("--robustness", action="store_true", help="also noise / missing-modality robustness per entry")
    lb.add_argument("--robustness-baseline", default="concat_mlp", metavar="FUSION",
                    help="the fusion effective robustness is measured against (default concat_mlp, MultiBench's late fusion)")
    lb.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/leaderboard-<time>)")
    lb.add_argument("--n-train", type=positive_int, default=None, help="training size (Sort-of-CLEVR: images)")
    lb.add_argument("--n-test", type=positive_int, default=None, help="test size")
    lb.add_argument("--device", default=None, help="latency / robustness device (default: cuda if available)")
    lb.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    lb.add_argument("--max-minutes", type=float, default=None, metavar="M",
                    help="start no entry that would end past M minutes; rerun the same command to continue")
    # mmfuse.models.task.INPUT_NORMS, spelt out so that building the parser imports no torch
    lb.add_argument("--input-norm", choices=("none", "layer"), default="none",
                    help="layer: a LayerNorm on every input's encoder outputs, for every fusion (use its own --out)")
    lb.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto",
                    help="where entries train (default auto: a GPU if there is one); not part of an entry's digest")
    lb.add_argument("--workers", type=positive_int, default=1, metavar="N",
                    help="train N fusions at a time, one process each (cores / N threads each), then merge "
                    "them into --out; train s and latency are then measured with N sharing the machine")
    lb.set_defaults(func=run_bench)

    fu = bench.add_parser("fusions", help="micro-benchmark of every registered fusion (params, time, memory)",
                          description="Vector fusions: M inputs [B, D] -> D; attention fusions: v [B, K, D], "
                          "q [B, T, D] -> D. On CUDA: bf16 autocast and torch.compile columns too.")
    fu.add_argument("--fusions", default="*", metavar="PATTERN",
                    help="comma-separated fnmatch patterns, measured in this order (default: all)")
    fu.add_argument("--batch", type=positive_int, default=128)
    fu.add_argument("--dim", type=positive_int, default=512, help="every input's width and out_dim")
    fu.add_argument("--regions", type=positive_int, default=36, help="K (attention fusions)")
    fu.add_argument("--words", type=positive_int, default=14, help="T (attention fusions)")
    fu.add_argument("--modalities", type=positive_int, default=2, help="M (vector fusions that accept it)")
    fu.add_argument("--preset", choices=("paper", "small"), default="paper",
                    help="paper: the constructors' defaults; small: the leaderboard presets")
    fu.add_argument("--repeat", type=positive_int, default=3, help="timed calls (median)")
    fu.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    fu.add_argument("--device", default="cpu")
    fu.add_argument("--no-memory", dest="memory", action="store_false")
    fu.add_argument("--no-compile", dest="compile", action="store_false", help="CUDA: skip torch.compile")
    fu.add_argument("--json", default=None, metavar="FILE", help="also write the rows here")
    fu.set_defaults(func=run_bench)

    mg = bench.add_parser(
        "merge", help="merge leaderboard runs made in parts into one run folder",
        description="Merges the results.json of leaderboard run folders (parts run by other processes or on other "
        "machines) into --out. Then rerun the parts' leaderboard command with that --out: it trains nothing "
        "merged and writes the tables and plots of all. Entries trained with different configs refuse to merge.",
    )
    mg.add_argument("sources", nargs="+", metavar="DIR", help="leaderboard run folders (or their results.json)")
    mg.add_argument("--out", required=True, metavar="DIR", help="the run folder to merge into (kept entries stay)")
    mg.set_defaults(func=run_bench)
    return p


def _leaderboard(args: argparse.Namespace) -> int:
    tasks = parse_tasks(args.tasks)  # before any heavy import: a typo fails at once
    from .leaderboard import run_leaderboard_bench

    budget = {"epochs": args.epochs} if args.epochs else {"steps": args.steps} if args.steps else None
    parallel = args.workers > 1
    if parallel:
        import time

        if args.max_minutes is not None and not args.max_minutes >= 0:  # NaN too; before any worker starts
            raise ValueError(f"--max-minutes: expected a number of minutes >= 0, got {args.max_minutes!r}")

        from .leaderboard import resolve_settings, task_datamodule
        from .workers import run_workers

        if args.out is None:
            args.out = f"runs/leaderboard-{time.strftime('%Y%m%d-%H%M%S')}"
        names, _, data_budget, n_train, n_test = resolve_settings(tasks, args.seeds, budget, args.n_train,
                                                                  args.n_test, args.quick)
        for t in names:  # the data, once, before the workers
            task_datamodule(t, budget=data_budget, n_train=n_train, n_test=n_test, input_norm=args.input_norm)
        run_workers(args.fusions, args.workers, args.out, _worker_args(args, tasks), max_minutes=args.max_minutes)
    result = run_leaderboard_bench(
        tasks, args.fusions, seeds=args.seeds, budget=budget, out_dir=args.out, quick=args.quick,
        robustness=args.robustness, robustness_baseline=args.robustness_baseline, n_train=args.n_train, n_test=args.n_test, device=args.device, plots=args.plots,
        max_minutes=args.max_minutes, input_norm=args.input_norm, train_missing=not parallel,
        accelerator=args.accelerator,
    )
    print("\n" + result.markdown)
    print(f"results: {result.out_dir}/leaderboard.md, leaderboard.csv, results.json"
          + (f", {len(result.plots)} plots in {result.out_dir}/plots" if result.plots else ""))
    return 0


def _worker_args(args: argparse.Namespace, tasks: list[str] | None) -> list[str]:
    """The leaderboard arguments every ``--workers`` process gets as they are."""
    out: list[str] = []
    if tasks:
        out += ["--tasks", *tasks]
    for flag, value in (("--seeds", args.seeds), ("--epochs", args.epochs), ("--steps", args.steps),
                        ("--n-train", args.n_train), ("--n-test", args.n_test), ("--device", args.device)):
        if value is not None:
            out += [flag, str(value)]
    if args.quick:
        out.append("--quick")
    if args.robustness:
        out += ["--robustness", "--robustness-baseline", args.robustness_baseline]
    return out + ["--input-norm", args.input_norm, "--accelerator", args.accelerator]


def _fusions(args: argparse.Namespace) -> int:
    import json

    import torch

    from . import micro

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = micro.Sizes(batch=args.batch, dim=args.dim, regions=args.regions, words=args.words,
                        modalities=args.modalities)
    rows = micro.bench_fusions(args.fusions, sizes=sizes, preset=args.preset, device=args.device, repeat=args.repeat,
                               memory=args.memory, compile=args.compile,
                               log=lambda line: print(line, file=sys.stderr, flush=True))
    where = micro.machine()
    if torch.device(args.device).type == "cuda":
        where += f"; {torch.cuda.get_device_name(torch.device(args.device))}"
    header = [
        f"command: `{_fusions_command(args)}`",
        f"machine: {where}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"sizes: batch {args.batch}, D {args.dim}, K {args.regions}, T {args.words}, M {args.modalities}; "
        f"{args.preset} knobs; device {args.device}, float32; median of {args.repeat}",
    ]
    print("\n".join(f"- {h}" for h in header) + "\n")
    print(micro.render(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": [r.__dict__ for r in rows]}, f, indent=1)
    return 0


def _fusions_command(args: argparse.Namespace) -> str:
    """The explicit command line that reproduces this run."""
    parts = ["mmfuse", "bench", "fusions", "--fusions", args.fusions, "--batch", args.batch, "--dim", args.dim,
             "--regions", args.regions, "--words", args.words, "--modalities", args.modalities, "--preset", args.preset,
             "--repeat", args.repeat, "--device", args.device]
    parts += ["--threads", args.threads] if args.threads else []
    parts += [] if args.memory else ["--no-memory"]
    parts += [] if args.compile else ["--no-compile"]
    return " ".join(shlex.quote(str(p)) for p in parts)


def _merge(args: argparse.Namespace) -> int:
    from .leaderboard import merge_results

    n = merge_results(args.out, args.sources)
    print(f"{args.out}/results.json: {n['entries']} entries, {n['skipped']} skipped pairs from {n['sources']} "
          f"sources; rerun the parts' leaderboard command with --out {args.out} for the tables and plots")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """Run ``mmfuse bench <leaderboard|fusions|merge>`` from parsed arguments."""
    return {"leaderboard": _leaderboard, "fusions": _fusions, "merge": _merge}[args.bench_command](args)

"""The ``mmfuse`` command.

    mmfuse list [PATTERN] [--kind vector|attention]    every registered fusion, as a table
    mmfuse info NAME                                   one fusion: kind, modalities, paper, flags, doc
    mmfuse data make NAME [--out DIR] [--seed N] [--OPTION VALUE ...]   build a generated dataset
    mmfuse data info PATH                              counts per split and per question type / class
    mmfuse train CONFIG [--run-dir DIR] [--key.sub VALUE ...]          train a model from a YAML config
    mmfuse eval CKPT [--split test] [--key VALUE ...]                 evaluate a saved model (data overrides)
    mmfuse predict CKPT --image IMG --question TEXT [--attention out.png]
    mmfuse run [--pixels] [--out DIR] [--epochs N] [--only a,b]        the main job: the leaderboard
    mmfuse bench leaderboard [--tasks ...] [--fusions PATTERN] [--seeds N] [--quick] [--robustness]
    mmfuse bench fusions [--fusions PATTERN] [--batch B] [--device cuda]  the fusion micro-benchmark
    mmfuse search [CONFIG] [--out DIR] [--section.key VALUE ...]       fusion architecture search (MFAS)
    mmfuse viz CKPT [--out DIR] [--n N] [--split test]                 attention maps on a few questions (PNGs)
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence

from . import __version__, fusion_info, list_fusions


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts: an int >= 1, else a message naming what came."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable as plain text too)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_fusions(args.pattern, kind=args.kind)
    if not names:
        print(f"no fusion matches {args.pattern!r}" + (f" of kind {args.kind}" if args.kind else ""))
        return 1
    rows = []
    for n in names:
        info = fusion_info(n)
        rows.append((n, info.kind, info.family, info.modalities, info.paper))
    print(_table(("name", "kind", "family", "modalities", "paper"), rows))
    print(f"\n{len(names)} fusion{'s' if len(names) != 1 else ''}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = fusion_info(args.name)
    flags = ", ".join(f"{k}={getattr(info, k)}" for k in ("compile", "export", "order_free"))
    print(f"{info.name}  ({info.kind}, modalities {info.modalities})")
    print(f"paper: {info.paper}")
    print(f"class: {info.cls.__module__}.{info.cls.__qualname__}{inspect.signature(info.cls)}")
    print(f"flags: {flags}")
    doc = inspect.getdoc(info.cls)
    if doc:
        print("\n" + doc)
    return 0


def _options(extra: Sequence[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` pairs left over by argparse, dashes as underscores."""
    return {k.replace("-", "_"): v for k, v in _options_raw(extra).items()}


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import commands  # numpy-based; imported only for this command

    if args.action == "info":
        print(commands.info(args.target))
        return 0
    if args.list_options:
        for key, value in commands.dataset_options(args.target).items():
            print(f"--{key.replace('_', '-')} (default {value!r})")
        return 0
    path = commands.make_dataset(args.target, out=args.out, seed=args.seed, **_options(args.extra))
    print(f"dataset: {path}\n")
    print(commands.info(path))
    return 0


def _dotted(extra: Sequence[str]) -> list[str]:
    """``--a.b value`` pairs as ``["a.b=value"]`` overrides."""
    return [f"{k}={v}" for k, v in _options_raw(extra).items()]


def _options_raw(extra: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    items = list(extra)
    while items:
        key = items.pop(0)
        if not key.startswith("--") or key == "--":
            raise ValueError(f"expected --KEY VALUE pairs, got {key!r}")
        key = key[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif items and not items[0].startswith("--"):
            value = items.pop(0)
        else:
            value = "true"
        out[key] = value
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    result = train(args.config, run_dir=args.run_dir, overrides=_dotted(args.extra))
    print(f"\nmodel: {result.checkpoint}")
    print(_metrics_table(result.metrics))
    print(f"\n{result.seconds:.1f} s, {result.samples_per_s:.0f} samples/s, {result.params:,} parameters")
    return 0


def _metrics_table(metrics: dict) -> str:
    rows = [(k, f"{v:.4f}") for k, v in sorted(metrics.items()) if k.startswith("test/")]
    return _table(("metric", "value"), rows or [(k, f"{v:.4f}") for k, v in sorted(metrics.items())])


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate

    overrides = [f"{k.removeprefix('data.')}={v}" for k, v in _options_raw(args.extra).items()]
    metrics = evaluate(args.checkpoint, overrides or None, split=args.split)
    print(_metrics_table(metrics))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    result = predict(args.checkpoint, args.image, args.question, attention_path=args.attention, top=args.top)
    print(f"Q: {args.question}")
    for i, (answer, p) in enumerate(result["top"]):
        print(f"{'A' if i == 0 else ' '}: {answer:<8} {100 * p:5.1f}%")
    if args.attention:
        print(f"attention: {args.attention}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .bench.run import DEFAULT_ENTRIES, resolve_entries, run_leaderboard

    entries = DEFAULT_ENTRIES
    if args.only:
        entries = resolve_entries([n.strip() for n in args.only.split(",") if n.strip()])
    rows, run_dir = run_leaderboard(
        args.out, entries=entries, pixels=args.pixels, seed=args.seed, epochs=args.epochs,
        n_train=args.n_train, overrides=_dotted(args.extra),
    )
    from .bench.run import format_table

    print("\n" + format_table(rows))
    print(f"\nresults: {run_dir}/leaderboard.md, leaderboard.csv, leaderboard.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfuse", description="Multimodal fusion methods under one interface.")
    parser.add_argument("--version", action="version", version=f"mmfuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the registered fusions")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'mf*'")
    p.add_argument("--kind", choices=("vector", "attention"), help="only this kind")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="show one fusion: paper, flags, signature, docstring")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "data",
        help="build or describe a dataset",
        description="make NAME: build a generated dataset (sort-of-clevr, interactions) in the cache "
        "or --out; extra --OPTION VALUE pairs go to its generator (--list-options shows them). "
        "info PATH: counts per split and per question type or class.",
    )
    p.add_argument("action", choices=("make", "info"))
    p.add_argument("target", help="dataset name (make) or folder (info)")
    p.add_argument("--out", default=None, help="folder to write (default: the user cache, keyed by version and seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list-options", action="store_true", help="print the generator's options and defaults")
    p.set_defaults(func=_cmd_data, extra=[])

    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Extra --key.sub VALUE pairs override the config (e.g. --model.fusion.name mfh).")
    p.add_argument("config", help="YAML/JSON config, e.g. configs/soc_mcan.yaml")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<name>-<config hash>); resumes if it has last.ckpt")
    p.set_defaults(func=_cmd_train, extra=[])

    p = sub.add_parser("eval", help="evaluate a saved model",
                       description="Extra --KEY VALUE pairs override the data config (e.g. --path DIR).")
    p.add_argument("checkpoint", help="a model folder (model.safetensors + config.json) or its run folder")
    p.add_argument("--split", default="test")
    p.set_defaults(func=_cmd_eval, extra=[])

    p = sub.add_parser("predict", help="answer a question about an image with a saved model")
    p.add_argument("checkpoint")
    p.add_argument("--image", required=True, help="image file (Sort-of-CLEVR: a 75x75 PNG)")
    p.add_argument("--question", required=True)
    p.add_argument("--attention", default=None, help="save the attention over the image and the words here (PNG)")
    p.add_argument("--top", type=int, default=3, help="answers to print")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("run", help="the main job: train one model per fusion family, print the leaderboard",
                       description="Builds the default Sort-of-CLEVR (cached), trains a concat baseline and one "
                       "model per fusion family with the same encoders and budget, and writes the leaderboard "
                       "(CSV, Markdown, PNG) to a run folder. Extra --key.sub VALUE pairs override every entry's config.")
    p.add_argument("--pixels", action="store_true", help="from raw pixels through the CNN encoder (long; GPU-sized)")
    p.add_argument("--out", default=None, help="run folder (default runs/run-<time>); rerunning it skips finished entries")
    p.add_argument("--epochs", type=int, default=None, help="epochs per entry (default: the preset's)")
    p.add_argument("--n-train", type=int, default=None, help="training images (default 9800)")
    p.add_argument("--seed", type=int, default=0, help="sets the scenes and the initialisation (default 0)")
    p.add_argument("--only", default=None, help="comma-separated entries to train: the run's entries, "
                   "san, soft_attention, mcan, or any registered fusion (with its leaderboard preset)")
    p.set_defaults(func=_cmd_run, extra=[])

    from .bench.cli import add_bench_parser

    add_bench_parser(sub)

    from .search.cli import add_search_parser

    add_search_parser(sub)

    from .viz.cli import add_viz_parser

    add_viz_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes_extra = args.command in ("train", "eval", "run", "search") or (args.command == "data" and args.action == "make")
        if not takes_extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
    try:
        return args.func(args)
    except ValueError as err:
        print(f"mmfuse: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

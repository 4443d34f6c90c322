"""The ``mmfuse`` command.

    mmfuse list [PATTERN] [--kind vector|attention]    every registered fusion, as a table
    mmfuse info NAME                                   one fusion: kind, modalities, paper, flags, doc
    mmfuse data make NAME [--out DIR] [--seed N] [--OPTION VALUE ...]   build a generated dataset
    mmfuse data info PATH                              counts per split and per question type / class
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence

from . import __version__, fusion_info, list_fusions


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
    """``--key value`` / ``--key=value`` pairs left over by argparse, as a dict of strings."""
    out: dict[str, str] = {}
    items = list(extra)
    while items:
        key = items.pop(0)
        if not key.startswith("--") or key == "--":
            raise ValueError(f"expected --OPTION VALUE pairs, got {key!r}")
        key = key[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif items and not items[0].startswith("--"):
            value = items.pop(0)
        else:
            value = "true"
        out[key.replace("-", "_")] = value
    return out


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "data" or args.action != "make":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
    try:
        return args.func(args)
    except ValueError as err:
        print(f"mmfuse: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``mmfuse`` command.

    mmfuse list [PATTERN] [--kind vector|attention]    every registered fusion, as a table
    mmfuse info NAME                                   one fusion: kind, modalities, paper, flags, doc
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
        rows.append((n, info.kind, info.modalities, info.paper))
    print(_table(("name", "kind", "modalities", "paper"), rows))
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"mmfuse: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

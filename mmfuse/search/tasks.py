"""The tasks and the config-driven run behind ``mmfuse search``.

A search config (YAML, see ``configs/search_*.yaml``) has five sections::

    name: search_interactions
    seed: 0
    task:      {name: interactions, dims: [16, 16, 16], order: 2, ..., val_fraction: 0.2}
    backbones: {hidden_dims: [64, 32, 16, 4], epochs: 8, ...}     # pre-trained per modality, frozen
    search:    {max_layers: 3, configs_per_step: 12, iterations: 3, epochs: 3, budget_minutes: 15, ...}
    final:     {epochs: 20, top: 5}

:func:`run_search` prepares the data (generated into the cache), trains or reloads the
backbones, caches their features, runs :func:`mmfuse.search.mfas.search` with a log in the run
folder (a rerun resumes it), prints the best configurations and trains the best one to the end.

Tasks:
- ``interactions`` (:mod:`mmfuse.data.interactions`): M = 2 or 3 vector modalities, an MLP
  backbone each. The training split is cut into search-train and validation (``val_fraction``).
- ``sort_of_clevr`` (:mod:`mmfuse.data.sort_of_clevr`): the image (a CNN backbone, features
  computed once per image) and the question (an MLP on ``question_bits`` or a GRU on the tokens).
  Validation images are the last ``val_fraction`` of the training images.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import ConfigError
from ..models.config import (
    Field,
    check_section,
    choice,
    int_list,
    mapping,
    non_negative_int,
    optional,
    positive_int,
    string_list,
)
from .backbones import Backbone, CNNBackbone, GRUBackbone, MLPBackbone, accuracy, extract_features, freeze, pretrain_backbone
from .mfas import (
    FusionNet,
    SearchLog,
    SearchResult,
    SearchSettings,
    config_seed,
    evaluate_accuracy,
    search,
    train_fusion,
)
from .space import ACTIVATIONS, COMBINES, Configuration, SearchSpace

__all__ = [
    "DEFAULT_CONFIG",
    "TaskData",
    "Prepared",
    "normalize_search_config",
    "load_search_config",
    "prepare",
    "make_evaluator",
    "train_final",
    "run_search",
    "format_ranking",
]

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- config


def _float(low: float | None = None, high: float | None = None, *, strict_low: bool = False):
    def check(key: str, value: Any) -> float:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and np.isfinite(value)
        if ok and low is not None:
            ok = value > low if strict_low else value >= low
        if ok and high is not None:
            ok = value < high
        if not ok:
            bounds = f"{'>' if strict_low else '>='} {low}" if low is not None else ""
            bounds += f"{' and ' if bounds and high is not None else ''}{f'< {high}' if high is not None else ''}"
            raise ConfigError(key, f"expected a number {bounds}, got {value!r}")
        return float(value)

    return check


_INTERACTIONS = {
    "name": Field(choice("interactions", "sort_of_clevr")),
    "seed": Field(non_negative_int, 0),
    "n_train": Field(positive_int, 10000),
    "n_test": Field(positive_int, 2000),
    "dims": Field(int_list, [16, 16, 16]),
    "order": Field(positive_int, 2),
    "n_classes": Field(positive_int, 2),
    "rank": Field(positive_int, 1),
    "label_noise": Field(_float(0.0, 1.0), 0.0),
    "lower_order_weight": Field(_float(0.0), 0.0),
    "val_fraction": Field(_float(0.0, 1.0, strict_low=True), 0.2),
}
_SORT_OF_CLEVR = {
    "name": Field(choice("interactions", "sort_of_clevr")),
    "seed": Field(non_negative_int, 0),
    "n_train": Field(positive_int, 2000),
    "n_test": Field(positive_int, 200),
    "question": Field(choice("bits", "tokens"), "bits"),
    "val_fraction": Field(_float(0.0, 1.0, strict_low=True), 0.1),
}
_BACKBONES = {
    "hidden_dims": Field(int_list, [64, 32, 16, 4]),  # MLP backbones (vectors, question bits)
    "cnn_channels": Field(int_list, [16, 32, 32, 32]),  # the image backbone
    "gru_embed_dim": Field(positive_int, 32),
    "gru_hidden_dims": Field(int_list, [32, 32]),
    "epochs": Field(positive_int, 8),
    "lr": Field(_float(0.0, strict_low=True), 3e-3),
    "batch_size": Field(positive_int, 128),
}
_SEARCH = {
    "max_layers": Field(positive_int, 3),
    "activations": Field(string_list, ["relu", "sigmoid", "leaky_relu"]),
    "combines": Field(string_list, list(COMBINES)),
    "configs_per_step": Field(positive_int, 16),
    "iterations": Field(positive_int, 3),
    "expand_top": Field(optional(positive_int), None),
    "temperature_start": Field(_float(0.0, strict_low=True), 2.0),
    "temperature_end": Field(_float(0.0, strict_low=True), 0.2),
    "budget_configs": Field(optional(positive_int), None),
    "budget_minutes": Field(optional(_float(0.0, strict_low=True)), 15.0),
    "epochs": Field(positive_int, 8),
    "hidden_dim": Field(positive_int, 32),
    "lr": Field(_float(0.0, strict_low=True), 3e-3),
    "batch_size": Field(positive_int, 128),
    "surrogate_epochs": Field(positive_int, 300),
    "surrogate_lr": Field(_float(0.0, strict_low=True), 1e-2),
    "surrogate_embed_dim": Field(positive_int, 16),
    "surrogate_hidden_dim": Field(positive_int, 32),
}
_FINAL = {"epochs": Field(positive_int, 20), "top": Field(positive_int, 5)}
_TOP = ("name", "seed", "task", "backbones", "search", "final")

DEFAULT_CONFIG: dict[str, Any] = {
    "name": "search_interactions",
    "seed": 0,
    "task": {"name": "interactions", "dims": [8, 8, 8], "order": 2, "rank": 1, "lower_order_weight": 0.6},
    "backbones": {},
    "search": {},
    "final": {},
}
"""The default search (what ``configs/search_interactions.yaml`` spells out in full)."""


def config_keys() -> list[str]:
    """Every dotted key a search config may set (``task.order``, ``search.epochs``, ...)."""
    sections = {"task": {**_INTERACTIONS, **_SORT_OF_CLEVR}, "backbones": _BACKBONES, "search": _SEARCH, "final": _FINAL}
    return ["name", "seed", *(f"{sec}.{k}" for sec, fields in sections.items() for k in fields)]


def normalize_search_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a search config and fill every default; a bad key raises :class:`ConfigError` naming it."""
    cfg = mapping("config", config)
    for k in cfg:
        if k not in _TOP:
            raise ConfigError(k, f"unknown key; expected one of {', '.join(_TOP)}")
    task_raw = mapping("task", cfg.get("task") or {"name": "interactions"})
    name = task_raw.get("name", "interactions")
    task = check_section("task", {"name": name, **task_raw}, _INTERACTIONS if name == "interactions" else _SORT_OF_CLEVR)
    if task["name"] == "interactions":
        if len(task["dims"]) not in (2, 3):
            raise ConfigError("task.dims", f"expected 2 or 3 modality dims, got {task['dims']}")
        if task["order"] > len(task["dims"]):
            raise ConfigError("task.order", f"expected at most {len(task['dims'])} (the number of modalities), got {task['order']}")
        if task["n_classes"] < 2:
            raise ConfigError("task.n_classes", f"expected >= 2, got {task['n_classes']}")
    out = {
        "name": str(cfg.get("name", f"search_{task['name']}")),
        "seed": non_negative_int("seed", cfg.get("seed", 0)),
        "task": task,
        "backbones": check_section("backbones", cfg.get("backbones") or {}, _BACKBONES),
        "search": check_section("search", cfg.get("search") or {}, _SEARCH),
        "final": check_section("final", cfg.get("final") or {}, _FINAL),
    }
    for key in ("hidden_dims", "cnn_channels", "gru_hidden_dims"):
        if not out["backbones"][key]:
            raise ConfigError(f"backbones.{key}", "expected at least one layer")
    s = out["search"]
    for key, known in (("activations", ACTIVATIONS), ("combines", COMBINES)):
        bad = [v for v in s[key] if v not in known]
        if bad or len(set(s[key])) != len(s[key]):
            raise ConfigError(f"search.{key}", f"expected distinct names from {', '.join(known)}, got {s[key]}")
    return out


def load_search_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML / JSON search config (``None``: :data:`DEFAULT_CONFIG`), apply ``key.sub=value``
    overrides and normalise it."""
    from ..train.config import _read_file, parse_value

    cfg = copy.deepcopy(DEFAULT_CONFIG) if path is None else _read_file(Path(path))
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config: {path}: expected a mapping at the top level")
    cfg = copy.deepcopy(dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: expected an override 'section.key=value'")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in _TOP or any(not p for p in parts):
            raise ConfigError(key, f"unknown config key; expected one of {', '.join(_TOP)} (dotted, e.g. search.epochs)")
        node = cfg
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = parse_value(text.strip())
    return normalize_search_config(cfg)


def fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a configuration's score depends on (a log from another fingerprint is not reused).

    The sampling knobs (K, E, temperatures, budgets, the surrogate) and ``final`` are left out:
    changing them keeps every logged score valid.
    """
    s = config["search"]
    keep = ("max_layers", "activations", "combines", "epochs", "hidden_dim", "lr", "batch_size")
    return {
        "seed": config["seed"],
        "task": config["task"],
        "backbones": config["backbones"],
        "search": {k: s[k] for k in keep},
    }


def config_hash(config: Mapping[str, Any], length: int = 8) -> str:
    text = json.dumps(fingerprint(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def search_settings(config: Mapping[str, Any]) -> SearchSettings:
    s = config["search"]
    return SearchSettings(
        configs_per_step=s["configs_per_step"],
        iterations=s["iterations"],
        expand_top=s["expand_top"],
        temperature_start=s["temperature_start"],
        temperature_end=s["temperature_end"],
        budget_configs=s["budget_configs"],
        budget_minutes=s["budget_minutes"],
        surrogate_epochs=s["surrogate_epochs"],
        surrogate_lr=s["surrogate_lr"],
        surrogate_embed_dim=s["surrogate_embed_dim"],
        surrogate_hidden_dim=s["surrogate_hidden_dim"],
        seed=config["seed"],
    )


# --------------------------------------------------------------------------- data


@dataclass
class TaskData:
    """Inputs of every modality and the labels, per split.

    Attributes:
        modalities: names, in fusion order.
        tables: per modality, the input rows ``Tensor[N_items, ...]`` (Sort-of-CLEVR images are
            stored once per image, uint8).
        index: ``index[split][m]``: ``Tensor[N_split]`` rows of ``tables[m]`` for each sample.
        labels: ``labels[split]``: int64 ``Tensor[N_split]``.
        n_classes: C.
    """

    modalities: list[str]
    tables: list[torch.Tensor]
    index: dict[str, list[torch.Tensor]]
    labels: dict[str, torch.Tensor]
    n_classes: int


def _interactions(task: Mapping[str, Any]) -> TaskData:
    from ..data.interactions import load_interactions, make_interactions

    opts = {k: task[k] for k in ("n_train", "n_test", "dims", "order", "n_classes", "rank", "label_noise", "lower_order_weight")}
    data = load_interactions(make_interactions(seed=task["seed"], **opts))
    mods = data.modalities
    n_tr = data.splits["train"]["label"].shape[0]
    n_val = max(1, int(round(task["val_fraction"] * n_tr)))
    tables = [torch.from_numpy(np.concatenate([data.splits["train"][m], data.splits["test"][m]])) for m in mods]
    rows = {"train": torch.arange(n_tr - n_val), "val": torch.arange(n_tr - n_val, n_tr)}
    rows["test"] = torch.arange(n_tr, n_tr + data.splits["test"]["label"].shape[0])
    all_labels = torch.from_numpy(np.concatenate([data.splits["train"]["label"], data.splits["test"]["label"]]))
    return TaskData(
        modalities=list(mods),
        tables=tables,
        index={s: [r] * len(mods) for s, r in rows.items()},
        labels={s: all_labels[r] for s, r in rows.items()},
        n_classes=task["n_classes"],
    )


def _sort_of_clevr(task: Mapping[str, Any]) -> TaskData:
    from ..data.sort_of_clevr import ANSWER_VOCAB, load_sort_of_clevr, make_sort_of_clevr

    data = load_sort_of_clevr(make_sort_of_clevr(seed=task["seed"], n_train=task["n_train"], n_test=task["n_test"]))
    tr, te = data.splits["train"], data.splits["test"]
    images = torch.from_numpy(np.concatenate([tr["images"], te["images"]])).permute(0, 3, 1, 2).contiguous()  # (N, 3, 75, 75) uint8
    q_key = "question_bits" if task["question"] == "bits" else "question_tokens"
    q_tr, q_te = tr[q_key], te[q_key]  # (N, Q, ...)
    n_img_tr, q_per = q_tr.shape[:2]
    questions = torch.from_numpy(np.concatenate([q_tr.reshape(-1, *q_tr.shape[2:]), q_te.reshape(-1, *q_te.shape[2:])]))
    questions = questions.float() if task["question"] == "bits" else questions.long()
    answers = torch.from_numpy(np.concatenate([tr["answer"].reshape(-1), te["answer"].reshape(-1)]).astype(np.int64))
    n_val_img = max(1, int(round(task["val_fraction"] * n_img_tr)))
    img_of = torch.arange(images.shape[0]).repeat_interleave(q_per)  # (N_questions,) image of each question
    q_rows = torch.arange(questions.shape[0])
    cut, end = (n_img_tr - n_val_img) * q_per, n_img_tr * q_per
    parts = {"train": slice(0, cut), "val": slice(cut, end), "test": slice(end, None)}
    return TaskData(
        modalities=["image", "question"],
        tables=[images, questions],
        index={s: [img_of[p], q_rows[p]] for s, p in parts.items()},
        labels={s: answers[p] for s, p in parts.items()},
        n_classes=len(ANSWER_VOCAB),
    )


def load_task(task: Mapping[str, Any]) -> TaskData:
    """Generate (cached) and load the task of a normalised ``task`` section."""
    return _interactions(task) if task["name"] == "interactions" else _sort_of_clevr(task)


def build_backbones(config: Mapping[str, Any], data: TaskData) -> list[Backbone]:
    """One backbone per modality, each initialised from ``torch.manual_seed(seed * 1000 + m)``."""
    b, task = config["backbones"], config["task"]
    out: list[Backbone] = []
    for m, (name, table) in enumerate(zip(data.modalities, data.tables)):
        torch.manual_seed(config["seed"] * 1000 + m)
        if name == "image":
            out.append(CNNBackbone(table.shape[1], b["cnn_channels"], data.n_classes))
        elif name == "question" and task.get("question") == "tokens":
            out.append(GRUBackbone(int(table.max()) + 1, b["gru_embed_dim"], b["gru_hidden_dims"], data.n_classes))
        else:
            out.append(MLPBackbone(table.shape[1], b["hidden_dims"], data.n_classes))
    return out


# --------------------------------------------------------------------------- preparation


@dataclass
class Prepared:
    """Everything a search needs: the data, the frozen backbones and their cached features.

    ``features[split][m][i]``: ``Tensor[N_split, D_{m,i}]`` (layer i of backbone m);
    ``unimodal``: each backbone's own validation accuracy.
    """

    config: dict[str, Any]
    data: TaskData
    backbones: list[Backbone]
    features: dict[str, list[list[torch.Tensor]]]
    unimodal: dict[str, float]
    space: SearchSpace

    @property
    def feature_dims(self) -> list[list[int]]:
        return [list(b.feature_dims) for b in self.backbones]


def _save_state(path: Path, module: torch.nn.Module) -> None:
    from safetensors.torch import save

    from ..data._io import atomic_write_bytes

    atomic_write_bytes(path, save({k: v.contiguous() for k, v in module.state_dict().items()}))


def _load_state(path: Path, module: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))


def _row_targets(index: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training rows and targets for one modality's backbone.

    When several samples share a table row (the questions of one image), the unimodal network
    sees the same input for all of them, so the sum of their cross-entropies equals that row's
    cross-entropy against its answer histogram (times their number): train once per row on the
    normalised histogram (soft targets). Otherwise: the samples and their labels.
    """
    rows, inverse = torch.unique(index, return_inverse=True)
    if len(rows) == len(index):
        return index, labels
    hist = torch.zeros(len(rows), n_classes)
    hist.index_put_((inverse, labels), torch.ones(len(labels)), accumulate=True)
    return rows, hist / hist.sum(1, keepdim=True)


def prepare(config: Mapping[str, Any], run_dir: str | Path | None = None, log: Callable[[str], None] = print) -> Prepared:
    """Load the task, pre-train (or reload from ``run_dir/backbones``) the backbones, cache features."""
    config = normalize_search_config(config)
    data = load_task(config["task"])
    backbones = build_backbones(config, data)
    b = config["backbones"]
    unimodal = {}
    for m, (name, bb, table) in enumerate(zip(data.modalities, backbones, data.tables)):
        path = Path(run_dir) / "backbones" / f"{name}.safetensors" if run_dir is not None else None
        t0 = time.perf_counter()
        if path is not None and path.is_file():
            _load_state(path, bb)
            freeze(bb)
            how = "loaded"
        else:
            rows, targets = _row_targets(data.index["train"][m], data.labels["train"], data.n_classes)
            pretrain_backbone(
                bb, table, targets, index=rows, epochs=b["epochs"], lr=b["lr"],
                batch_size=b["batch_size"], seed=config["seed"] * 1000 + m,
            )
            if path is not None:
                _save_state(path, bb)
            how = "trained"
        val_rows = data.index["val"][m]
        unimodal[name] = accuracy(bb, table[val_rows], data.labels["val"])
        log(f"backbone {name}: {type(bb).__name__} {list(bb.feature_dims)}, {how} in {time.perf_counter() - t0:.1f} s, "
            f"unimodal val accuracy {unimodal[name]:.4f}")
    features: dict[str, list[list[torch.Tensor]]] = {s: [] for s in SPLITS}
    for m, (bb, table) in enumerate(zip(backbones, data.tables)):
        per_item = extract_features(bb, table)  # list over layers of (N_items, D)
        for s in SPLITS:
            features[s].append([f[data.index[s][m]] for f in per_item])
    s = config["search"]
    space = SearchSpace([len(bb.feature_dims) for bb in backbones], s["activations"], s["combines"], s["max_layers"])
    return Prepared(config, data, backbones, features, unimodal, space)


def make_evaluator(prep: Prepared, epochs: int | None = None) -> Callable[[Configuration], dict[str, Any]]:
    """``config -> {"score": validation accuracy, "params": n}`` after brief training (``search.epochs``)."""
    s = prep.config["search"]
    ep = s["epochs"] if epochs is None else epochs

    def evaluate(config: Configuration) -> dict[str, Any]:
        seed = config_seed(prep.space.key(config), prep.config["seed"])
        torch.manual_seed(seed)
        model = FusionNet(prep.space, config, prep.feature_dims, s["hidden_dim"], prep.data.n_classes)
        train_fusion(model, prep.features["train"], prep.data.labels["train"], epochs=ep, lr=s["lr"], batch_size=s["batch_size"], seed=seed)
        score = evaluate_accuracy(model, prep.features["val"], prep.data.labels["val"])
        return {"score": round(score, 6), "params": sum(p.numel() for p in model.parameters())}

    return evaluate


def train_final(prep: Prepared, config: Configuration, epochs: int | None = None) -> tuple[FusionNet, dict[str, float]]:
    """Train ``config`` to the end (``final.epochs``) on search-train; accuracies on val and test."""
    s = prep.config["search"]
    ep = prep.config["final"]["epochs"] if epochs is None else epochs
    seed = config_seed(prep.space.key(config), prep.config["seed"] + 1)
    torch.manual_seed(seed)
    model = FusionNet(prep.space, config, prep.feature_dims, s["hidden_dim"], prep.data.n_classes)
    train_fusion(model, prep.features["train"], prep.data.labels["train"], epochs=ep, lr=s["lr"], batch_size=s["batch_size"], seed=seed)
    metrics = {split: evaluate_accuracy(model, prep.features[split], prep.data.labels[split]) for split in ("val", "test")}
    return model, metrics


# --------------------------------------------------------------------------- the run


def format_ranking(result: SearchResult, space: SearchSpace, top: int, modalities: Sequence[str] | None = None) -> str:
    """A Markdown table of the ``top`` best configurations."""
    names = "-".join(modalities) if modalities else "-".join(f"m{i}" for i in range(space.num_modalities))
    rows = [f"| rank | val acc | L | configuration (per layer: feature layers {names}, activation, combine) |", "|---|---|---|---|"]
    for r, ev in enumerate(result.ranked()[:top], 1):
        rows.append(f"| {r} | {ev.score:.4f} | {len(ev.config)} | `{space.key(ev.config)}` |")
    return "\n".join(rows)


def run_search(config: Mapping[str, Any], run_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole ``mmfuse search``: prepare, search (resumable), rank, train the best to the end.

    Writes to ``run_dir``: ``config.json``, ``backbones/*.safetensors``, ``search.jsonl`` (the
    log), ``best/model.safetensors`` + ``best/config.json`` and ``summary.json``.

    Returns:
        The summary dict (also in ``summary.json``).
    """
    from ..data._io import save_json

    config = normalize_search_config(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(run_dir / "config.json", config)
    t0 = time.perf_counter()
    prep = prepare(config, run_dir, log)
    space = prep.space
    log(f"search space: {space.layer_size} layers, {space.size():,} configurations up to L = {space.max_layers}")
    slog = SearchLog(run_dir / "search.jsonl", fingerprint(config))
    if len(slog):
        log(f"resuming: {len(slog)} configurations already in {run_dir / 'search.jsonl'}")
    settings = search_settings(config)

    def progress(ev, n):
        if not ev.cached:
            log(f"[{n:3d}] {ev.score:.4f}  {space.key(ev.config)}  ({ev.seconds:.1f} s)")

    t_search = time.perf_counter()
    result = search(space, make_evaluator(prep), settings, slog, progress)
    search_s = time.perf_counter() - t_search
    top = config["final"]["top"]
    log(f"\nsearch: {len(result.evaluations)} configurations ({result.trained} trained now, "
        f"{len(result.evaluations) - result.trained} from the log), stopped: {result.stopped_by}, {search_s:.0f} s")
    log(f"\nbest configurations (validation accuracy after {config['search']['epochs']} epochs):\n")
    log(format_ranking(result, space, top, prep.data.modalities))
    best = result.best
    model, metrics = train_final(prep, best.config)
    _save_state(run_dir / "best" / "model.safetensors", model)
    best_info = {
        "key": best.key,
        "config": space.to_json(best.config),
        "feature_dims": prep.feature_dims,
        "hidden_dim": config["search"]["hidden_dim"],
        "num_classes": prep.data.n_classes,
        "modalities": prep.data.modalities,
    }
    save_json(run_dir / "best" / "config.json", best_info)
    log(f"\nbest configuration trained to the end ({config['final']['epochs']} epochs): "
        f"val accuracy {metrics['val']:.4f}, test accuracy {metrics['test']:.4f}")
    summary = {
        "name": config["name"],
        "run_dir": str(run_dir),
        "unimodal_val_accuracy": prep.unimodal,
        "evaluated": len(result.evaluations),
        "trained_now": result.trained,
        "stopped_by": result.stopped_by,
        "top": [{"key": e.key, "val_accuracy": e.score} for e in result.ranked()[:top]],
        "best": {**best_info, "search_val_accuracy": best.score, "final_val_accuracy": metrics["val"], "final_test_accuracy": metrics["test"]},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    save_json(run_dir / "summary.json", summary)
    log(f"\nresults: {run_dir}/summary.json, search.jsonl; total {summary['seconds']:.0f} s")
    return summary

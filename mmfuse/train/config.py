"""Run configs: loading (YAML / JSON / dict), defaults, dotted overrides and validation.

A run config has three sections plus an optional name::

    name: mlb-sort-of-clevr          # optional, used for run folder names and tables
    model: {...}                     # passed through to mmfuse.models.build_model (validated there)
    data:  {name: sort-of-clevr, path: null, batch_size: 64, ...}
    train: {max_epochs: 10, lr: 1e-3, schedule: cosine, ...}

:func:`load_config` fills the defaults of ``data`` (common keys + the named dataset's options,
:data:`DATASET_OPTIONS`) and ``train`` (:data:`TRAIN_DEFAULTS`) and checks every value; a bad
one raises :class:`ConfigError` naming the dotted key, e.g. ``data.path: /x does not exist`` or
``train.lr: expected a number > 0, got -1``. Model keys are not checked here.

:func:`apply_overrides` takes command-line style ``"a.b=c"`` strings; values are YAML scalars
(``3e-4`` and ``1e3`` count as numbers, ``[16, 16]`` as a list, ``null`` as None).

This module imports neither torch nor lightning; PyYAML is imported when YAML is parsed.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "DATASET_OPTIONS",
    "DATA_DEFAULTS",
    "EARLY_STOPPING_DEFAULTS",
    "TRAIN_DEFAULTS",
    "apply_overrides",
    "canonical_dataset",
    "load_config",
    "parse_value",
    "validate_config",
]


from .._errors import ConfigError  # noqa: E402  (one class for the model and training sides)


SECTIONS = ("name", "model", "data", "train")

DATA_DEFAULTS: dict[str, Any] = {
    "name": None,            # one of DATASET_OPTIONS
    "path": None,            # folder / file of the data; null = generate (generated datasets only)
    "seed": 0,               # generator seed and the seed of the validation carve-out
    "batch_size": 64,        # per device (the global batch is batch_size x devices x nodes)
    "eval_batch_size": None,  # null = batch_size
    "num_workers": 0,
    "val_fraction": 0.1,     # validation split carved from train where the data has none
    "drop_last": True,       # drop the last incomplete training batch
    "pin_memory": False,
}

_AFFECT = {"trim": "none", "labels": "regression", "modalities": ["vision", "audio", "text"], "nonfinite": "zero"}

DATASET_OPTIONS: dict[str, dict[str, Any]] = {
    "sort-of-clevr": {
        "n_train": 9800, "n_test": 200, "n_nonrel": 10, "n_rel": 10,
        "n_distractors": 0, "region_noise": 0.0,
        "representation": "all",   # regions | pixels | all: which image inputs batches carry
        "question": "all",         # bits | tokens | all: which question encodings batches carry
        "group_by_image": "auto",  # training batches of whole images (every question of each);
                                   # auto = when batches carry pixels, so a CNN runs once per image
    },
    "interactions": {
        "n_train": 10000, "n_test": 2000, "dims": [16, 16], "order": 2, "n_classes": 2,
        "rank": 1, "label_noise": 0.0, "lower_order_weight": 0.0,
    },
    "vqa2": {
        "train_questions": "v2_OpenEnded_mscoco_train2014_questions.json",
        "train_annotations": "v2_mscoco_train2014_annotations.json",
        "test_questions": "v2_OpenEnded_mscoco_val2014_questions.json",   # null = test on the val carve-out
        "test_annotations": "v2_mscoco_val2014_annotations.json",
        "features": "features",   # a store (folder of .npz, .tsv, .h5) or {train: ..., test: ...}
        "id_map": None,           # .h5 stores: image id -> row (file, or {train: ..., test: ...})
        "feature_dim": 2048,
        "top_answers": 3129, "min_answer_count": None, "answer_source": "multiple_choice",
        "max_boxes": 36, "max_question_len": 14, "drop_missing_images": False,
    },
    "mosi": dict(_AFFECT),
    "mosei": dict(_AFFECT),
    "mmimdb": {"image": "vgg_features", "splits": None},
    "image-folder": {
        "table": "qa.csv",         # relative to path, or absolute
        "test_table": None,        # null = carve a test split (test_fraction) from table
        "test_fraction": 0.1,
        "image_size": 128, "max_question_len": 14, "min_answer_count": 1,
    },
}

_DATASET_ALIASES = {
    "sort_of_clevr": "sort-of-clevr", "sortofclevr": "sort-of-clevr", "vqa_v2": "vqa2", "vqa-v2": "vqa2",
    "mm-imdb": "mmimdb", "mm_imdb": "mmimdb", "image_folder": "image-folder", "imagefolder": "image-folder",
}
_GENERATED = ("sort-of-clevr", "interactions")
# data options that take a {split: value} mapping, so dotted overrides may go below them
_NESTED_DATA = ("features", "id_map", "splits")

EARLY_STOPPING_DEFAULTS: dict[str, Any] = {"monitor": "auto", "patience": 5, "mode": "auto", "min_delta": 0.0}

TRAIN_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,             # -1 / null: no epoch limit (then max_steps must be set)
    "max_steps": -1,
    "max_minutes": None,          # wall-clock budget of fit(); training stops there (lightning max_time)
    "lr": 1e-3,
    "lr_scale": {},               # {parameter-name prefix: lr multiplier}, e.g. {encoders.v: 0.5}
    "weight_decay": 0.01,         # not applied to biases and norm weights (1-d parameters)
    "optimizer": "adamw",         # adamw | adam | sgd
    "betas": [0.9, 0.999],
    "momentum": 0.9,              # sgd only
    "warmup_steps": 0,
    "schedule": "cosine",         # cosine | linear | constant, after the warm-up, per step
    "min_lr_ratio": 0.0,          # the decay ends at lr * min_lr_ratio
    "grad_clip": 1.0,             # max global grad norm; null = off
    "precision": "32",            # 32 | bf16-mixed | 16-mixed | ...
    "loss": "auto",               # auto | ce | bce | mse | l1
    "label_smoothing": 0.0,
    "aux_loss_weight": 1.0,       # weight of a fusion's per-modality auxiliary losses (CentralNet)
    "early_stopping": None,       # null = off; {monitor, patience, mode, min_delta}
    "seed": 0,                    # weights, shuffling, dropout
    "devices": 1,
    "accelerator": "auto",        # auto | cpu | gpu | cuda | mps
    "strategy": "auto",           # auto | ddp | ddp_spawn | ...
    "num_nodes": 1,
    "accumulate_grad_batches": 1,
    "checkpoint_every_n_steps": 500,  # resume checkpoint last.ckpt; null = only at epoch ends
    "log_every_n_steps": 50,
    "val_every_n_epochs": 1,
    "sanity_val_steps": 2,
    "deterministic": False,       # passed to lightning.Trainer(deterministic=)
    "progress_bar": True,
    "run_root": "runs",           # where run folders go when no run_dir is given
}

_PRECISIONS = ("32", "32-true", "64", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


# --------------------------------------------------------------------------- helpers


def canonical_dataset(name: Any) -> str:
    """``"sort_of_clevr" -> "sort-of-clevr"``; an unknown name raises naming ``data.name``."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"data.name: required, one of {sorted(DATASET_OPTIONS)}; got {name!r}")
    key = name.strip().lower()
    key = _DATASET_ALIASES.get(key, key)
    if key not in DATASET_OPTIONS:
        raise ConfigError(f"data.name: unknown dataset {name!r}{_suggest(key, DATASET_OPTIONS)}; expected one of {sorted(DATASET_OPTIONS)}")
    return key


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar: ``"3e-4" -> 0.0003``, ``"[8, 8]" -> [8, 8]``, ``"null" -> None``."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _numeric_string(value)


def _numeric_string(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` as a string; turn such strings into numbers (recursively)."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
        return int(number) if re.fullmatch(r"[+-]?\d+", value.strip()) else number
    if isinstance(value, list):
        return [_numeric_string(v) for v in value]
    if isinstance(value, dict):
        return {k: _numeric_string(v) for k, v in value.items()}
    return value


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config: {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return _numeric_string(yaml.safe_load(text))
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError
        raise ConfigError(f"config: {path} is not readable {suffix[1:].upper()} ({type(err).__name__}: {err})") from err
    raise ConfigError(f"config: {path}: expected a .yaml, .yml or .json file")


# --------------------------------------------------------------------------- overrides


def _data_keys(data: Mapping[str, Any] | None) -> set[str]:
    name = (data or {}).get("name")
    try:
        options = DATASET_OPTIONS[canonical_dataset(name)]
    except ConfigError:  # no (valid) name yet: allow any dataset's options
        options = {k: v for opts in DATASET_OPTIONS.values() for k, v in opts.items()}
    return set(DATA_DEFAULTS) | set(options)


def _check_override_key(key: str, parts: list[str], config: Mapping[str, Any]) -> None:
    top = parts[0]
    if top not in SECTIONS:
        raise ConfigError(f"{key}: unknown config section {top!r}{_suggest(top, SECTIONS)}; expected one of {list(SECTIONS)}")
    if top == "name":
        if len(parts) != 1:
            raise ConfigError(f"{key}: 'name' is a string, it has no sub-keys")
        return
    if top == "model":
        if len(parts) < 2:
            raise ConfigError(f"{key}: override a key inside model, e.g. model.fusion.name=mlb")
        return
    if len(parts) < 2:
        raise ConfigError(f"{key}: override a key inside {top}, e.g. {top}.{'batch_size' if top == 'data' else 'lr'}=...")
    sub = parts[1]
    if top == "data":
        known = _data_keys(config.get("data") if isinstance(config.get("data"), Mapping) else None)
        if sub not in known:
            raise ConfigError(f"{key}: unknown data key {sub!r}{_suggest(sub, known)}; known: {sorted(known)}")
        if len(parts) > 2 and sub not in _NESTED_DATA:
            raise ConfigError(f"{key}: data.{sub} has no sub-keys")
        return
    if sub not in TRAIN_DEFAULTS:
        raise ConfigError(f"{key}: unknown train key {sub!r}{_suggest(sub, TRAIN_DEFAULTS)}; known: {sorted(TRAIN_DEFAULTS)}")
    if sub == "lr_scale":  # train.lr_scale.<parameter-name prefix>, which has dots of its own
        return
    if len(parts) > 2:
        if sub != "early_stopping" or len(parts) > 3 or parts[2] not in EARLY_STOPPING_DEFAULTS:
            known = [f"train.early_stopping.{k}" for k in EARLY_STOPPING_DEFAULTS]
            raise ConfigError(f"{key}: unknown key; train.{sub} sub-keys are {known if sub == 'early_stopping' else 'none'}")


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``config`` with dotted overrides applied.

    Args:
        config: a config dict (need not be complete).
        overrides: ``["train.lr=3e-4", "model.fusion.name=mfh"]`` (values parsed by
            :func:`parse_value`) or a mapping ``{"train.lr": 3e-4}`` (values used as they are).

    Raises:
        ConfigError: naming the dotted key, for a malformed item, an unknown top-level section,
            or a ``data`` / ``train`` key that does not exist (``data`` keys are checked against
            the dataset named in ``data.name``, after any ``data.name`` override). ``model.*``
            keys are passed through.
    """
    out = copy.deepcopy(dict(config)) if config is not None else {}
    if overrides is None:
        return out
    if isinstance(overrides, Mapping):
        items = [(str(k), v) for k, v in overrides.items()]
    elif isinstance(overrides, str):
        raise ConfigError(f"overrides: expected a list of 'key=value' strings, got the string {overrides!r}")
    else:
        items = []
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{item}: expected an override 'key.sub=value'")
            key, text = item.split("=", 1)
            items.append((key.strip(), parse_value(text.strip())))
    # data.name first, so data keys are checked against the dataset the run will use
    items.sort(key=lambda kv: kv[0] != "data.name")
    for key, value in items:
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"{key!r}: malformed key, expected dotted names like train.lr")
        _check_override_key(key, parts, out)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- validation


def _lr_scale(value: Any) -> dict[str, float]:
    """``train.lr_scale`` as ``{dotted prefix: multiplier > 0}``; nested mappings (what a dotted
    override ``train.lr_scale.encoders.v=0.5`` makes) are flattened to their dotted paths."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"train.lr_scale: expected a mapping {{parameter-name prefix: multiplier}}, got {value!r}")
    out: dict[str, float] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping):
                walk(v, key)
            else:
                out[key] = float(_float(f"train.lr_scale.{key}", v, low=0.0, low_open=True))

    walk(value, "")
    return out


def _int(key: str, value: Any, minimum: int | None = None, *, none: bool = False, minus_one: bool = False) -> Any:
    if value is None and none:
        return None
    if minus_one and value == -1 and not isinstance(value, bool):
        return -1
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        extra = " (or -1)" if minus_one else ""
        raise ConfigError(f"{key}: expected an int{bound}{extra}{' or null' if none else ''}, got {value!r}")
    return value


def _float(key: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, none: bool = False) -> Any:
    if value is None and none:
        return None
    value = _numeric_string(value)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        bound = " and ".join(b for b in (lo, hi) if b)
        raise ConfigError(f"{key}: expected a number{' ' + bound if bound else ''}{' or null' if none else ''}, got {value!r}")
    return float(value)


def _choice(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{key}: expected one of {choices}, got {value!r}{_suggest(str(value), choices)}")
    return value.lower()


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _unknown(section: str, given: Mapping[str, Any], known: Iterable[str], hint: str = "") -> None:
    known = list(known)
    for key in given:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key{_suggest(str(key), known)}{hint}; known: {sorted(known)}")


def _existing(key: str, path: Any, *, base: Path | None = None, kind: str = "any") -> str:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ConfigError(f"{key}: expected a path, got {path!r}")
    p = Path(path).expanduser()
    if base is not None and not p.is_absolute():
        p = base / p
    if not p.exists():
        raise ConfigError(f"{key}: {p} does not exist")
    if kind == "dir" and not p.is_dir():
        raise ConfigError(f"{key}: {p} is not a folder")
    if kind == "file" and not p.is_file():
        raise ConfigError(f"{key}: {p} is not a file")
    return str(p)


def _split_paths(key: str, value: Any, base: Path, *, optional: bool) -> Any:
    """A path or ``{train: path, test: path}``, each checked to exist."""
    if value is None and optional:
        return None
    if isinstance(value, Mapping):
        _unknown(key, value, ("train", "test"))
        return {k: _existing(f"{key}.{k}", v, base=base) for k, v in value.items()}
    return _existing(key, value, base=base)


def _validate_data(data: Mapping[str, Any], *, check_paths: bool) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"data: expected a mapping, got {type(data).__name__}")
    name = canonical_dataset(data.get("name"))
    options = DATASET_OPTIONS[name]
    _unknown("data", data, [*DATA_DEFAULTS, *options], hint=f" for dataset {name!r}")
    d = {**copy.deepcopy(DATA_DEFAULTS), **copy.deepcopy(options), **copy.deepcopy(dict(data)), "name": name}
    d["seed"] = _int("data.seed", d["seed"], 0)
    d["batch_size"] = _int("data.batch_size", d["batch_size"], 1)
    d["eval_batch_size"] = _int("data.eval_batch_size", d["eval_batch_size"], 1, none=True)
    d["num_workers"] = _int("data.num_workers", d["num_workers"], 0)
    d["val_fraction"] = _float("data.val_fraction", d["val_fraction"], low=0.0, high=1.0, high_open=True)
    d["drop_last"] = _bool("data.drop_last", d["drop_last"])
    d["pin_memory"] = _bool("data.pin_memory", d["pin_memory"])

    if d["path"] is None:
        if name not in _GENERATED:
            raise ConfigError(f"data.path: required for dataset {name!r} (only {list(_GENERATED)} are generated)")
    elif check_paths:
        kind = {"vqa2": "dir", "image-folder": "dir", "mosi": "file", "mosei": "file", "mmimdb": "file"}.get(name, "dir")
        d["path"] = _existing("data.path", d["path"], kind=kind)
    elif not isinstance(d["path"], (str, os.PathLike)):
        raise ConfigError(f"data.path: expected a path or null, got {d['path']!r}")

    if name == "sort-of-clevr":
        for k in ("n_train", "n_test", "n_nonrel", "n_rel", "n_distractors"):
            d[k] = _int(f"data.{k}", d[k], 0)
        d["region_noise"] = _float("data.region_noise", d["region_noise"], low=0.0)
        d["representation"] = _choice("data.representation", d["representation"], ("regions", "pixels", "all"))
        d["question"] = _choice("data.question", d["question"], ("bits", "tokens", "all"))
        if d["group_by_image"] != "auto" and not isinstance(d["group_by_image"], bool):
            raise ConfigError(f"data.group_by_image: expected true, false or 'auto', got {d['group_by_image']!r}")
        if d["n_nonrel"] + d["n_rel"] == 0:
            raise ConfigError("data.n_rel: n_nonrel + n_rel must be >= 1, got 0 questions per image")
    elif name == "interactions":
        for k in ("n_train", "n_test"):
            d[k] = _int(f"data.{k}", d[k], 0)
        dims = d["dims"]
        if not isinstance(dims, (list, tuple)) or len(dims) not in (2, 3):
            raise ConfigError(f"data.dims: expected a list of 2 or 3 ints, got {dims!r}")
        d["dims"] = [_int(f"data.dims[{i}]", v, 1) for i, v in enumerate(dims)]
        d["order"] = _int("data.order", d["order"], 1)
        if d["order"] > len(d["dims"]):
            raise ConfigError(f"data.order: must be <= the number of modalities {len(d['dims'])}, got {d['order']}")
        d["n_classes"] = _int("data.n_classes", d["n_classes"], 2)
        d["rank"] = _int("data.rank", d["rank"], 1)
        d["label_noise"] = _float("data.label_noise", d["label_noise"], low=0.0, high=1.0, high_open=True)
        d["lower_order_weight"] = _float("data.lower_order_weight", d["lower_order_weight"], low=0.0)
    elif name == "vqa2":
        base = Path(d["path"])
        for k in ("train_questions", "train_annotations"):
            d[k] = _existing(f"data.{k}", d[k], base=base, kind="file") if check_paths else d[k]
        if (d["test_questions"] is None) != (d["test_annotations"] is None):
            raise ConfigError("data.test_annotations: give both test_questions and test_annotations, or neither")
        for k in ("test_questions", "test_annotations"):
            if d[k] is not None and check_paths:
                d[k] = _existing(f"data.{k}", d[k], base=base, kind="file")
        if check_paths:
            d["features"] = _split_paths("data.features", d["features"], base, optional=False)
            d["id_map"] = _split_paths("data.id_map", d["id_map"], base, optional=True)
        d["feature_dim"] = _int("data.feature_dim", d["feature_dim"], 1, none=True)
        d["top_answers"] = _int("data.top_answers", d["top_answers"], 1, none=True)
        d["min_answer_count"] = _int("data.min_answer_count", d["min_answer_count"], 1, none=True)
        d["answer_source"] = _choice("data.answer_source", d["answer_source"], ("multiple_choice", "all"))
        d["max_boxes"] = _int("data.max_boxes", d["max_boxes"], 1)
        d["max_question_len"] = _int("data.max_question_len", d["max_question_len"], 1)
        d["drop_missing_images"] = _bool("data.drop_missing_images", d["drop_missing_images"])
    elif name in ("mosi", "mosei"):
        d["trim"] = _choice("data.trim", d["trim"], ("none", "aligned", "per_modality"))
        d["labels"] = _choice("data.labels", d["labels"], ("regression", "binary", "7class"))
        d["nonfinite"] = _choice("data.nonfinite", d["nonfinite"], ("zero", "keep", "error"))
        mods = d["modalities"]
        if isinstance(mods, str):
            mods = [mods]
        if not isinstance(mods, (list, tuple)) or not mods or any(m not in ("vision", "audio", "text") for m in mods):
            raise ConfigError(f"data.modalities: expected a non-empty list from ['vision', 'audio', 'text'], got {d['modalities']!r}")
        d["modalities"] = list(mods)
    elif name == "mmimdb":
        d["image"] = _choice("data.image", d["image"], ("vgg_features", "images"))
        splits = d["splits"]
        if splits is not None:
            if not isinstance(splits, Mapping) or set(splits) != {"train", "valid", "test"}:
                raise ConfigError(f"data.splits: expected {{train: [start, stop], valid: [...], test: [...]}} or null, got {splits!r}")
            checked = {}
            for k, rng in splits.items():
                if not isinstance(rng, (list, tuple)) or len(rng) != 2:
                    raise ConfigError(f"data.splits.{k}: expected [start, stop], got {rng!r}")
                start, stop = (_int(f"data.splits.{k}[{i}]", v, 0) for i, v in enumerate(rng))
                if stop < start:
                    raise ConfigError(f"data.splits.{k}: expected start <= stop, got {list(rng)}")
                checked[k] = [start, stop]
            d["splits"] = checked
    elif name == "image-folder":
        base = Path(d["path"])
        if check_paths:
            d["table"] = _existing("data.table", d["table"], base=base, kind="file")
            if d["test_table"] is not None:
                d["test_table"] = _existing("data.test_table", d["test_table"], base=base, kind="file")
        d["test_fraction"] = _float("data.test_fraction", d["test_fraction"], low=0.0, high=1.0, high_open=True)
        size = d["image_size"]
        if isinstance(size, (list, tuple)):
            if len(size) != 2:
                raise ConfigError(f"data.image_size: expected an int or [height, width], got {size!r}")
            d["image_size"] = [_int(f"data.image_size[{i}]", v, 1) for i, v in enumerate(size)]
        else:
            d["image_size"] = _int("data.image_size", size, 1)
        d["max_question_len"] = _int("data.max_question_len", d["max_question_len"], 1)
        d["min_answer_count"] = _int("data.min_answer_count", d["min_answer_count"], 1)
    return d


def _validate_train(train: Mapping[str, Any] | None) -> dict[str, Any]:
    train = {} if train is None else train
    if not isinstance(train, Mapping):
        raise ConfigError(f"train: expected a mapping, got {type(train).__name__}")
    _unknown("train", train, TRAIN_DEFAULTS)
    t = {**copy.deepcopy(TRAIN_DEFAULTS), **copy.deepcopy(dict(train))}
    t["max_epochs"] = _int("train.max_epochs", -1 if t["max_epochs"] is None else t["max_epochs"], 1, minus_one=True)
    t["max_steps"] = _int("train.max_steps", -1 if t["max_steps"] is None else t["max_steps"], 1, minus_one=True)
    if t["max_epochs"] == -1 and t["max_steps"] == -1:
        raise ConfigError("train.max_epochs: set max_epochs or max_steps (both are unlimited)")
    t["max_minutes"] = _float("train.max_minutes", t["max_minutes"], low=0.0, low_open=True, none=True)
    t["lr"] = _float("train.lr", t["lr"], low=0.0, low_open=True)
    t["lr_scale"] = _lr_scale(t["lr_scale"])
    t["weight_decay"] = _float("train.weight_decay", t["weight_decay"], low=0.0)
    t["optimizer"] = _choice("train.optimizer", t["optimizer"], ("adamw", "adam", "sgd"))
    betas = t["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ConfigError(f"train.betas: expected [beta1, beta2], got {betas!r}")
    t["betas"] = [_float(f"train.betas[{i}]", b, low=0.0, high=1.0, high_open=True) for i, b in enumerate(betas)]
    t["momentum"] = _float("train.momentum", t["momentum"], low=0.0, high=1.0, high_open=True)
    t["warmup_steps"] = _int("train.warmup_steps", t["warmup_steps"], 0)
    t["schedule"] = _choice("train.schedule", t["schedule"], ("cosine", "linear", "constant"))
    t["min_lr_ratio"] = _float("train.min_lr_ratio", t["min_lr_ratio"], low=0.0, high=1.0)
    t["grad_clip"] = _float("train.grad_clip", t["grad_clip"], low=0.0, low_open=True, none=True)
    precision = str(t["precision"]).lower() if not isinstance(t["precision"], bool) else t["precision"]
    precision = {"16": "16-mixed", "bf16": "bf16-mixed"}.get(precision, precision)
    t["precision"] = _choice("train.precision", precision, _PRECISIONS)
    t["loss"] = _choice("train.loss", t["loss"], ("auto", "ce", "bce", "mse", "l1"))
    t["label_smoothing"] = _float("train.label_smoothing", t["label_smoothing"], low=0.0, high=1.0, high_open=True)
    t["aux_loss_weight"] = _float("train.aux_loss_weight", t["aux_loss_weight"], low=0.0)
    es = t["early_stopping"]
    if es is True:
        es = {}
    if es is None or es is False:
        t["early_stopping"] = None
    else:
        if not isinstance(es, Mapping):
            raise ConfigError(f"train.early_stopping: expected null or {{monitor, patience, mode, min_delta}}, got {es!r}")
        _unknown("train.early_stopping", es, EARLY_STOPPING_DEFAULTS)
        es = {**EARLY_STOPPING_DEFAULTS, **es}
        if not isinstance(es["monitor"], str) or not es["monitor"]:
            raise ConfigError(f"train.early_stopping.monitor: expected a metric name like 'val/accuracy' or 'auto', got {es['monitor']!r}")
        es["patience"] = _int("train.early_stopping.patience", es["patience"], 1)
        es["mode"] = _choice("train.early_stopping.mode", es["mode"], ("auto", "min", "max"))
        es["min_delta"] = _float("train.early_stopping.min_delta", es["min_delta"], low=0.0)
        t["early_stopping"] = es
    t["seed"] = _int("train.seed", t["seed"], 0)
    devices = t["devices"]
    if not (devices == "auto" or isinstance(devices, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in devices)):
        t["devices"] = _int("train.devices", devices, -1)
        if t["devices"] == 0:
            raise ConfigError("train.devices: expected an int >= 1, -1 (all), 'auto' or a list of ids, got 0")
    if not isinstance(t["accelerator"], str):
        raise ConfigError(f"train.accelerator: expected a name like 'auto', 'cpu' or 'gpu', got {t['accelerator']!r}")
    if not isinstance(t["strategy"], str):
        raise ConfigError(f"train.strategy: expected a name like 'auto', 'ddp' or 'ddp_spawn', got {t['strategy']!r}")
    t["num_nodes"] = _int("train.num_nodes", t["num_nodes"], 1)
    t["accumulate_grad_batches"] = _int("train.accumulate_grad_batches", t["accumulate_grad_batches"], 1)
    t["checkpoint_every_n_steps"] = _int("train.checkpoint_every_n_steps", t["checkpoint_every_n_steps"], 1, none=True)
    t["log_every_n_steps"] = _int("train.log_every_n_steps", t["log_every_n_steps"], 1)
    t["val_every_n_epochs"] = _int("train.val_every_n_epochs", t["val_every_n_epochs"], 1)
    t["sanity_val_steps"] = _int("train.sanity_val_steps", t["sanity_val_steps"], 0, minus_one=True)
    if not (isinstance(t["deterministic"], bool) or t["deterministic"] == "warn"):
        raise ConfigError(f"train.deterministic: expected true, false or 'warn', got {t['deterministic']!r}")
    t["progress_bar"] = _bool("train.progress_bar", t["progress_bar"])
    if not isinstance(t["run_root"], (str, os.PathLike)) or not str(t["run_root"]):
        raise ConfigError(f"train.run_root: expected a folder path, got {t['run_root']!r}")
    t["run_root"] = str(t["run_root"])
    return t


def validate_config(config: Mapping[str, Any], *, check_paths: bool = True) -> dict[str, Any]:
    """A complete copy of ``config``: defaults filled, ``data`` and ``train`` checked.

    Args:
        config: a config dict with ``model`` and ``data`` (``train`` optional).
        check_paths: check that ``data.path`` and the files it names exist.

    Raises:
        ConfigError: naming the dotted key of the first problem found.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping with sections {list(SECTIONS)}, got {type(config).__name__}")
    for key in config:
        if key not in SECTIONS:
            raise ConfigError(f"{key}: unknown config section{_suggest(str(key), SECTIONS)}; expected {list(SECTIONS)}")
    out: dict[str, Any] = {}
    if config.get("name") is not None:
        if not isinstance(config["name"], str):
            raise ConfigError(f"name: expected a string, got {config['name']!r}")
        out["name"] = config["name"]
    model = config.get("model")
    if not isinstance(model, Mapping):
        raise ConfigError(f"model: required, a mapping (task, inputs, fusion, head); got {model!r}")
    out["model"] = copy.deepcopy(dict(model))
    if "data" not in config:
        raise ConfigError(f"data: required, a mapping with at least data.name (one of {sorted(DATASET_OPTIONS)})")
    out["data"] = _validate_data(config["data"], check_paths=check_paths)
    out["train"] = _validate_train(config.get("train"))
    try:
        json.dumps(out)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config: values must be JSON-serialisable (numbers, strings, lists, mappings): {err}") from err
    return out


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    check_paths: bool = True,
) -> dict[str, Any]:
    """Read a run config, apply overrides, fill the defaults and validate it.

    Args:
        source: a ``.yaml`` / ``.yml`` / ``.json`` file, or a config dict (copied, not changed).
        overrides: dotted overrides, see :func:`apply_overrides`.
        check_paths: check that data paths exist (off to inspect a config from another machine).

    Returns:
        The complete config: ``{"name"?, "model", "data", "train"}``.

    Raises:
        ConfigError: naming the dotted key, e.g. ``data.path: /x does not exist``.
    """
    if isinstance(source, Mapping):
        raw: Any = copy.deepcopy(dict(source))
    else:
        raw = _read_file(Path(source).expanduser())
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping with sections {list(SECTIONS)}, got {type(raw).__name__}")
    return validate_config(apply_overrides(raw, overrides), check_paths=check_paths)

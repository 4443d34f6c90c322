"""``train(config) -> RunResult`` and ``evaluate(model_folder)``: the whole run, end to end.

A run folder holds::

    config.json          the resolved config (defaults filled, ``auto`` model fields replaced)
    last.ckpt            resume state (Lightning; atomic; read with weights_only=True)
    csv/metrics.csv      CSV log;  tensorboard/  TensorBoard events
    model/               the final model: model.safetensors, config.json, metrics.json, info.json
    run.json             seconds, samples/s, parameters, world size, the step the call started at

``train`` resumes from ``last.ckpt`` when the run folder has one (same model and data config
required), so re-running a killed command continues it; a finished run only re-tests and saves.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from mmfuse.data._io import atomic_write_bytes

from . import _model
from .checkpoint import load, model_folder, read_config, read_info, read_metrics, save_model
from .config import ConfigError, apply_overrides, load_config
from .data import MMFuseDataModule, build_datamodule, json_info
from .module import TaskModule, compute_metrics, primary_metric
from .resume import LAST, AtomicCheckpointIO, PeriodicCheckpoint, read_resume_state

__all__ = ["RunResult", "evaluate", "resolve_model_config", "train"]

_QUIET = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*sync_dist=True.*",
    r".*The number of training batches .* is smaller.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*You're resuming from a checkpoint that ended before the epoch ended.*",
)


class _NoAdverts(logging.Filter):
    """Drops Lightning's "try installing litlogger" tip, printed once per trainer: every entry of
    ``mmfuse run`` repeated an advert for a cloud service between its progress bars."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    if not any(isinstance(f, _NoAdverts) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_NoAdverts())


@dataclass
class RunResult:
    """What :func:`train` returns.

    Attributes:
        metrics: ``val/*`` (last validation) and ``test/*`` metrics, floats.
        run_dir: the run folder.
        checkpoint: the saved model folder (``run_dir / "model"``), for :func:`mmfuse.load`.
        seconds: wall time of fitting (training + validation) in this call.
        samples_per_s: training samples per second over all processes, validation time excluded.
        params: trainable parameters of the model.
        start_step: the optimizer step this call started at (> 0 after a resume).
    """

    metrics: dict[str, float]
    run_dir: Path
    checkpoint: Path
    seconds: float
    samples_per_s: float
    params: int = 0
    start_step: int = 0
    config: dict[str, Any] = field(default_factory=dict, repr=False)


# --------------------------------------------------------------------------- model config

# input fields that 'auto' fills from the data (datamodule.info["inputs"][key])
_DATA_FACTS = ("in_dim", "vocab_size", "max_len", "in_channels", "height", "width", "image_size", "num_regions", "vocab")


def resolve_model_config(model_config: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """Fill ``auto`` fields of the ``model`` section from the data and check it fits the data.

    ``task`` (or its ``kind`` / ``num_outputs``) missing or ``auto`` -> the data's; a field
    ``auto`` of ``inputs.<name>`` -> the fact of the same name about the batch key the input
    reads (``in_dim``, ``vocab_size``, ``max_len``, ``in_channels``, ``height``, ...; see
    ``datamodule.info["inputs"]``; ``vocab`` -> the word list of token inputs). Other ``auto``
    values are left for the model to interpret.

    Raises:
        ConfigError: naming the model key, for an input whose ``key`` / ``mask_key`` the batches
            lack, an ``auto`` that cannot be filled, an ``in_dim`` or ``num_outputs`` that
            disagrees with the data, or a ``vocab_size`` smaller than the data's vocabulary.
    """
    cfg = copy.deepcopy(dict(model_config))
    dataset = info.get("dataset", "data")
    task = cfg.get("task")
    if task is None or task == "auto":
        cfg["task"] = dict(info["task"])
    elif isinstance(task, Mapping):
        task = dict(task)
        for k in ("kind", "num_outputs"):
            if task.get(k, "auto") == "auto":
                task[k] = info["task"][k]
        cfg["task"] = task
        if task["kind"] != info["task"]["kind"]:
            raise ConfigError(f"model.task.kind: {task['kind']!r}, but {dataset} is a {info['task']['kind']} task")
        if task["num_outputs"] != info["task"]["num_outputs"]:
            raise ConfigError(
                f"model.task.num_outputs: {task['num_outputs']}, but {dataset} has {info['task']['num_outputs']} "
                f"{'classes' if task['kind'] != 'regression' else 'targets'}"
            )
    facts_by_key: Mapping[str, Mapping[str, Any]] = info.get("inputs", {})
    masks = {f.get("mask_key") for f in facts_by_key.values() if f.get("mask_key")}
    inputs = cfg.get("inputs")
    if isinstance(inputs, Mapping):
        inputs = {name: dict(spec) if isinstance(spec, Mapping) else spec for name, spec in inputs.items()}
        for name, spec in inputs.items():
            if not isinstance(spec, dict):
                continue
            where = f"model.inputs.{name}"
            key = spec.get("key", name)
            if key not in facts_by_key:
                raise ConfigError(f"{where}.key: the {dataset} batches have no {key!r}; they have {sorted(facts_by_key)}")
            mask_key = spec.get("mask_key")
            if mask_key is not None and mask_key not in masks:
                raise ConfigError(f"{where}.mask_key: the {dataset} batches have no {mask_key!r}; masks: {sorted(masks)}")
            group_key, groups = spec.get("group_key"), list(info.get("group_keys", []))
            if group_key is not None and group_key not in groups:
                raise ConfigError(f"{where}.group_key: the {dataset} batches have no {group_key!r} "
                                  f"(row ids shared by rows of one input); they have {groups}")
            for f, v in spec.items():  # other batch keys an encoder reads (e.g. box_key)
                if f.endswith("_key") and f not in ("key", "mask_key", "group_key") and isinstance(v, str) and v not in facts_by_key:
                    raise ConfigError(f"{where}.{f}: the {dataset} batches have no {v!r}; they have {sorted(facts_by_key)}")
            facts = dict(facts_by_key[key])
            if info.get("word_vocab") is not None and "vocab_size" in facts:
                facts["vocab"] = list(info["word_vocab"])  # token inputs: the words behind the ids
            for f, v in list(spec.items()):
                if v != "auto":
                    continue
                if f in facts:
                    spec[f] = facts[f]
                elif f in _DATA_FACTS:  # other 'auto' values are the model's business
                    raise ConfigError(f"{where}.{f}: 'auto' cannot be filled: {dataset} knows {sorted(facts)} about {key!r}")
            if isinstance(spec.get("in_dim"), int) and "in_dim" in facts and spec["in_dim"] != facts["in_dim"]:
                raise ConfigError(f"{where}.in_dim: {spec['in_dim']}, but the {dataset} {key!r} features have size {facts['in_dim']}")
            if isinstance(spec.get("vocab_size"), int) and spec["vocab_size"] < facts.get("vocab_size", 0):
                raise ConfigError(
                    f"{where}.vocab_size: {spec['vocab_size']} is smaller than the {dataset} vocabulary ({facts['vocab_size']} words)"
                )
        cfg["inputs"] = inputs
    return cfg


# --------------------------------------------------------------------------- helpers


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _multi_process(train: Mapping[str, Any]) -> bool:
    devices = train["devices"]
    many = devices == -1 or (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1)
    return many or train["num_nodes"] > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _resolve_run_dir(config: Mapping[str, Any], run_dir: str | os.PathLike[str] | None) -> Path:
    if run_dir is not None:
        return Path(run_dir).expanduser()
    fusion = config["model"].get("fusion") if isinstance(config["model"].get("fusion"), Mapping) else {}
    name = _slug(config.get("name") or f"{config['data']['name']}-{fusion.get('name', 'model')}")
    root = Path(config["train"]["run_root"]).expanduser()
    if _multi_process(config["train"]):  # every process must pick the same folder: derive it from the config
        digest = hashlib.sha256(json.dumps(config).encode()).hexdigest()[:10]  # key order counts
        return root / f"{name}-{digest}"
    return root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def _first_difference(a: Any, b: Any, prefix: str) -> tuple[str, Any, Any] | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) == set(b) and list(a) != list(b):  # order matters (model.inputs: the fusion's order)
            return prefix, f"keys in the order {list(a)}", f"{list(b)}"
        for k in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}")
            if found:
                return found
        return None
    return None if a == b else (prefix, a, b)


def _check_resume(state: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> int:
    saved = (state.get("hyper_parameters") or {}).get("config")
    if isinstance(saved, Mapping):
        for section in ("model", "data"):
            diff = _first_difference(saved.get(section), config.get(section), section)
            if diff:
                key, old, new = diff
                raise ConfigError(
                    f"{key}: {path} was written by a run with {old!r}, this config has {new!r}; "
                    f"use another run_dir, or delete {path} to start over"
                )
    return int(state.get("global_step", 0))


def _metric_names(module: TaskModule) -> list[str]:
    zeros = {k: torch.zeros(s, dtype=torch.float64) for k, s in module._shapes().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(compute_metrics(zeros, module.kind, soft_targets=module.soft_targets,
                                    qtype_names=module.qtype_names, relational_qtypes=module.relational_qtypes))


def _early_stopping(config: Mapping[str, Any], module: TaskModule) -> EarlyStopping | None:
    es = config["train"]["early_stopping"]
    if not es:
        return None
    default_name, default_mode = primary_metric(module.kind, module.soft_targets)
    monitor = es["monitor"]
    name = default_name if monitor == "auto" else monitor.split("/", 1)[1] if monitor.startswith("val/") else monitor
    known = _metric_names(module)
    if name not in known:
        raise ConfigError(f"train.early_stopping.monitor: {monitor!r} is not a validation metric of this task; use one of {['val/' + k for k in known]}")
    mode = es["mode"]
    if mode == "auto":
        mode = default_mode if name == default_name else ("min" if name in ("loss", "mae", "mse") else "max")
    return EarlyStopping(monitor=f"val/{name}", mode=mode, patience=es["patience"], min_delta=es["min_delta"],
                         check_on_train_epoch_end=False)


class _ValidationTimer(Callback):
    """Seconds spent in validation during fit (to leave it out of the throughput)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._start


def _loggers(run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers: list = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    try:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False))
    except ModuleNotFoundError:  # neither tensorboard nor tensorboardX: CSV only
        warnings.warn("mmfuse.train: tensorboard is not installed; logging to CSV only", stacklevel=3)
    return loggers


def _trainer(config: Mapping[str, Any], run_dir: Path, callbacks: Sequence[Callback]) -> L.Trainer:
    t = config["train"]
    return L.Trainer(
        accelerator=t["accelerator"],
        devices=t["devices"],
        num_nodes=t["num_nodes"],
        strategy=t["strategy"],
        precision=t["precision"],
        max_epochs=t["max_epochs"],
        max_steps=t["max_steps"],
        max_time=None if t.get("max_minutes") is None else datetime.timedelta(minutes=t["max_minutes"]),
        gradient_clip_val=t["grad_clip"],
        accumulate_grad_batches=t["accumulate_grad_batches"],
        log_every_n_steps=t["log_every_n_steps"],
        check_val_every_n_epoch=t["val_every_n_epochs"],
        num_sanity_val_steps=t["sanity_val_steps"],
        deterministic=t["deterministic"],
        enable_progress_bar=t["progress_bar"],
        enable_model_summary=t["progress_bar"],
        enable_checkpointing=True,
        logger=_loggers(run_dir),
        callbacks=list(callbacks),
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # the data module shards batches itself (EpochBatchSampler)
        plugins=[AtomicCheckpointIO()],
    )


def _floats(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _json_safe(config: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(config))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: the model's config is not JSON-serialisable ({err})") from err


# --------------------------------------------------------------------------- train / evaluate


def train(
    config: str | os.PathLike[str] | Mapping[str, Any],
    run_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train a task model, test it, save it; resume from ``run_dir/last.ckpt`` when present.

    Args:
        config: a config file or dict (see :mod:`mmfuse.train.config`).
        run_dir: the run folder; ``None`` = a new folder under ``train.run_root`` (with several
            processes: ``<run_root>/<name>-<config hash>``, the same in every process).
        overrides: dotted overrides applied to ``config`` first.
        callbacks: extra Lightning callbacks.

    Returns:
        :class:`RunResult`; ``checkpoint`` is the saved model folder.

    Raises:
        ConfigError: before any training, for a bad config key (named in the message).
    """
    config = load_config(config, overrides)
    t = config["train"]
    run_dir = _resolve_run_dir(config, run_dir)

    L.seed_everything(t["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(config["data"], shuffle_seed=t["seed"])
    datamodule.setup("fit")
    model_config = resolve_model_config(config["model"], datamodule.info)
    L.seed_everything(t["seed"], workers=True, verbose=False)
    model = _model.build_model(model_config)
    config["model"] = _json_safe(getattr(model, "config", model_config))
    resolve_model_config(config["model"], datamodule.info)  # the normalised config must fit too
    config = _json_safe(config)
    module = TaskModule(model, config, datamodule.info)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    last = run_dir / LAST
    resume = last.is_file()
    start_step = _check_resume(read_resume_state(last), config, last) if resume else 0
    timer = _ValidationTimer()
    extra = [c for c in (_early_stopping(config, module),) if c is not None]
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    trainer = _trainer(config, run_dir, [PeriodicCheckpoint(run_dir, t["checkpoint_every_n_steps"]), timer, *extra, *callbacks])

    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None,
                    weights_only=True)
        seconds = time.perf_counter() - start
        # the module's own float64 values; what Lightning logged (float32) where the module's
        # state stayed in worker processes (ddp_spawn)
        val_metrics = module.metrics.get("val") or _floats(trainer.callback_metrics, "val/")
        tested = trainer.test(module, datamodule=datamodule, verbose=False)
    test_metrics = module.metrics.get("test") or _floats(tested[0] if tested else {}, "test/")
    checkpoint = run_dir / "model"
    if not val_metrics and resume and (checkpoint / "metrics.json").is_file():  # a finished run: no new validation
        val_metrics = _floats(read_metrics(checkpoint), "val/")
    metrics = {**val_metrics, **test_metrics}

    world = trainer.world_size
    steps = max(trainer.global_step - start_step, 0)
    samples = steps * config["data"]["batch_size"] * world * t["accumulate_grad_batches"]
    train_seconds = max(seconds - timer.seconds, 1e-9)
    samples_per_s = samples / train_seconds if steps else 0.0
    if trainer.is_global_zero:
        save_model(model, config, checkpoint, metrics, info=json_info(datamodule.info))
        stats = {"seconds": seconds, "train_seconds": train_seconds, "samples_per_s": samples_per_s, "params": params,
                 "world_size": world, "start_step": start_step, "global_step": trainer.global_step}
        atomic_write_bytes(run_dir / "run.json", (json.dumps(stats, indent=2) + "\n").encode())
    trainer.strategy.barrier("mmfuse.train.saved")
    return RunResult(metrics=metrics, run_dir=run_dir, checkpoint=checkpoint, seconds=seconds,
                     samples_per_s=samples_per_s, params=params, start_step=start_step, config=config)


def evaluate(
    path: str | os.PathLike[str],
    data_overrides: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    split: str = "test",
    accelerator: str = "auto",
) -> dict[str, float]:
    """Metrics of a saved model on a split of its data (or of other data in the same format).

    Args:
        path: a model folder (or a run folder holding ``model/``).
        data_overrides: changes to the saved ``data`` section: a mapping ``{"path": ...}`` or
            strings ``["path=/data/mosi.pkl", "data.batch_size=256"]`` (``data.`` optional).
        split: ``"test"`` or ``"val"``.
        accelerator: Lightning accelerator (one device is used).

    Returns:
        ``{"test/accuracy": ..., ...}`` (``val/*`` for ``split="val"``).
    """
    if split not in ("test", "val"):
        raise ValueError(f"evaluate: split must be 'test' or 'val', got {split!r}")
    folder = model_folder(path)
    saved = read_config(folder)
    if data_overrides:
        if isinstance(data_overrides, Mapping):
            items = {(k if str(k).startswith("data.") else f"data.{k}"): v for k, v in data_overrides.items()}
        else:
            items = [o if o.startswith("data.") else f"data.{o}" for o in data_overrides]
        saved = apply_overrides(saved, items)
    config = load_config(saved)
    saved_info = read_info(folder)
    vocab = saved_info if saved_info.get("answer_vocab") is not None and saved_info.get("word_vocab") is not None else None
    datamodule: MMFuseDataModule = build_datamodule(config["data"], shuffle_seed=config["train"]["seed"], vocab=vocab)
    datamodule.setup(split)
    model = load(folder)
    resolve_model_config(getattr(model, "config", config["model"]), datamodule.info)
    module = TaskModule(model, config, datamodule.info)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=config["train"]["precision"], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        if split == "test":
            results = trainer.test(module, datamodule=datamodule, verbose=False)
        else:
            results = trainer.validate(module, datamodule=datamodule, verbose=False)
    return dict(module.metrics.get(split) or _floats(results[0] if results else {}, f"{split}/"))

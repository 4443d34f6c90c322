"""Training: configs, data modules, the LightningModule, safe checkpoints, ``train`` / ``evaluate``.

    from mmfuse.train import train, evaluate, load_config, apply_overrides
    result = train("configs/mlb-sort-of-clevr.yaml", overrides=["train.lr=3e-4"])
    result.metrics["test/acc_relational"], result.checkpoint      # model folder for mmfuse.load
    evaluate(result.checkpoint)                                   # {"test/accuracy": ..., ...}

Names are imported lazily: ``mmfuse.train.checkpoint`` (``load``) and ``mmfuse.train.config``
work without importing lightning; the rest needs ``lightning`` and ``safetensors``.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "config",
    "apply_overrides": "config",
    "load_config": "config",
    "validate_config": "config",
    "load": "checkpoint",
    "save_model": "checkpoint",
    "MMFuseDataModule": "data",
    "build_datamodule": "data",
    "TaskModule": "module",
    "RunResult": "trainer",
    "evaluate": "trainer",
    "resolve_model_config": "trainer",
    "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmfuse.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

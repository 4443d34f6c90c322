"""Model folders: weights as safetensors plus JSON, written atomically, read without unpickling.

Layout of a saved model (``save_model``)::

    <folder>/model.safetensors   every tensor of model.state_dict(), float as trained, on CPU
    <folder>/config.json         the full run config; its "model" section is model.config
    <folder>/metrics.json        final metrics (optional)
    <folder>/info.json           data facts a predictor needs: vocabularies, question types (optional)

The folder is written as a whole: files go into a hidden sibling folder (each fsynced), which is
then renamed into place. A reader sees the old folder, briefly none, or the new one, never a mix
of weights and config from different saves.

:func:`load` reads JSON and safetensors only (no ``pickle``, no ``torch.load``), rebuilds the
model with ``mmfuse.models.build_model(config["model"])`` and loads the weights with
``strict=True``. This module imports neither lightning nor ``mmfuse.models`` at import time.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfuse.data._io import _fsync_dir, atomic_write_bytes

from . import _model

__all__ = ["MODEL_FILES", "load", "model_folder", "read_config", "read_info", "read_metrics", "save_model"]

WEIGHTS, CONFIG, METRICS, INFO = "model.safetensors", "config.json", "metrics.json", "info.json"
MODEL_FILES = (WEIGHTS, CONFIG, METRICS, INFO)


def _json_bytes(obj: Any) -> bytes:
    # key order is kept: the order of model.inputs is the fusion's modality order
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True) + "\n").encode("utf-8")


def save_model(
    model: nn.Module,
    config: Mapping[str, Any],
    folder: str | os.PathLike[str],
    metrics: Mapping[str, float] | None = None,
    *,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``folder`` (layout in the module docstring), replacing a previous save.

    Args:
        model: a task model with a JSON-serialisable ``.config`` (the ``model`` section).
        config: the full run config; its ``model`` section is replaced by ``model.config``.
        folder: target folder. If it exists it must hold only mmfuse model files.
        metrics: ``{name: float}`` written to ``metrics.json``.
        info: data facts written to ``info.json`` (vocabularies for ``predict``).

    Returns:
        ``folder`` as a Path.
    """
    from safetensors.torch import save as st_save

    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise ValueError(f"save_model: {folder} exists and is not a folder")
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in MODEL_FILES)
        if foreign:
            raise ValueError(f"save_model: {folder} holds files that are not mmfuse model files {foreign}; pick another folder")
    full = dict(config)
    model_config = getattr(model, "config", None)
    if model_config is not None:
        full["model"] = model_config
    try:
        config_bytes = _json_bytes(full)
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_model: the config is not JSON-serialisable ({err})") from err
    # clone: tied parameters share storage, which safetensors refuses; each name gets its copy
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    blob = st_save(tensors, metadata={"format": "pt", "producer": "mmfuse"})

    folder.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = folder.parent / f".{folder.name}.tmp-{token}"
    old = folder.parent / f".{folder.name}.old-{token}"
    try:
        staging.mkdir()
        atomic_write_bytes(staging / WEIGHTS, blob)
        if metrics is not None:
            atomic_write_bytes(staging / METRICS, _json_bytes({k: float(v) for k, v in metrics.items()}))
        if info is not None:
            atomic_write_bytes(staging / INFO, _json_bytes(dict(info)))
        atomic_write_bytes(staging / CONFIG, config_bytes)
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
        _fsync_dir(folder.parent)
    finally:
        for leftover in (staging, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return folder


def model_folder(path: str | os.PathLike[str]) -> Path:
    """The model folder of ``path``: the folder itself, a run folder holding ``model/``, or a file in it."""
    p = Path(path).expanduser()
    if p.is_file():
        p = p.parent
    if not (p / WEIGHTS).is_file() and (p / "model" / WEIGHTS).is_file():
        p = p / "model"
    if not p.is_dir():
        raise ValueError(f"{p}: no such model folder")
    missing = [name for name in (WEIGHTS, CONFIG) if not (p / name).is_file()]
    if missing:
        raise ValueError(f"{p}: not an mmfuse model folder, missing {missing}")
    return p


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({type(err).__name__}: {err})") from err


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The full run config saved with a model."""
    config = _read_json(model_folder(path) / CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{model_folder(path) / CONFIG}: expected a run config with a 'model' section")
    return config


def read_metrics(path: str | os.PathLike[str]) -> dict[str, float]:
    """``metrics.json`` of a model folder (empty when absent)."""
    file = model_folder(path) / METRICS
    return _read_json(file) if file.is_file() else {}


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``info.json`` of a model folder (empty when absent)."""
    file = model_folder(path) / INFO
    return _read_json(file) if file.is_file() else {}


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model from ``config.json`` and load ``model.safetensors`` into it.

    Never unpickles: the config is JSON and the weights are safetensors.

    Args:
        path: a model folder, a run folder holding ``model/``, or a file inside the model folder.
        device: where the weights go.

    Returns:
        The task model, in eval mode.

    Raises:
        ValueError: when the folder is incomplete, a file is unreadable, or the weights do not
            match the model the config builds (missing / unexpected / mis-shaped tensors).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = model_folder(path)
    config = read_config(folder)
    model = _model.build_model(config["model"])
    try:
        state = load_file(str(folder / WEIGHTS), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{folder / WEIGHTS}: not a readable safetensors file ({err})") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{folder}: the weights do not match the model of config.json: {err}") from err
    model.to(device)
    model.eval()
    return model

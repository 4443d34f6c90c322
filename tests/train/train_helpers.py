"""Helpers for the training tests: tiny configs, tiny data files, and a stand-in task model.

The stand-in follows the models interface (``build_model(config) -> model``, ``model.config``,
``model(batch) -> ModelOutput(logits, attention)``) and is used only while ``mmfuse.models``
does not exist yet; the tests prefer the real ``mmfuse.models.build_model``.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn


def real_models_available() -> bool:
    """True when ``mmfuse.models`` imports (``MMFUSE_TEST_STANDIN=1`` forces the stand-in)."""
    if os.environ.get("MMFUSE_TEST_STANDIN") == "1":
        return False
    try:
        import mmfuse.models  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- stand-in model


class ModelOutput(NamedTuple):
    logits: torch.Tensor
    attention: Any = None


class StandInModel(nn.Module):
    """Per input: embedding (token ids) or linear layer (features), masked mean over sequences;
    concatenation; a one-hidden-layer MLP head."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        self.specs = {}
        encoders = {}
        total = 0
        for name, spec in config["inputs"].items():
            dim = int(spec.get("dim", 16))
            if "vocab_size" in spec:
                encoders[name] = nn.Embedding(int(spec["vocab_size"]), dim)
            elif "in_channels" in spec:
                encoders[name] = nn.Linear(int(spec["in_channels"]), dim)
            else:
                encoders[name] = nn.Linear(int(spec["in_dim"]), dim)
            self.specs[name] = (spec.get("key", name), spec.get("mask_key"), "in_channels" in spec)
            total += dim
        self.encoders = nn.ModuleDict(encoders)
        head = config.get("head", {})
        hidden = (head.get("hidden_dims") or [32])[0]
        self.head = nn.Sequential(
            nn.Linear(total, hidden), nn.ReLU(), nn.Dropout(head.get("dropout", 0.0)),
            nn.Linear(hidden, int(config["task"]["num_outputs"])),
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        parts = []
        for name, (key, mask_key, image) in self.specs.items():
            x = batch[key]
            if image:
                x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
            h = self.encoders[name](x)
            if h.dim() == 3:
                mask = batch[mask_key] if mask_key else torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
                w = mask.unsqueeze(-1).to(h.dtype)
                h = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
            parts.append(h)
        return ModelOutput(self.head(torch.cat(parts, dim=-1)))


def standin_build_model(config: dict[str, Any]) -> StandInModel:
    for name, spec in config["inputs"].items():
        for k, v in spec.items():
            if v == "auto":
                raise ValueError(f"model.inputs.{name}.{k}: unresolved 'auto'")
    return StandInModel(json.loads(json.dumps(config)))


def use_standin_if_needed(monkeypatch=None) -> bool:
    """Patch the trainer's model builder with the stand-in when mmfuse.models is absent."""
    if real_models_available():
        return False
    import mmfuse.train._model as builder

    if monkeypatch is not None:
        monkeypatch.setattr(builder, "build_model", standin_build_model)
    else:
        builder.build_model = standin_build_model
    return True


# --------------------------------------------------------------------------- configs

_HEAD = {"hidden_dims": [32], "dropout": 0.0, "activation": "relu"}
_TRAIN = {
    "max_epochs": 2, "lr": 3e-3, "warmup_steps": 2, "schedule": "cosine", "progress_bar": False,
    "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "sanity_val_steps": 0,
    "checkpoint_every_n_steps": 1000,
}


def tiny_config(dataset: str, **data: Any) -> dict[str, Any]:
    """A small run config for ``dataset`` that the real models and the stand-in both accept."""
    vec = lambda key: {"encoder": "vector", "key": key, "in_dim": "auto", "dim": 16}  # noqa: E731
    seq = lambda key: {"encoder": "sequence", "key": key, "mask_key": f"{key}_mask", "in_dim": "auto", "dim": 16}  # noqa: E731
    if dataset == "sort-of-clevr":
        inputs = {
            "v": {"encoder": "regions", "key": "regions", "mask_key": "region_mask", "in_dim": "auto", "dim": 16},
            "q": {"encoder": "gru", "key": "question_tokens", "mask_key": "question_mask", "vocab_size": "auto",
                  "embed_dim": 16, "dim": 16},
        }
        data = {"n_train": 40, "n_test": 10, "n_nonrel": 2, "n_rel": 2, "representation": "regions", **data}
    elif dataset == "interactions":
        inputs = {"a": vec("x0"), "b": vec("x1")}
        data = {"n_train": 400, "n_test": 100, "dims": [4, 4], "order": 1, **data}
    elif dataset in ("mosi", "mosei"):
        inputs = {"t": seq("text"), "a": seq("audio"), "v": seq("vision")}
    elif dataset == "mmimdb":
        inputs = {"t": vec("text"), "i": vec("image")}
    elif dataset == "vqa2":
        inputs = {
            "v": {"encoder": "regions", "key": "regions", "mask_key": "region_mask", "in_dim": "auto", "dim": 16},
            "q": {"encoder": "gru", "key": "question_tokens", "mask_key": "question_mask", "vocab_size": "auto",
                  "embed_dim": 16, "dim": 16},
        }
    elif dataset == "image-folder":
        inputs = {
            "v": {"encoder": "cnn", "key": "image", "in_channels": "auto", "channels": 8, "num_layers": 2, "dim": 16},
            "q": {"encoder": "bow", "key": "question_tokens", "vocab_size": "auto", "dim": 16},
        }
        data = {"image_size": 16, **data}
    else:
        raise ValueError(dataset)
    return {
        "model": {"inputs": inputs, "fusion": {"name": "concat", "out_dim": 16}, "head": dict(_HEAD)},
        "data": {"name": dataset, "batch_size": 16, **data},
        "train": dict(_TRAIN),
    }


# --------------------------------------------------------------------------- data files


def write_mosi(path: Path, n: tuple[int, int, int] = (48, 16, 16), t: int = 6, seed: int = 0) -> Path:
    """A MOSI-layout pickle (MulT / MultiBench keys) whose label depends on text and audio."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, size in zip(("train", "valid", "test"), n):
        text = rng.normal(size=(size, t, 5)).astype(np.float32)
        audio = rng.normal(size=(size, t, 3)).astype(np.float32)
        vision = rng.normal(size=(size, t, 4)).astype(np.float32)
        text[:, :2] = 0.0  # left padding, as in the published files
        label = np.clip(text[:, 2:, 0].mean(1) * 3 + audio[:, :, 1].mean(1), -3, 3)
        data[split] = {"text": text, "audio": audio, "vision": vision, "labels": label.reshape(size, 1, 1).astype(np.float32)}
    path.write_bytes(pickle.dumps(data))
    return path


def write_mmimdb(path: Path, n: int = 96, genres: int = 5, seed: int = 0) -> tuple[Path, dict[str, list[int]]]:
    """A small ``multimodal_imdb.hdf5`` (features 8, vgg_features 6) and split rows for it."""
    import h5py

    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n, 8)).astype(np.float32)
    image = rng.normal(size=(n, 6)).astype(np.float32)
    w = rng.normal(size=(8, genres))
    labels = (text @ w + rng.normal(scale=0.3, size=(n, genres)) > 0.5).astype(np.int64)
    with h5py.File(path, "w") as f:
        f["features"], f["vgg_features"], f["genres"] = text, image, labels
    return path, {"train": [0, 64], "valid": [64, 80], "test": [80, 96]}


def write_vqa(root: Path, n_images: int = 12, per_image: int = 3, seed: int = 0) -> Path:
    """VQA v2 JSON files (train and val) plus a folder of per-image .npz region features."""
    rng = np.random.default_rng(seed)
    feats = root / "features"
    feats.mkdir(parents=True)
    words = ["what", "color", "is", "the", "cat", "dog", "how", "many"]
    answers = ["red", "blue", "2", "3"]

    def split(name: str, first_image: int, q_offset: int) -> None:
        qs, anns = [], []
        for i in range(n_images):
            image_id = first_image + i
            k = int(rng.integers(3, 6))
            np.savez(feats / f"COCO_{name}2014_{image_id:012d}.jpg.npz",
                     x=rng.normal(size=(k, 8)).astype(np.float32),
                     bbox=rng.uniform(0, 50, size=(k, 4)).astype(np.float32), image_h=np.array(64), image_w=np.array(64))
            for j in range(per_image):
                qid = q_offset + i * per_image + j
                text = " ".join(rng.choice(words, size=int(rng.integers(3, 6))))
                best = answers[(i + j) % len(answers)]
                human = [best] * 7 + [answers[(i + j + 1) % len(answers)]] * 3
                qs.append({"image_id": image_id, "question": text + "?", "question_id": qid})
                anns.append({"question_id": qid, "image_id": image_id, "question_type": "what", "answer_type": "other",
                             "multiple_choice_answer": best, "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                                                         for k, a in enumerate(human)]})
        (root / f"v2_OpenEnded_mscoco_{name}2014_questions.json").write_text(json.dumps({"questions": qs}))
        (root / f"v2_mscoco_{name}2014_annotations.json").write_text(json.dumps({"annotations": anns}))

    split("train", 1, 1000)
    split("val", 500, 9000)
    return root


def write_image_folder(root: Path, n: int = 24, size: int = 16, seed: int = 0) -> Path:
    """PNG images (red or blue squares) and ``qa.csv`` asking for the colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["image,question,answer"]
    for i in range(n):
        colour = ["red", "blue"][i % 2]
        pixels = np.full((size, size, 3), 255, dtype=np.uint8)
        x, y = rng.integers(0, size - 6, size=2)
        pixels[y : y + 6, x : x + 6] = (255, 0, 0) if colour == "red" else (0, 0, 255)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        lines.append(f"img{i}.png,What colour is the square?,{colour}")
    (root / "qa.csv").write_text("\n".join(lines) + "\n")
    return root

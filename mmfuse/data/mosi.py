"""CMU-MOSI / CMU-MOSEI sentiment data in the MultiBench and MulT pickle layouts.

Papers: Zadeh et al., "MOSI: Multimodal Corpus of Sentiment Intensity..." (IEEE Intelligent
Systems 2016); Zadeh et al., "Multimodal Language Analysis in the Wild: CMU-MOSEI..." (ACL 2018).
Layouts: MultiBench (Liang et al., NeurIPS 2021 Datasets track; ``datasets/affect/get_data.py``
reads e.g. ``mosi_raw.pkl``, ``mosei_senti_data.pkl``) and MulT (Tsai et al., ACL 2019;
``src/dataset.py`` reads ``<name>_data.pkl`` / ``<name>_data_noalign.pkl``, e.g.
``mosi_data.pkl``, ``mosei_senti_data.pkl``) share one structure::

    {"train" | "valid" | "test": {
        "vision": float [N, T, Dv]      (e.g. Facet, 35 / 20)
        "audio":  float [N, T, Da]      (COVAREP, 74 / 5)
        "text":   float [N, T, Dt]      (GloVe 300 or BERT 768)
        "labels": float [N, 1, 1] or [N, 1]   sentiment in [-3, 3]  (other shapes kept as [N, C])
        "id":     [N] or [N, k] video / segment ids, str or bytes (optional; [N, 3] bytes in MulT's MOSI)
    }}

Sequences are left-padded with zeros to a fixed T. The files are pickles, and unpickling runs
code: they are read only through :func:`mmfuse.data.safe_pickle.safe_load`, which admits numpy
arrays / dtypes / scalars and plain containers and refuses anything else (e.g. a pickle that
would call ``os.system``) with a ``ValueError`` before any of it runs.

Example::

    data = load_affect("mosi_raw.pkl")
    train = data.dataset("train")                 # item: vision [T, 35], audio [T, 74], text [T, 300], label []
    loader = DataLoader(data.dataset("train", trim="aligned"), batch_size=32, collate_fn=collate_affect)
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .safe_pickle import safe_load

__all__ = [
    "AFFECT_MODALITIES",
    "AFFECT_SPLITS",
    "AffectData",
    "AffectDataset",
    "collate_affect",
    "load_affect",
    "load_mosei",
    "load_mosi",
]

AFFECT_SPLITS = ("train", "valid", "test")
AFFECT_MODALITIES = ("vision", "audio", "text")
_TRIM = ("none", "aligned", "per_modality")
_LABELS = ("regression", "binary", "7class")


def _as_array(source: str, name: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{source}: {name!r} must be a numpy array, got {type(value).__name__}")
    return value


def _fix_nonfinite(array: np.ndarray, policy: str, where: str) -> tuple[np.ndarray, int]:
    if not np.issubdtype(array.dtype, np.floating):
        return array, 0
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if count and policy == "error":
        raise ValueError(f"{where}: {count} values are NaN or infinite")
    if count and policy == "zero":
        if not array.flags.writeable:
            array = array.copy()
        array[bad] = 0
    return array, count


@dataclass(frozen=True)
class AffectData:
    """A loaded MOSI / MOSEI pickle.

    Attributes:
        path: the file.
        splits: split -> ``{"vision", "audio", "text", "labels" [N, C], ("id")}`` numpy arrays.
        nonfinite: split -> modality -> number of NaN / inf values found (and, with the
            default policy, replaced by 0 as MulT does for audio).
    """

    path: Path
    splits: dict[str, dict[str, np.ndarray]]
    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def dims(self) -> dict[str, int]:
        """Feature size per modality: ``{"vision": Dv, "audio": Da, "text": Dt}``."""
        first = next(iter(self.splits.values()))
        return {m: int(first[m].shape[-1]) for m in AFFECT_MODALITIES}

    def sizes(self) -> dict[str, int]:
        return {s: int(a["labels"].shape[0]) for s, a in self.splits.items()}

    def ids(self, split: str) -> list[str]:
        """Sample ids of ``split`` as strings (rows of a 2-D id array joined by ``"/"``)."""
        arrays = self._split(split)
        if "id" not in arrays:
            return [str(i) for i in range(arrays["labels"].shape[0])]

        def text(v: Any) -> str:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

        ids = arrays["id"]
        return [text(r) if ids.ndim == 1 else "/".join(text(v) for v in r) for r in ids]

    def _split(self, split: str) -> dict[str, np.ndarray]:
        if split not in self.splits:
            raise ValueError(f"{self.path}: unknown split {split!r}, expected one of {sorted(self.splits)}")
        return self.splits[split]

    def dataset(
        self,
        split: str = "train",
        *,
        trim: str = "none",
        labels: str = "regression",
        modalities: Sequence[str] = AFFECT_MODALITIES,
    ) -> AffectDataset:
        """A ``torch.utils.data.Dataset`` over ``split`` (see :class:`AffectDataset`)."""
        return AffectDataset(self._split(split), trim=trim, labels=labels, modalities=modalities)


class AffectDataset(Dataset):
    """Samples of one split.

    Args:
        arrays: one split of :class:`AffectData`.
        trim: ``"none"`` keeps the fixed, left-padded T (MulT); ``"aligned"`` drops the time
            steps before the first non-zero text row in every modality (MultiBench, aligned
            data); ``"per_modality"`` drops each modality's own leading all-zero rows
            (MultiBench, unaligned). Trimmed items vary in length: batch them with
            :func:`collate_affect`.
        labels: ``"regression"`` (float sentiment), ``"binary"`` (1 when >= 0, else 0; the
            usual non-negative / negative Acc-2) or ``"7class"`` (round(clip(y, -3, 3)) + 3).
        modalities: which of vision / audio / text to return.

    Item: ``{m: Tensor[T_m, D_m] float32 for m in modalities, "label": Tensor[] (or [C]),
    "index": Tensor[] int64}``; the label is float32 for regression, int64 otherwise.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        trim: str = "none",
        labels: str = "regression",
        modalities: Sequence[str] = AFFECT_MODALITIES,
    ) -> None:
        if trim not in _TRIM:
            raise ValueError(f"AffectDataset: trim must be one of {_TRIM}, got {trim!r}")
        if labels not in _LABELS:
            raise ValueError(f"AffectDataset: labels must be one of {_LABELS}, got {labels!r}")
        unknown = [m for m in modalities if m not in AFFECT_MODALITIES]
        if unknown or not modalities:
            raise ValueError(f"AffectDataset: modalities must be a non-empty subset of {AFFECT_MODALITIES}, got {list(modalities)}")
        self.arrays = arrays
        self.trim, self.labels, self.modalities = trim, labels, tuple(modalities)

    def __len__(self) -> int:
        return int(self.arrays["labels"].shape[0])

    @staticmethod
    def _first_nonzero_row(x: np.ndarray) -> int:
        if x.ndim < 2:
            return 0
        rows = np.flatnonzero(np.abs(x).reshape(x.shape[0], -1).sum(-1) > 0)
        return int(rows[0]) if rows.size else x.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"AffectDataset: index {index} out of range for {n} samples")
        index %= n
        item: dict[str, torch.Tensor] = {}
        start = self._first_nonzero_row(self.arrays["text"][index]) if self.trim == "aligned" else 0
        for m in self.modalities:
            x = self.arrays[m][index]
            s = self._first_nonzero_row(x) if self.trim == "per_modality" else start
            item[m] = torch.from_numpy(np.asarray(x[s:] if x.ndim == 2 else x, dtype=np.float32).copy())
        y = np.asarray(self.arrays["labels"][index], dtype=np.float32).reshape(-1)
        y = y[0] if y.size == 1 else y
        if self.labels == "regression":
            item["label"] = torch.as_tensor(y, dtype=torch.float32)
        elif self.labels == "binary":
            item["label"] = torch.from_numpy(np.asarray(np.asarray(y) >= 0, dtype=np.int64))
        else:
            item["label"] = torch.from_numpy(np.asarray(np.rint(np.clip(y, -3, 3)) + 3, dtype=np.int64))
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item


def collate_affect(batch: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items of :class:`AffectDataset`, right-padding sequences with zeros.

    Returns:
        ``{m: Tensor[B, T_max, D_m], f"{m}_mask": Tensor[B, T_max] bool (True = real step),
        "label": Tensor[B] (or [B, C]), "index": Tensor[B]}`` for every modality ``m`` present.
    """
    if not batch:
        raise ValueError("collate_affect: empty batch")
    out: dict[str, torch.Tensor] = {}
    for m in (k for k in AFFECT_MODALITIES if k in batch[0]):
        seqs = [b[m] for b in batch]
        if seqs[0].dim() != 2:
            out[m] = torch.stack(seqs)
            continue
        t_max = max(s.shape[0] for s in seqs)
        x = seqs[0].new_zeros(len(seqs), t_max, seqs[0].shape[1])  # (B, T, D)
        mask = torch.zeros(len(seqs), t_max, dtype=torch.bool)  # (B, T)
        for i, s in enumerate(seqs):
            x[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = True
        out[m], out[f"{m}_mask"] = x, mask
    out["label"] = torch.stack([b["label"] for b in batch])
    out["index"] = torch.stack([b["index"] for b in batch])
    return out


def load_affect(
    path: str | os.PathLike[str],
    *,
    splits: Sequence[str] = AFFECT_SPLITS,
    nonfinite: str = "zero",
) -> AffectData:
    """Load a MOSI / MOSEI pickle (MultiBench or MulT layout) through the safe unpickler.

    Args:
        path: the ``.pkl`` file.
        splits: the split keys that must be present.
        nonfinite: NaN / inf in the features: ``"zero"`` replaces them by 0 (MulT does this
            for audio), ``"keep"`` leaves them, ``"error"`` raises.

    Raises:
        ValueError: naming the file, when it is missing, not a pickle, asks to run code
            (refused by :mod:`~mmfuse.data.safe_pickle`), or has another layout (missing split
            or key, non-array values, sample counts that disagree).
    """
    if nonfinite not in ("zero", "keep", "error"):
        raise ValueError(f"load_affect: nonfinite must be 'zero', 'keep' or 'error', got {nonfinite!r}")
    path = Path(path)
    data = safe_load(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict {{split: {{modality: array}}}}, got {type(data).__name__}")
    missing = [s for s in splits if s not in data]
    if missing:
        raise ValueError(f"{path}: missing splits {missing}; expected {list(splits)}, found {sorted(map(str, data))}")
    out: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, dict[str, int]] = {}
    dims: dict[str, int] | None = None
    for split in splits:
        part = data[split]
        where = f"{path}: split {split!r}"
        if not isinstance(part, dict):
            raise ValueError(f"{where}: expected a dict of arrays, got {type(part).__name__}")
        need = (*AFFECT_MODALITIES, "labels")
        absent = [k for k in need if k not in part]
        if absent:
            raise ValueError(f"{where}: missing keys {absent}; expected {list(need)} (+ optional 'id'), found {sorted(map(str, part))}")
        arrays = {k: _as_array(where, k, part[k]) for k in (*need, *(["id"] if "id" in part else []))}
        n = int(arrays["labels"].shape[0]) if arrays["labels"].ndim else -1
        sizes = {k: (int(v.shape[0]) if v.ndim else None) for k, v in arrays.items()}
        if n < 0 or any(s != n for s in sizes.values()):
            raise ValueError(f"{where}: expected one sample count in every array, got {sizes}")
        counts[split] = {}
        for m in AFFECT_MODALITIES:
            x = arrays[m]
            if x.ndim not in (2, 3) or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
                raise ValueError(f"{where}: {m!r} must be a numeric [N, T, D] (or [N, D]) array, got {x.dtype} {x.shape}")
            arrays[m], counts[split][m] = _fix_nonfinite(x, nonfinite, f"{where}, {m!r}")
        if not np.issubdtype(arrays["labels"].dtype, np.number):
            raise ValueError(f"{where}: 'labels' must be numeric, got {arrays['labels'].dtype}")
        arrays["labels"] = arrays["labels"].reshape(n, -1)
        split_dims = {m: int(arrays[m].shape[-1]) for m in AFFECT_MODALITIES}
        if dims is not None and split_dims != dims:
            raise ValueError(f"{where}: feature sizes {split_dims} differ from the first split's {dims}")
        dims = split_dims
        out[split] = arrays
    return AffectData(path=path, splits=out, nonfinite=counts)


def load_mosi(path: str | os.PathLike[str], **options: Any) -> AffectData:
    """CMU-MOSI (e.g. MultiBench ``mosi_raw.pkl``, MulT ``mosi_data.pkl``); see :func:`load_affect`."""
    return load_affect(path, **options)


def load_mosei(path: str | os.PathLike[str], **options: Any) -> AffectData:
    """CMU-MOSEI (e.g. ``mosei_senti_data.pkl``, ``mosei_raw.pkl``); see :func:`load_affect`."""
    return load_affect(path, **options)

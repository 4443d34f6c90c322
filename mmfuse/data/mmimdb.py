"""MM-IMDb movie-genre classification from ``multimodal_imdb.hdf5``.

Paper: Arevalo, Solorio, Montes-y-Gómez & González, "Gated Multimodal Units for Information
Fusion", ICLR 2017 workshop (dataset and the hdf5 file, github.com/johnarevalo/gmu-mmimdb).
Datasets read from the file (rows are movies, 25,959 of them)::

    features       float [N, 300]           text: averaged word2vec of the plot
    vgg_features   float [N, 4096]          poster: VGG-16 features
    images         uint8 [N, 3, H, W]       poster pixels (only with image="images")
    genres         int   [N, 23]            multi-hot genre labels

Splits are contiguous row ranges, as MultiBench uses them (Liang et al., NeurIPS 2021 Datasets
track; ``datasets/imdb/get_data.py``, ``get_dataloader``): train rows [0, 15552), valid
[15552, 18160), test [18160, 25959) — the train / dev / test split of the original file.

The file is opened lazily, once per process, so datasets can go to ``DataLoader`` workers;
rows are read one at a time, never the whole file. Needs ``h5py`` (the ``data`` extra).

Example::

    train = MMIMDb("multimodal_imdb.hdf5", "train")
    item = train[0]        # {"text": Tensor[300], "image": Tensor[4096], "label": Tensor[23], "index": Tensor[]}
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["MMIMDB_SPLITS", "MMIMDb", "load_mmimdb"]

MMIMDB_SPLITS: dict[str, tuple[int, int]] = {"train": (0, 15552), "valid": (15552, 18160), "test": (18160, 25959)}
"""MultiBench's row ranges [start, stop) of ``multimodal_imdb.hdf5``."""

_IMAGE_KEYS = ("vgg_features", "images")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is in the test extra
        raise ImportError("reading multimodal_imdb.hdf5 needs h5py: pip install 'mmfuse[data]'") from err
    return h5py


class MMIMDb(Dataset):
    """One split of MM-IMDb.

    Args:
        path: ``multimodal_imdb.hdf5``.
        split: a key of ``splits``.
        image: ``"vgg_features"`` (Tensor[4096]) or ``"images"`` (Tensor[3, H, W] float32;
            uint8 pixels are scaled to [0, 1]).
        splits: split -> (start, stop) rows; MultiBench's :data:`MMIMDB_SPLITS` by default.

    Item: ``{"text": Tensor[300] float32, "image": see above, "label": Tensor[23] float32
    multi-hot, "index": Tensor[] int64 (row in the file)}``.

    Raises:
        ValueError: naming the file, when it is not HDF5, lacks a dataset, the datasets
            disagree on the number of rows, or the split's rows are not all in the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str = "train",
        *,
        image: str = "vgg_features",
        splits: Mapping[str, tuple[int, int]] = MMIMDB_SPLITS,
    ) -> None:
        h5py = _h5py()
        self.path = Path(path)
        if image not in _IMAGE_KEYS:
            raise ValueError(f"MMIMDb: image must be one of {_IMAGE_KEYS}, got {image!r}")
        if split not in splits:
            raise ValueError(f"MMIMDb: unknown split {split!r}, expected one of {sorted(splits)}")
        start, stop = (int(v) for v in splits[split])
        if not 0 <= start <= stop:
            raise ValueError(f"MMIMDb: split {split!r} must be a range 0 <= start <= stop, got ({start}, {stop})")
        if not self.path.is_file():
            raise ValueError(f"{self.path}: file does not exist")
        keys = ("features", image, "genres")
        try:
            with h5py.File(self.path, "r") as f:
                missing = [k for k in keys if k not in f]
                if missing:
                    raise ValueError(f"{self.path}: missing datasets {missing}; found {sorted(f.keys())}")
                rows = {k: int(f[k].shape[0]) for k in keys}
                shapes = {k: tuple(f[k].shape[1:]) for k in keys}
        except OSError as err:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({err})") from err
        if len(set(rows.values())) != 1:
            raise ValueError(f"{self.path}: datasets disagree on the number of rows: {rows}")
        n = rows["genres"]
        if stop > n:
            raise ValueError(
                f"{self.path}: has {n} rows, but split {split!r} needs rows [{start}, {stop}) "
                f"(MultiBench's splits expect 25959 rows)"
            )
        self.split, self.image_key, self.start, self.stop = split, image, start, stop
        self.text_dim, self.image_shape, self.num_genres = shapes["features"], shapes[image], shapes["genres"]
        self._handle: Any = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, None
        return state

    def _file(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            self._handle = _h5py().File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"MMIMDb: index {index} out of range for {n} movies in split {self.split!r}")
        row = self.start + index % n
        f = self._file()
        image = np.asarray(f[self.image_key][row])
        image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        return {
            "text": torch.from_numpy(np.asarray(f["features"][row], dtype=np.float32)),
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(np.asarray(f["genres"][row], dtype=np.float32)),
            "index": torch.tensor(row, dtype=torch.int64),
        }


def load_mmimdb(
    path: str | os.PathLike[str],
    *,
    image: str = "vgg_features",
    splits: Mapping[str, tuple[int, int]] = MMIMDB_SPLITS,
) -> dict[str, MMIMDb]:
    """Every split of ``multimodal_imdb.hdf5``: ``{"train": MMIMDb, "valid": ..., "test": ...}``."""
    return {name: MMIMDb(path, name, image=image, splits=splits) for name in splits}

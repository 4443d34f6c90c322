"""Pre-extracted region features of images, read lazily in their published layouts.

Three stores, one interface (:class:`FeatureStore`): ``image_id in store``, ``store[image_id]``
-> :class:`RegionFeatures`, ``store.padded(image_id, max_boxes)`` -> fixed-size arrays with a
mask. Nothing is read whole into memory: files are opened on first use, per process (so a
store can be handed to ``DataLoader`` workers), and one image is read at a time.

- :class:`NpzFeatureDir`: openvqa-style folder, one ``.npz`` per image, named after the
  image (``COCO_val2014_000000000042.jpg.npz``: the image id is the trailing number before
  the first dot). Arrays: ``x`` features, stored [D, N] by openvqa's extractor or [N, D] by
  others (detected per file against ``feature_dim`` and the box count, logged and kept in
  ``store.layout``); ``bbox`` [N, 4] (x1, y1, x2, y2 pixels); ``image_h``, ``image_w``.
- :class:`TsvFeatures`: the bottom-up-attention ``.tsv`` (Anderson et al. 2018): one line per
  image, tab-separated ``image_id, image_w, image_h, num_boxes, boxes, features``; ``boxes``
  and ``features`` are base64 of float32 [N, 4] and [N, D]. The first access scans the file
  once for the byte offset of every line (optionally cached in ``index_path``); each read
  then seeks to one line.
- :class:`H5Features`: the ``.hdf5`` of bottom-up-attention-vqa
  (``tools/detection_features_converter.py``: ``image_features`` [I, N, D], ``image_bb``
  [I, N, 4], ``spatial_features`` [I, N, 6]) or its adaptive variant of ban-vqa
  (flat [total, D] / [total, 4] / [total, 6] plus ``pos_boxes`` [I, 2] row ranges), with an
  image_id -> row map: the ``*_imgid2idx.pkl`` pickle (read with
  :mod:`~mmfuse.data.safe_pickle`), a JSON object, a dict, or an ``image_ids`` dataset in the
  file. Needs ``h5py`` (the ``data`` extra).

Box geometry, per region: ``(x1/w, y1/h, x2/w, y2/h, (x2-x1)/w, (y2-y1)/h)`` with w, h the
image size, the ``spatial_features`` layout of bottom-up-attention-vqa.

Axis letters: N regions of one image, K = ``max_boxes`` after padding, D feature size,
I images in a file.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import load_json, load_npz, save_npz
from .safe_pickle import safe_load

__all__ = [
    "FeatureStore",
    "H5Features",
    "NpzFeatureDir",
    "RegionFeatures",
    "TSV_FIELDS",
    "TsvFeatures",
    "box_geometry",
    "open_features",
    "pad_regions",
]

log = logging.getLogger(__name__)


def box_geometry(boxes: np.ndarray, image_w: float, image_h: float) -> np.ndarray:
    """Normalised geometry float32 [N, 6] of boxes [N, 4] (x1, y1, x2, y2) in a w x h image."""
    if image_w <= 0 or image_h <= 0:
        raise ValueError(f"box_geometry: image size must be positive, got w={image_w}, h={image_h}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = b[:, 0] / image_w, b[:, 1] / image_h, b[:, 2] / image_w, b[:, 3] / image_h
    return np.stack([x1, y1, x2, y2, x2 - x1, y2 - y1], axis=1).astype(np.float32)


@dataclass(frozen=True)
class RegionFeatures:
    """The regions of one image.

    Attributes:
        image_id: the image.
        features: float32 [N, D].
        boxes: float32 [N, 4], (x1, y1, x2, y2) in pixels.
        geometry: float32 [N, 6], see :func:`box_geometry`.
        image_w, image_h: image size in pixels (``None`` where the format does not store it).
    """

    image_id: int
    features: np.ndarray
    boxes: np.ndarray
    geometry: np.ndarray
    image_w: float | None = None
    image_h: float | None = None

    @property
    def num_boxes(self) -> int:
        return int(self.features.shape[0])


def pad_regions(region: RegionFeatures, max_boxes: int) -> dict[str, np.ndarray]:
    """Truncate / zero-pad to ``max_boxes`` rows.

    Returns:
        ``features`` float32 [K, D], ``boxes`` float32 [K, 4], ``geometry`` float32 [K, 6],
        ``mask`` bool [K] (True = a real region); K = ``max_boxes``.
    """
    if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
        raise ValueError(f"pad_regions: max_boxes must be an int >= 1, got {max_boxes!r}")
    n = min(region.num_boxes, max_boxes)
    out = {}
    for name, arr in (("features", region.features), ("boxes", region.boxes), ("geometry", region.geometry)):
        padded = np.zeros((max_boxes, arr.shape[1]), dtype=np.float32)
        padded[:n] = arr[:n]
        out[name] = padded
    mask = np.zeros(max_boxes, dtype=bool)
    mask[:n] = True
    out["mask"] = mask
    return out


def _check_region(source: str, features: np.ndarray, boxes: np.ndarray, feature_dim: int | None) -> None:
    if features.ndim != 2 or boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != features.shape[0]:
        raise ValueError(
            f"{source}: expected features [N, D] and boxes [N, 4] with one N, got {features.shape} and {boxes.shape}"
        )
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise ValueError(f"{source}: expected features of size {feature_dim}, got shape {features.shape}")


class FeatureStore(ABC):
    """Region features by image id. Subclasses set ``path`` / ``feature_dim`` and define
    ``image_ids``, ``__contains__`` and ``_read``."""

    path: Path
    feature_dim: int | None

    @abstractmethod
    def image_ids(self) -> list[int]:
        """Every image id in the store, sorted."""

    @abstractmethod
    def _read(self, image_id: int) -> RegionFeatures: ...

    @abstractmethod
    def __contains__(self, image_id: object) -> bool: ...

    def __len__(self) -> int:
        return len(self.image_ids())

    def __getitem__(self, image_id: int) -> RegionFeatures:
        if image_id not in self:
            raise KeyError(f"{self.path}: no features for image id {image_id}")
        return self._read(int(image_id))

    def padded(self, image_id: int, max_boxes: int) -> dict[str, np.ndarray]:
        """:func:`pad_regions` of ``self[image_id]``."""
        return pad_regions(self[image_id], max_boxes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


# ------------------------------------------------------------------ openvqa per-image .npz

_TRAILING_NUMBER = re.compile(r"(\d+)$")


class NpzFeatureDir(FeatureStore):
    """openvqa-style folder of per-image ``.npz`` files (see the module docstring).

    Args:
        root: the folder (searched recursively with ``recursive=True``).
        feature_dim: D, used to tell [D, N] from [N, D]; ``None`` decides by the box count only.

    Attributes:
        layout: ``"DxN"`` or ``"NxD"``, how ``x`` was stored in the last file read
            (``None`` before any read); a change of layout between files is logged.
    """

    def __init__(self, root: str | os.PathLike[str], feature_dim: int | None = 2048, *, recursive: bool = False):
        self.path = Path(root)
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: expected a folder of per-image .npz feature files")
        self.feature_dim = feature_dim
        self.layout: str | None = None
        files = sorted(self.path.rglob("*.npz") if recursive else self.path.glob("*.npz"))
        self._files: dict[int, Path] = {}
        for f in files:
            m = _TRAILING_NUMBER.search(f.name.split(".")[0])
            if m is None:
                raise ValueError(f"{f}: cannot read an image id from the file name; expected e.g. COCO_val2014_000000000042.jpg.npz")
            image_id = int(m.group(1))
            if image_id in self._files:
                raise ValueError(f"{self.path}: image id {image_id} appears twice: {self._files[image_id].name}, {f.name}")
            self._files[image_id] = f
        if not self._files:
            raise ValueError(f"{self.path}: no .npz feature files found")

    def image_ids(self) -> list[int]:
        return sorted(self._files)

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, (int, np.integer)) and int(image_id) in self._files

    def _detect(self, path: Path, x: np.ndarray, n_boxes: int | None) -> str:
        if x.ndim != 2:
            raise ValueError(f"{path}: 'x' must be 2-D ([D, N] or [N, D]), got shape {x.shape}")
        a, b = x.shape
        d = self.feature_dim
        by_dim = None if d is None else ("NxD" if b == d and a != d else "DxN" if a == d and b != d else None)
        by_count = None if n_boxes is None else ("NxD" if a == n_boxes and b != n_boxes else "DxN" if b == n_boxes and a != n_boxes else None)
        layout = by_dim or by_count
        if layout is None or (by_dim and by_count and by_dim != by_count):
            raise ValueError(
                f"{path}: cannot tell the layout of 'x' with shape {x.shape}: expected [{d}, N] or [N, {d}] "
                f"with N = {n_boxes} boxes"
            )
        if layout != self.layout:
            if self.layout is not None:
                log.warning("%s: 'x' stored %s, earlier files %s", path, layout, self.layout)
            else:
                log.info("%s: 'x' is stored %s", self.path, layout)
            self.layout = layout
        return layout

    def _read(self, image_id: int) -> RegionFeatures:
        path = self._files[image_id]
        arrays = load_npz(path, keys=("x", "bbox", "image_h", "image_w"))
        boxes = arrays["bbox"].astype(np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{path}: 'bbox' must be [N, 4], got shape {boxes.shape}")
        x = arrays["x"]
        features = (x.T if self._detect(path, x, boxes.shape[0]) == "DxN" else x).astype(np.float32)
        _check_region(str(path), features, boxes, self.feature_dim)
        try:
            w, h = float(arrays["image_w"]), float(arrays["image_h"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: 'image_w' and 'image_h' must be scalars ({err})") from err
        return RegionFeatures(image_id, np.ascontiguousarray(features), boxes, box_geometry(boxes, w, h), w, h)


# ------------------------------------------------------------------ bottom-up-attention .tsv

TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")


class TsvFeatures(FeatureStore):
    """bottom-up-attention ``.tsv`` with a byte-offset index (see the module docstring).

    Args:
        path: the ``.tsv`` file.
        feature_dim: D to check against, or ``None`` (inferred per line from the features).
        index_path: where to cache the offset index (an ``.npz``); reused while the tsv's size
            and modification time match. ``None`` keeps the index in memory only.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        feature_dim: int | None = None,
        *,
        index_path: str | os.PathLike[str] | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: file does not exist")
        self.feature_dim = feature_dim
        self.index_path = Path(index_path) if index_path is not None else None
        self._index: dict[int, tuple[int, int, int]] | None = None  # id -> (offset, length, line number)
        self._handle: Any = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, None
        return state

    def _stamp(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns

    def _load_cached_index(self) -> dict[int, tuple[int, int, int]] | None:
        if self.index_path is None or not self.index_path.is_file():
            return None
        try:
            a = load_npz(self.index_path, keys=("ids", "offsets", "lengths", "lines", "stamp"))
        except ValueError:
            return None
        if tuple(int(v) for v in a["stamp"]) != self._stamp():
            return None
        return {int(i): (int(o), int(n), int(k)) for i, o, n, k in zip(a["ids"], a["offsets"], a["lengths"], a["lines"])}

    def _build_index(self) -> dict[int, tuple[int, int, int]]:
        index: dict[int, tuple[int, int, int]] = {}
        offset = 0
        with open(self.path, "rb") as f:
            for line_no, line in enumerate(f, start=1):
                size = len(line)
                head = line[: line.find(b"\t")] if b"\t" in line else line.strip()
                if line_no == 1 and head == b"image_id":  # tolerate a header row
                    offset += size
                    continue
                if line.strip():
                    try:
                        image_id = int(head)
                    except ValueError:
                        raise ValueError(
                            f"{self.path}: line {line_no}: expected an integer image_id in the first column, got {head[:40]!r}"
                        ) from None
                    if image_id in index:
                        raise ValueError(
                            f"{self.path}: image id {image_id} on line {line_no} already appeared on line {index[image_id][2]}"
                        )
                    index[image_id] = (offset, size, line_no)
                offset += size
        if not index:
            raise ValueError(f"{self.path}: no feature lines found")
        if self.index_path is not None:
            ids = np.fromiter(index, dtype=np.int64, count=len(index))
            rows = np.array(list(index.values()), dtype=np.int64).reshape(-1, 3)
            save_npz(self.index_path, ids=ids, offsets=rows[:, 0], lengths=rows[:, 1], lines=rows[:, 2],
                     stamp=np.array(self._stamp(), dtype=np.int64))
        return index

    @property
    def index(self) -> dict[int, tuple[int, int, int]]:
        """image id -> (byte offset, byte length, line number); built on first use."""
        if self._index is None:
            self._index = self._load_cached_index() or self._build_index()
            log.info("%s: indexed %d images", self.path, len(self._index))
        return self._index

    def image_ids(self) -> list[int]:
        return sorted(self.index)

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, (int, np.integer)) and int(image_id) in self.index

    def _file(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.path, "rb")  # noqa: SIM115  (kept open for seeks; one per process)
            self._pid = os.getpid()
        return self._handle

    def _read(self, image_id: int) -> RegionFeatures:
        offset, length, line_no = self.index[image_id]
        f = self._file()
        f.seek(offset)
        line = f.read(length)
        where = f"{self.path}: line {line_no} (image {image_id})"
        fields = line.rstrip(b"\r\n").split(b"\t")
        if len(fields) != len(TSV_FIELDS):
            raise ValueError(f"{where}: expected {len(TSV_FIELDS)} tab-separated fields {TSV_FIELDS}, got {len(fields)}")
        try:
            w, h, n = float(fields[1]), float(fields[2]), int(fields[3])
            boxes = np.frombuffer(base64.b64decode(fields[4], validate=True), dtype=np.float32)
            feats = np.frombuffer(base64.b64decode(fields[5], validate=True), dtype=np.float32)
        except (ValueError, binascii.Error) as err:
            raise ValueError(f"{where}: unreadable field ({type(err).__name__}: {err})") from err
        if n < 1 or boxes.size != 4 * n or feats.size % n:
            raise ValueError(
                f"{where}: num_boxes = {n} but boxes hold {boxes.size} floats (expected {4 * n}) "
                f"and features {feats.size} (expected a multiple of {n})"
            )
        boxes, feats = boxes.reshape(n, 4).copy(), feats.reshape(n, -1).copy()
        _check_region(where, feats, boxes, self.feature_dim)
        return RegionFeatures(image_id, feats, boxes, box_geometry(boxes, w, h), w, h)


# ------------------------------------------------------------------ bottom-up-attention-vqa .hdf5


def _require_h5py() -> Any:
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is in the test extra
        raise ImportError("reading .h5/.hdf5 files needs h5py: pip install 'mmfuse[data]'") from err
    return h5py


class H5Features(FeatureStore):
    """bottom-up-attention-vqa / ban-vqa ``.hdf5`` features (see the module docstring).

    Args:
        path: the ``.h5`` / ``.hdf5`` file.
        id_map: image id -> row: a mapping, a path to the ``*_imgid2idx.pkl`` pickle or a
            ``.json`` object; ``None`` uses an ``image_ids`` dataset [I] in the file.
        feature_dim: D to check against, or ``None``.

    The file is opened on first read in each process (never in ``__init__`` beyond a check
    of its layout), so the store can be sent to ``DataLoader`` workers.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        id_map: Mapping[int, int] | str | os.PathLike[str] | None = None,
        feature_dim: int | None = None,
    ):
        h5py = _require_h5py()
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: file does not exist")
        self.feature_dim = feature_dim
        self._handle: Any = None
        self._pid: int | None = None
        try:
            with h5py.File(self.path, "r") as f:
                self._check_layout(f)
                file_ids = f["image_ids"][()] if "image_ids" in f else None
        except OSError as err:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({err})") from err
        self._rows = self._id_map(id_map, file_ids)
        bad = {i: r for i, r in self._rows.items() if not 0 <= r < self.num_images}
        if bad:
            raise ValueError(
                f"{self.path}: id map points outside the {self.num_images} images of the file, e.g. {dict(list(bad.items())[:3])}"
            )

    def _check_layout(self, f: Any) -> None:
        need = ("image_features", "image_bb", "spatial_features")
        missing = [k for k in need if k not in f]
        if missing:
            raise ValueError(f"{self.path}: missing datasets {missing}; found {sorted(f.keys())}")
        feats, bb, sp = (f[k] for k in need)
        self.adaptive = "pos_boxes" in f
        if self.adaptive:  # ban-vqa: flat rows + [I, 2] ranges
            ok = feats.ndim == 2 and bb.shape == (feats.shape[0], 4) and sp.shape == (feats.shape[0], 6)
            self.num_images = int(f["pos_boxes"].shape[0])
            if not ok or f["pos_boxes"].ndim != 2 or f["pos_boxes"].shape[1] != 2:
                raise ValueError(
                    f"{self.path}: adaptive layout expects image_features [T, D], image_bb [T, 4], "
                    f"spatial_features [T, 6], pos_boxes [I, 2]; got {feats.shape}, {bb.shape}, {sp.shape}, "
                    f"{f['pos_boxes'].shape}"
                )
        else:  # bottom-up-attention-vqa: fixed N boxes per image
            ok = feats.ndim == 3 and bb.shape == (*feats.shape[:2], 4) and sp.shape == (*feats.shape[:2], 6)
            self.num_images = int(feats.shape[0])
            if not ok:
                raise ValueError(
                    f"{self.path}: expected image_features [I, N, D], image_bb [I, N, 4], spatial_features [I, N, 6]; "
                    f"got {feats.shape}, {bb.shape}, {sp.shape}"
                )
        d = int(feats.shape[-1])
        if self.feature_dim is not None and d != self.feature_dim:
            raise ValueError(f"{self.path}: expected features of size {self.feature_dim}, got {d}")
        self.feature_dim = d

    def _id_map(self, id_map: Any, file_ids: np.ndarray | None) -> dict[int, int]:
        if id_map is None:
            if file_ids is None:
                raise ValueError(
                    f"{self.path}: no image id map: pass id_map (the *_imgid2idx.pkl, a .json or a dict) "
                    "or store an 'image_ids' dataset in the file"
                )
            if file_ids.shape != (self.num_images,):
                raise ValueError(f"{self.path}: 'image_ids' must be [{self.num_images}], got {file_ids.shape}")
            return {int(i): r for r, i in enumerate(file_ids)}
        source = str(id_map) if isinstance(id_map, (str, os.PathLike)) else "id_map"
        if isinstance(id_map, (str, os.PathLike)):
            p = Path(id_map)
            raw = load_json(p) if p.suffix == ".json" else safe_load(p)
        else:
            raw = id_map
        if not isinstance(raw, Mapping):
            raise ValueError(f"{source}: expected a mapping image id -> row, got {type(raw).__name__}")
        try:
            return {int(k): int(v) for k, v in raw.items()}
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: image ids and rows must be integers ({err})") from err

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, None
        return state

    def _file(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            self._handle = _require_h5py().File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def image_ids(self) -> list[int]:
        return sorted(self._rows)

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, (int, np.integer)) and int(image_id) in self._rows

    def _read(self, image_id: int) -> RegionFeatures:
        f, row = self._file(), self._rows[image_id]
        if self.adaptive:
            start, stop = (int(v) for v in f["pos_boxes"][row])
            sel: Any = slice(start, stop)
        else:
            sel = row
        feats = np.asarray(f["image_features"][sel], dtype=np.float32)
        boxes = np.asarray(f["image_bb"][sel], dtype=np.float32)
        geometry = np.asarray(f["spatial_features"][sel], dtype=np.float32)
        _check_region(f"{self.path}: image {image_id} (row {row})", feats, boxes, self.feature_dim)
        return RegionFeatures(image_id, feats, boxes, geometry)


# ------------------------------------------------------------------ by extension


def open_features(path: str | os.PathLike[str], **options: Any) -> FeatureStore:
    """The store for ``path``: a folder -> :class:`NpzFeatureDir`, ``.tsv`` -> :class:`TsvFeatures`,
    ``.h5`` / ``.hdf5`` -> :class:`H5Features`; ``options`` go to its constructor."""
    p = Path(path)
    if p.is_dir():
        return NpzFeatureDir(p, **options)
    suffix = p.suffix.lower()
    if suffix == ".tsv" or p.name.lower().endswith((".tsv.0", ".tsv.1", ".tsv.2", ".tsv.3")):
        return TsvFeatures(p, **options)
    if suffix in (".h5", ".hdf5"):
        return H5Features(p, **options)
    raise ValueError(f"{p}: unknown feature format; expected a folder of .npz, a .tsv, or a .h5/.hdf5 file")

"""Atomic writers and strict readers of mmfuse.data._io."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mmfuse.data import _io


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _io.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MMFUSE_CACHE")
    assert _io.cache_dir() == tmp_path / "xdg" / "mmfuse"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _io.cache_dir() == tmp_path / "home" / ".cache" / "mmfuse"


def test_config_hash_is_order_independent_and_sensitive():
    assert _io.config_hash({"a": 1, "b": [2, 3]}) == _io.config_hash({"b": [2, 3], "a": 1})
    assert _io.config_hash({"a": 1}) != _io.config_hash({"a": 2})


def test_npz_roundtrip_keeps_values_and_dtypes(tmp_path):
    arrays = {
        "u8": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        "f32": np.linspace(-1, 1, 7, dtype=np.float32),
        "b": np.array([True, False]),
        "i16": np.array([[-3, 5]], dtype=np.int16),
    }
    path = _io.save_npz(tmp_path / "sub" / "a.npz", **arrays)
    assert path == tmp_path / "sub" / "a.npz"
    back = _io.load_npz(path, keys=arrays)
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    assert _leftovers(tmp_path / "sub") == ["a.npz"]


def test_save_npz_refuses_object_arrays(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        _io.save_npz(tmp_path / "a.npz", file=np.zeros(1))
    with pytest.raises(ValueError, match="'bad'.*object"):
        _io.save_npz(tmp_path / "a.npz", bad=np.array([{"x": 1}], dtype=object))
    assert not (tmp_path / "a.npz").exists()


@pytest.fixture(params=["savez", "savez_compressed"])
def writer_name(request):
    return request.param


def _failing_savez(file, *args, **kwargs):
    file.write(b"PK\x03\x04 half of an archive")
    raise RuntimeError("disk died midway")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch, writer_name):
    monkeypatch.setattr(np, writer_name, _failing_savez)
    target = tmp_path / "out" / "train.npz"
    with pytest.raises(RuntimeError, match="midway"):
        _io.save_npz(target, compress=writer_name == "savez_compressed", x=np.zeros(3))
    assert not target.exists()
    assert _leftovers(target.parent) == []  # the temp file is gone too


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, writer_name):
    target = tmp_path / "train.npz"
    compress = writer_name == "savez_compressed"
    _io.save_npz(target, compress=compress, x=np.arange(5))
    before = target.read_bytes()
    monkeypatch.setattr(np, writer_name, _failing_savez)
    with pytest.raises(RuntimeError):
        _io.save_npz(target, compress=compress, x=np.arange(9))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == ["train.npz"]
    monkeypatch.undo()
    assert np.array_equal(_io.load_npz(target)["x"], np.arange(5))


def test_atomic_write_bytes_cleans_up_when_fsync_fails(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        _io.atomic_write_bytes(tmp_path / "blob.bin", b"payload")
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    _io.atomic_write_bytes(tmp_path / "blob.bin", b"payload")
    assert (tmp_path / "blob.bin").read_bytes() == b"payload"


def test_atomic_write_bytes_rejects_text(tmp_path):
    with pytest.raises(ValueError, match="expected bytes, got str"):
        _io.atomic_write_bytes(tmp_path / "a", "text")  # type: ignore[arg-type]


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("damage", ["truncate", "flip_middle", "garbage", "empty"])
def test_corrupt_npz_raises_value_error_naming_the_file(tmp_path, damage, compress):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.integers(0, 9, 4096), "y": rng.random((64, 64))}
    path = _io.save_npz(tmp_path / "data.npz", compress=compress, **arrays)
    assert all(np.array_equal(v, arrays[k]) for k, v in _io.load_npz(path).items())
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip_middle":
        mid = len(raw) // 4  # inside the data of the first member
        raw[mid : mid + 16] = bytes(b ^ 0xFF for b in raw[mid : mid + 16])
    elif damage == "garbage":
        raw = bytearray(b"this is not a zip file at all" * 10)
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="data.npz"):
        _io.load_npz(path)


def test_missing_file_and_missing_keys(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.npz: file does not exist"):
        _io.load_npz(tmp_path / "nope.npz")
    path = _io.save_npz(tmp_path / "a.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match=r"a\.npz: missing arrays \['y'\]"):
        _io.load_npz(path, keys=["x", "y"])


def test_load_npz_never_unpickles(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, obj=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz"):
        _io.load_npz(path)


def test_json_roundtrip_and_corruption(tmp_path):
    obj = {"b": [1, 2], "a": {"x": "é"}}
    path = _io.save_json(tmp_path / "meta.json", obj)
    assert _io.load_json(path) == obj
    assert path.read_text(encoding="utf-8") == _io.save_json(tmp_path / "m2.json", dict(reversed(obj.items()))).read_text(encoding="utf-8")
    path.write_text('{"a": ', encoding="utf-8")
    with pytest.raises(ValueError, match="meta.json"):
        _io.load_json(path)


def test_is_complete_dataset(tmp_path):
    config = {"seed": 0, "n": 3}
    root = _io.write_dataset(tmp_path / "ds", {"train": {"x": np.arange(3)}}, {"name": "toy", "generator_version": 1, "config": config})
    assert _io.is_complete_dataset(root, "toy", 1, config)
    assert not _io.is_complete_dataset(root, "toy", 2, config)
    assert not _io.is_complete_dataset(root, "toy", 1, {"seed": 1, "n": 3})
    assert not _io.is_complete_dataset(root, "other", 1, config)
    with open(root / "train.npz", "ab") as f:  # a size that no longer matches meta.json
        f.write(b"x")
    assert not _io.is_complete_dataset(root, "toy", 1, config)
    (root / "meta.json").unlink()
    assert not _io.is_complete_dataset(root, "toy", 1, config)

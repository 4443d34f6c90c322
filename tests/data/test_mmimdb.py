"""MM-IMDb: MultiBench's row ranges over a full-length (but narrow) multimodal_imdb.hdf5."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from mmfuse.data import mmimdb  # noqa: E402

ROWS = 25959
TEXT_DIM, VGG_DIM, GENRES = 3, 4, 23


def write_hdf5(path, rows=ROWS, *, images=False, drop=None):
    rng = np.random.default_rng(0)
    arrays = {
        "features": np.arange(rows, dtype=np.float32)[:, None].repeat(TEXT_DIM, 1),  # row r holds r
        "vgg_features": rng.standard_normal((rows, VGG_DIM)).astype(np.float32),
        "genres": (rng.random((rows, GENRES)) < 0.2).astype(np.int8),
    }
    if images:
        arrays["images"] = rng.integers(0, 256, (rows, 3, 4, 2), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if k != drop:
                f.create_dataset(k, data=v)
    return arrays


@pytest.fixture(scope="module")
def full_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mmimdb") / "multimodal_imdb.hdf5"
    return path, write_hdf5(path)


def test_multibench_splits(full_file):
    path, arrays = full_file
    splits = mmimdb.load_mmimdb(path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 15552, "valid": 2608, "test": 7799}
    for name, first in (("train", 0), ("valid", 15552), ("test", 18160)):
        item = splits[name][0]
        assert item["index"].item() == first and item["text"].tolist() == [float(first)] * TEXT_DIM
    last = splits["test"][-1]
    assert last["index"].item() == ROWS - 1
    item = splits["valid"][5]
    assert item["image"].shape == (VGG_DIM,) and item["image"].dtype == torch.float32
    np.testing.assert_array_equal(item["image"].numpy(), arrays["vgg_features"][15557])
    assert item["label"].shape == (GENRES,) and item["label"].dtype == torch.float32
    np.testing.assert_array_equal(item["label"].numpy(), arrays["genres"][15557])
    with pytest.raises(IndexError, match="out of range for 2608 movies"):
        splits["valid"][2608]


def test_dataloader_and_pickling(full_file):
    path, _ = full_file
    ds = mmimdb.MMIMDb(path, "test")
    ds[0]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[1]["index"].item() == 18161
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch["text"].shape == (8, TEXT_DIM) and batch["label"].shape == (8, GENRES)


def test_images_and_custom_splits(tmp_path):
    arrays = write_hdf5(tmp_path / "small.hdf5", rows=10, images=True)
    ds = mmimdb.MMIMDb(tmp_path / "small.hdf5", "b", image="images", splits={"a": (0, 6), "b": (6, 10)})
    assert len(ds) == 4
    img = ds[1]["image"]
    assert img.shape == (3, 4, 2) and img.dtype == torch.float32
    np.testing.assert_allclose(img.numpy(), arrays["images"][7] / 255.0, rtol=1e-6)


def test_errors_name_the_file(tmp_path):
    write_hdf5(tmp_path / "short.hdf5", rows=100)
    with pytest.raises(ValueError, match=r"short\.hdf5: has 100 rows, but split 'train' needs rows \[0, 15552\)"):
        mmimdb.MMIMDb(tmp_path / "short.hdf5")
    write_hdf5(tmp_path / "nogenres.hdf5", rows=10, drop="genres")
    with pytest.raises(ValueError, match=r"nogenres\.hdf5: missing datasets \['genres'\]"):
        mmimdb.MMIMDb(tmp_path / "nogenres.hdf5", splits={"train": (0, 5)})
    with h5py.File(tmp_path / "ragged.hdf5", "w") as f:
        f["features"] = np.zeros((10, 3), np.float32)
        f["vgg_features"] = np.zeros((9, 4), np.float32)
        f["genres"] = np.zeros((10, 23), np.int8)
    with pytest.raises(ValueError, match=r"ragged\.hdf5: datasets disagree on the number of rows"):
        mmimdb.MMIMDb(tmp_path / "ragged.hdf5", splits={"train": (0, 5)})
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text\.hdf5: not a readable HDF5 file"):
        mmimdb.MMIMDb(tmp_path / "text.hdf5")
    with pytest.raises(ValueError, match=r"missing\.hdf5: file does not exist"):
        mmimdb.MMIMDb(tmp_path / "missing.hdf5")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        mmimdb.MMIMDb(tmp_path / "short.hdf5", "dev")
    with pytest.raises(ValueError, match="image must be one of"):
        mmimdb.MMIMDb(tmp_path / "short.hdf5", image="posters")

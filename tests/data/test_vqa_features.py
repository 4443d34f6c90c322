"""Region-feature stores: the same images written in every published layout read back alike."""
from __future__ import annotations

import base64
import json
import logging
import pickle

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from mmfuse.data import vqa_features as vf  # noqa: E402

D = 16
IMAGES = {  # image_id -> (num boxes, width, height)
    9: (3, 640.0, 480.0),
    42: (5, 320.0, 200.0),
    1000: (2, 100.0, 50.0),
}


def _truth(seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for image_id, (n, w, h) in IMAGES.items():
        x1 = rng.uniform(0, w / 2, n)
        y1 = rng.uniform(0, h / 2, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, n), y1 + rng.uniform(1, h / 2, n)], 1).astype(np.float32)
        out[image_id] = {"features": rng.standard_normal((n, D)).astype(np.float32), "boxes": boxes, "w": w, "h": h}
    return out


TRUTH = _truth()


def _geometry_by_hand(boxes, w, h):
    rows = []
    for x1, y1, x2, y2 in boxes.tolist():
        rows.append([x1 / w, y1 / h, x2 / w, y2 / h, (x2 - x1) / w, (y2 - y1) / h])
    return np.array(rows, dtype=np.float32)


def write_npz_dir(folder, transposed=True):
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, t in TRUTH.items():
        x = t["features"].T if transposed else t["features"]  # openvqa stores [D, N]
        np.savez(folder / f"COCO_val2014_{image_id:012d}.jpg.npz", x=x, bbox=t["boxes"],
                 num_bbox=np.array(len(t["boxes"])), image_h=np.array(t["h"]), image_w=np.array(t["w"]))
    return folder


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode("ascii")


def tsv_line(image_id, t) -> str:
    return "\t".join([str(image_id), str(int(t["w"])), str(int(t["h"])), str(len(t["boxes"])), _b64(t["boxes"]), _b64(t["features"])]) + "\n"


def write_tsv(path):
    path.write_text("".join(tsv_line(i, t) for i, t in TRUTH.items()), encoding="ascii")
    return path


def write_h5_fixed(path, n_boxes=5):
    """bottom-up-attention-vqa layout: [I, N, D]; images with fewer boxes are zero-filled here."""
    ids = list(TRUTH)
    with h5py.File(path, "w") as f:
        feats = f.create_dataset("image_features", (len(ids), n_boxes, D), "f")
        bb = f.create_dataset("image_bb", (len(ids), n_boxes, 4), "f")
        sp = f.create_dataset("spatial_features", (len(ids), n_boxes, 6), "f")
        for row, image_id in enumerate(reversed(ids)):  # rows in another order than the ids
            t = TRUTH[image_id]
            n = len(t["boxes"])
            feats[row, :n], bb[row, :n] = t["features"], t["boxes"]
            sp[row, :n] = _geometry_by_hand(t["boxes"], t["w"], t["h"])
    return {image_id: row for row, image_id in enumerate(reversed(ids))}


def write_h5_adaptive(path):
    """ban-vqa layout: flat rows and pos_boxes [I, 2]."""
    ids = list(TRUTH)
    total = sum(len(TRUTH[i]["boxes"]) for i in ids)
    rows = {}
    with h5py.File(path, "w") as f:
        feats = f.create_dataset("image_features", (total, D), "f")
        bb = f.create_dataset("image_bb", (total, 4), "f")
        sp = f.create_dataset("spatial_features", (total, 6), "f")
        pos = f.create_dataset("pos_boxes", (len(ids), 2), dtype="int32")
        start = 0
        for row, image_id in enumerate(ids):
            t = TRUTH[image_id]
            n = len(t["boxes"])
            feats[start:start + n], bb[start:start + n] = t["features"], t["boxes"]
            sp[start:start + n] = _geometry_by_hand(t["boxes"], t["w"], t["h"])
            pos[row] = (start, start + n)
            rows[image_id] = row
            start += n
        f.create_dataset("image_ids", data=np.array(ids, dtype=np.int64))
    return rows


@pytest.fixture(params=["npz_DxN", "npz_NxD", "tsv", "h5_fixed_pkl", "h5_adaptive"])
def store(request, tmp_path):
    kind = request.param
    if kind.startswith("npz"):
        return vf.NpzFeatureDir(write_npz_dir(tmp_path / "feats", transposed=kind == "npz_DxN"), feature_dim=D)
    if kind == "tsv":
        return vf.TsvFeatures(write_tsv(tmp_path / "feats.tsv"), feature_dim=D)
    if kind == "h5_fixed_pkl":
        rows = write_h5_fixed(tmp_path / "val36.hdf5")
        (tmp_path / "val36_imgid2idx.pkl").write_bytes(pickle.dumps(rows, protocol=2))
        return vf.H5Features(tmp_path / "val36.hdf5", id_map=tmp_path / "val36_imgid2idx.pkl")
    write_h5_adaptive(tmp_path / "val.hdf5")
    return vf.H5Features(tmp_path / "val.hdf5")  # ids from the file's image_ids dataset


def test_every_store_reads_the_same_regions(store):
    assert store.image_ids() == sorted(IMAGES) and len(store) == 3
    assert 42 in store and 43 not in store and "42" not in store
    fixed = isinstance(store, vf.H5Features) and not store.adaptive
    for image_id, t in TRUTH.items():
        r = store[image_id]
        n = len(t["boxes"])
        assert r.image_id == image_id and r.features.dtype == np.float32
        feats, boxes, geom = (r.features[:n], r.boxes[:n], r.geometry[:n]) if fixed else (r.features, r.boxes, r.geometry)
        assert r.num_boxes == (5 if fixed else n)
        np.testing.assert_array_equal(feats, t["features"])
        np.testing.assert_array_equal(boxes, t["boxes"])
        np.testing.assert_allclose(geom, _geometry_by_hand(t["boxes"], t["w"], t["h"]), rtol=1e-6, atol=1e-7)
    with pytest.raises(KeyError, match="no features for image id 43"):
        store[43]


def test_padding_and_mask(store):
    p = store.padded(9, 4)  # 3 real boxes
    assert p["features"].shape == (4, D) and p["boxes"].shape == (4, 4) and p["geometry"].shape == (4, 6)
    expect_mask = [True] * 4 if isinstance(store, vf.H5Features) and not store.adaptive else [True, True, True, False]
    assert p["mask"].tolist() == expect_mask and p["mask"].dtype == bool
    if not expect_mask[-1]:
        assert not p["features"][3].any() and not p["geometry"][3].any()
    p = store.padded(42, 2)  # 5 boxes, truncated
    assert p["mask"].all()
    np.testing.assert_array_equal(p["features"], TRUTH[42]["features"][:2])


def test_stores_survive_pickling_for_workers(store):
    store[9]  # open handles first
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone[1000].features[:2], TRUTH[1000]["features"])


def test_h5_store_in_dataloader_workers(tmp_path):
    write_h5_adaptive(tmp_path / "val.hdf5")
    store = vf.H5Features(tmp_path / "val.hdf5")
    store[9]  # the parent has an open handle; each worker must open its own

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.from_numpy(store.padded(list(IMAGES)[i % 3], 5)["features"])

    loader = torch.utils.data.DataLoader(Items(), batch_size=2, num_workers=2)
    batches = torch.cat(list(loader))
    for i, image_id in enumerate(list(IMAGES) * 2):
        n = len(TRUTH[image_id]["boxes"])
        assert torch.equal(batches[i, :n], torch.from_numpy(TRUTH[image_id]["features"]))


def test_box_geometry_by_hand():
    g = vf.box_geometry(np.array([[10, 20, 30, 60]], dtype=np.float32), 100, 200)
    assert g[0].tolist() == pytest.approx([0.1, 0.1, 0.3, 0.3, 0.2, 0.2])
    with pytest.raises(ValueError, match="image size must be positive"):
        vf.box_geometry(np.zeros((1, 4)), 0, 10)
    r = vf.RegionFeatures(1, np.ones((2, 3), np.float32), np.zeros((2, 4), np.float32), np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match="max_boxes must be an int >= 1"):
        vf.pad_regions(r, 0)


# ------------------------------------------------------------------ npz specifics


def test_npz_layout_is_detected_and_logged(tmp_path, caplog):
    store = vf.NpzFeatureDir(write_npz_dir(tmp_path / "a", transposed=True), feature_dim=D)
    assert store.layout is None
    with caplog.at_level(logging.INFO, logger="mmfuse.data.vqa_features"):
        store[9]
    assert store.layout == "DxN" and "stored DxN" in caplog.text
    store = vf.NpzFeatureDir(write_npz_dir(tmp_path / "b", transposed=False), feature_dim=None)  # by box count
    store[42]
    assert store.layout == "NxD"


def test_npz_errors_name_the_file(tmp_path):
    folder = write_npz_dir(tmp_path / "f")
    store = vf.NpzFeatureDir(folder, feature_dim=32)
    with pytest.raises(ValueError, match=r"000000000009\.jpg\.npz: expected features of size 32, got shape \(3, 16\)"):
        store[9]
    bad = folder / "COCO_val2014_000000000042.jpg.npz"
    np.savez(bad, x=np.zeros((D, 5), np.float32), bbox=np.zeros((4, 4), np.float32), image_h=np.array(2), image_w=np.array(2))
    with pytest.raises(ValueError, match=r"000000000042\.jpg\.npz: expected features \[N, D\] and boxes \[N, 4\] with one N, got \(5, 16\) and \(4, 4\)"):
        vf.NpzFeatureDir(folder, feature_dim=D)[42]  # x is [D, 5], but 4 boxes
    np.savez(bad, x=np.zeros((4, 4), np.float32), bbox=np.zeros((4, 4), np.float32), image_h=np.array(2), image_w=np.array(2))
    with pytest.raises(ValueError, match=r"000000000042\.jpg\.npz: cannot tell the layout of 'x' with shape \(4, 4\)"):
        vf.NpzFeatureDir(folder, feature_dim=None)[42]  # square: ambiguous without a feature size
    np.savez(bad, x=np.zeros((D, 5), np.float32), bbox=np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"000000000042\.jpg\.npz: missing arrays \['image_h', 'image_w'\]"):
        vf.NpzFeatureDir(folder, feature_dim=D)[42]
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match=r"000000000042\.jpg\.npz: not a readable \.npz"):
        vf.NpzFeatureDir(folder, feature_dim=D)[42]
    (folder / "features.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"features\.npz: cannot read an image id from the file name"):
        vf.NpzFeatureDir(folder)
    (folder / "features.npz").unlink()
    np.savez(folder / "42.npz", x=np.zeros((1, D)))
    with pytest.raises(ValueError, match="image id 42 appears twice"):
        vf.NpzFeatureDir(folder)
    with pytest.raises(ValueError, match="no .npz feature files"):
        vf.NpzFeatureDir(tmp_path)
    with pytest.raises(ValueError, match="expected a folder"):
        vf.NpzFeatureDir(tmp_path / "nope")


# ------------------------------------------------------------------ tsv specifics


def test_tsv_index_is_offsets_and_is_cached(tmp_path):
    path = write_tsv(tmp_path / "f.tsv")
    lines = path.read_bytes().splitlines(keepends=True)
    store = vf.TsvFeatures(path, index_path=tmp_path / "f.index.npz")
    offsets = np.cumsum([0] + [len(x) for x in lines[:-1]])
    assert store.index == {image_id: (int(o), len(x), k + 1) for k, (image_id, o, x) in enumerate(zip(TRUTH, offsets, lines))}
    assert (tmp_path / "f.index.npz").is_file()
    again = vf.TsvFeatures(path, index_path=tmp_path / "f.index.npz")
    again._build_index = None  # type: ignore[assignment]  (must come from the cache)
    assert again.index == store.index
    # a changed file invalidates the cache
    path.write_text(tsv_line(9, TRUTH[9]), encoding="ascii")
    fresh = vf.TsvFeatures(path, index_path=tmp_path / "f.index.npz")
    assert fresh.image_ids() == [9]


def test_tsv_header_row_is_tolerated(tmp_path):
    path = tmp_path / "h.tsv"
    path.write_text("\t".join(vf.TSV_FIELDS) + "\n" + tsv_line(42, TRUTH[42]), encoding="ascii")
    np.testing.assert_array_equal(vf.TsvFeatures(path)[42].features, TRUTH[42]["features"])


def test_tsv_errors_name_file_and_line(tmp_path):
    t = TRUTH[9]
    path = tmp_path / "bad.tsv"
    path.write_text(tsv_line(9, t) + "abc\t1\t1\t1\tx\ty\n", encoding="ascii")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 2: expected an integer image_id"):
        vf.TsvFeatures(path).image_ids()
    path.write_text(tsv_line(9, t) + tsv_line(9, t), encoding="ascii")
    with pytest.raises(ValueError, match=r"bad\.tsv: image id 9 on line 2 already appeared on line 1"):
        vf.TsvFeatures(path).image_ids()
    line = tsv_line(9, t).split("\t")
    path.write_text("\t".join([*line[:3], "4", *line[4:]]), encoding="ascii")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 1 \(image 9\): num_boxes = 4 but boxes hold 12 floats"):
        vf.TsvFeatures(path)[9]
    path.write_text("\t".join([*line[:4], "!!notbase64!!", line[5]]), encoding="ascii")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 1 \(image 9\): unreadable field"):
        vf.TsvFeatures(path)[9]
    path.write_text("\t".join(line[:5]) + "\n", encoding="ascii")
    with pytest.raises(ValueError, match=r"line 1 \(image 9\): expected 6 tab-separated fields"):
        vf.TsvFeatures(path)[9]
    path.write_text(tsv_line(9, t), encoding="ascii")
    with pytest.raises(ValueError, match=r"expected features of size 2048, got shape \(3, 16\)"):
        vf.TsvFeatures(path, feature_dim=2048)[9]
    path.write_text("", encoding="ascii")
    with pytest.raises(ValueError, match="no feature lines"):
        vf.TsvFeatures(path).image_ids()


# ------------------------------------------------------------------ h5 specifics


def test_h5_id_map_sources(tmp_path):
    rows = write_h5_fixed(tmp_path / "a.h5")
    (tmp_path / "map.json").write_text(json.dumps({str(k): v for k, v in rows.items()}), encoding="utf-8")
    for id_map in (rows, tmp_path / "map.json"):
        store = vf.H5Features(tmp_path / "a.h5", id_map=id_map, feature_dim=D)
        np.testing.assert_array_equal(store[42].features, TRUTH[42]["features"])
    with pytest.raises(ValueError, match=r"a\.h5: no image id map"):
        vf.H5Features(tmp_path / "a.h5")
    with pytest.raises(ValueError, match=r"id map points outside the 3 images"):
        vf.H5Features(tmp_path / "a.h5", id_map={9: 3})
    with pytest.raises(ValueError, match=r"expected features of size 2048, got 16"):
        vf.H5Features(tmp_path / "a.h5", id_map=rows, feature_dim=2048)


def test_h5_id_map_pickle_is_read_safely(tmp_path):
    import os

    write_h5_fixed(tmp_path / "a.h5")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({9: Evil()}))
    with pytest.raises(ValueError, match=r"evil\.pkl: refused to unpickle global 'posix\.system'"):
        vf.H5Features(tmp_path / "a.h5", id_map=tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()


def test_h5_layout_errors(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("image_features", (2, 3, D), "f")
        f.create_dataset("image_bb", (2, 3, 4), "f")
    with pytest.raises(ValueError, match=r"a\.h5: missing datasets \['spatial_features'\]"):
        vf.H5Features(tmp_path / "a.h5", id_map={1: 0})
    with h5py.File(tmp_path / "a.h5", "a") as f:
        f.create_dataset("spatial_features", (2, 4, 6), "f")
    with pytest.raises(ValueError, match=r"a\.h5: expected image_features \[I, N, D\]"):
        vf.H5Features(tmp_path / "a.h5", id_map={1: 0})
    (tmp_path / "b.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match=r"b\.h5: not a readable HDF5 file"):
        vf.H5Features(tmp_path / "b.h5", id_map={1: 0})


def test_open_features_by_extension(tmp_path):
    write_npz_dir(tmp_path / "dir")
    write_tsv(tmp_path / "f.tsv")
    write_h5_adaptive(tmp_path / "f.hdf5")
    assert isinstance(vf.open_features(tmp_path / "dir", feature_dim=D), vf.NpzFeatureDir)
    assert isinstance(vf.open_features(tmp_path / "f.tsv"), vf.TsvFeatures)
    assert isinstance(vf.open_features(tmp_path / "f.hdf5"), vf.H5Features)
    (tmp_path / "f.lmdb").write_bytes(b"")
    with pytest.raises(ValueError, match=r"f\.lmdb: unknown feature format"):
        vf.open_features(tmp_path / "f.lmdb")

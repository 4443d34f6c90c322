"""Synthetic N-modal interaction task: the documented formula, and who can learn it."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mmfuse.data import describe as describe_any
from mmfuse.data import interactions as it


def _lstsq_accuracy(train_feats, train_y, test_feats, test_y, n_classes):
    """Closed-form linear classifier: least squares onto one-hot targets (with a bias)."""
    def add_bias(f):
        return np.hstack([f, np.ones((f.shape[0], 1))])

    targets = np.eye(n_classes)[train_y] * 2 - 1
    w, *_ = np.linalg.lstsq(add_bias(train_feats), targets, rcond=None)
    return float((add_bias(test_feats) @ w).argmax(1).__eq__(test_y).mean())


def _concat(a, m):
    return np.hstack([a[f"x{i}"] for i in range(m)]).astype(np.float64)


def _pair_products(a, m):
    return np.hstack(
        [np.einsum("ni,nj->nij", a[f"x{p}"], a[f"x{q}"]).reshape(len(a["label"]), -1) for p, q in itertools.combinations(range(m), 2)]
    ).astype(np.float64)


def _triple_products(a):
    return np.einsum("ni,nj,nk->nijk", a["x0"], a["x1"], a["x2"]).reshape(len(a["label"]), -1).astype(np.float64)


def test_clean_label_follows_the_documented_formula():
    data = it.generate_interactions(n_train=300, n_test=0, dims=(5, 7), order=2, n_classes=3, rank=2, seed=4)
    proj = it.interaction_projections(dims=(5, 7), order=2, n_classes=3, rank=2, seed=4)
    a0, a1 = proj["a2_m0"].astype(np.float64), proj["a2_m1"].astype(np.float64)  # (C, r, d)
    assert a0.shape == (3, 2, 5) and a1.shape == (3, 2, 7)
    np.testing.assert_allclose(np.linalg.norm(a0, axis=-1), 1, atol=1e-6)
    np.testing.assert_allclose(a0[:, 0] @ a0[:, 1].T * np.eye(3), 0, atol=1e-6)  # orthonormal within a class
    x0, x1 = data["train"]["x0"].astype(np.float64), data["train"]["x1"].astype(np.float64)
    scores = np.zeros((300, 3))
    for n in range(300):
        for c in range(3):
            scores[n, c] = sum((a0[c, j] @ x0[n]) * (a1[c, j] @ x1[n]) for j in range(2))
    assert np.array_equal(scores.argmax(1), data["train"]["clean_label"])
    assert np.array_equal(data["train"]["label"], data["train"]["clean_label"])  # no noise asked


def test_order2_needs_products():
    a = it.generate_interactions(n_train=3000, n_test=1000, dims=(6, 6), order=2, seed=0)
    tr, te = a["train"], a["test"]
    concat = _lstsq_accuracy(_concat(tr, 2), tr["label"], _concat(te, 2), te["label"], 2)
    products = _lstsq_accuracy(_pair_products(tr, 2), tr["label"], _pair_products(te, 2), te["label"], 2)
    assert concat < 0.6, concat
    assert products > 0.9, products


def test_order3_needs_the_three_way_product():
    a = it.generate_interactions(n_train=4000, n_test=1000, dims=(4, 4, 4), order=3, seed=1)
    tr, te = a["train"], a["test"]
    concat = _lstsq_accuracy(_concat(tr, 3), tr["label"], _concat(te, 3), te["label"], 2)
    pairs = _lstsq_accuracy(_pair_products(tr, 3), tr["label"], _pair_products(te, 3), te["label"], 2)
    triple = _lstsq_accuracy(_triple_products(tr), tr["label"], _triple_products(te), te["label"], 2)
    assert concat < 0.6 and pairs < 0.6, (concat, pairs)
    assert triple > 0.85, triple


def test_order1_is_linear_and_multiclass_works():
    a = it.generate_interactions(n_train=2000, n_test=1000, dims=(6, 6, 6), order=1, n_classes=4, seed=2)
    tr, te = a["train"], a["test"]
    assert _lstsq_accuracy(_concat(tr, 3), tr["label"], _concat(te, 3), te["label"], 4) > 0.85
    counts = np.bincount(tr["label"], minlength=4)
    assert counts.min() > 300, counts  # balanced by symmetry: ~500 each


def test_lower_order_weight_makes_concat_informative():
    a = it.generate_interactions(n_train=3000, n_test=1000, dims=(6, 6), order=2, lower_order_weight=2.0, seed=3)
    tr, te = a["train"], a["test"]
    assert _lstsq_accuracy(_concat(tr, 2), tr["label"], _concat(te, 2), te["label"], 2) > 0.75


@pytest.mark.parametrize("n_classes", [2, 5])
def test_label_noise_rate_and_flips(n_classes):
    a = it.generate_interactions(n_train=20000, n_test=0, dims=(4, 4), order=2, n_classes=n_classes, label_noise=0.2, seed=5)["train"]
    flipped = a["label"] != a["clean_label"]
    assert abs(flipped.mean() - 0.2) < 0.015
    assert a["label"].min() >= 0 and a["label"].max() < n_classes
    if n_classes > 2:  # the replacement is uniform over the other classes
        shift = (a["label"][flipped] - a["clean_label"][flipped]) % n_classes
        counts = np.bincount(shift, minlength=n_classes)
        assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].mean()


def test_shapes_dtypes_and_determinism():
    kwargs = dict(n_train=50, n_test=20, dims=(3, 4, 5), order=2, n_classes=3, seed=9)
    a, b = it.generate_interactions(**kwargs), it.generate_interactions(**kwargs)
    assert set(a["train"]) == {"x0", "x1", "x2", "label", "clean_label"}
    for m, d in enumerate((3, 4, 5)):
        assert a["train"][f"x{m}"].shape == (50, d) and a["train"][f"x{m}"].dtype == np.float32
    assert a["test"]["label"].shape == (20,) and a["test"]["label"].dtype == np.int64
    for split in ("train", "test"):
        for k in a[split]:
            assert a[split][k].tobytes() == b[split][k].tobytes()
    c = it.generate_interactions(**{**kwargs, "seed": 10})
    assert not np.array_equal(a["train"]["x0"], c["train"]["x0"])


def test_make_load_describe_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path))
    kwargs = dict(seed=1, n_train=40, n_test=10, dims=(3, 2), order=2, label_noise=0.1)
    root = it.make_interactions(**kwargs)
    assert root.is_relative_to(tmp_path / "interactions" / "v1")
    assert sorted(p.name for p in root.iterdir()) == ["generator.npz", "meta.json", "test.npz", "train.npz"]
    with monkeypatch.context() as m:
        m.setattr(it, "generate_interactions", lambda **kw: pytest.fail("cache not reused"))
        assert it.make_interactions(**kwargs) == root

    data = it.load_interactions(root)
    fresh = it.generate_interactions(n_train=40, n_test=10, dims=(3, 2), order=2, label_noise=0.1, seed=1)
    for split in ("train", "test"):
        for k, v in fresh[split].items():
            assert np.array_equal(data.splits[split][k], v)
    ref = it.interaction_projections(dims=(3, 2), order=2, seed=1)
    assert set(data.projections) == set(ref) == {"a1_m0", "a1_m1", "a2_m0", "a2_m1"}

    info = it.describe(root)
    assert info == describe_any(root)
    assert info["config"]["dims"] == [3, 2] and info["config"]["order"] == 2
    for split, n in (("train", 40), ("test", 10)):
        s = info["splits"][split]
        assert s["samples"] == n
        assert s["by_class"] == {str(c): int((fresh[split]["label"] == c).sum()) for c in range(2)}
        assert s["noisy_labels"] == int((fresh[split]["label"] != fresh[split]["clean_label"]).sum())

    ds = data.dataset("test")
    assert len(ds) == 10
    item = ds[3]
    assert set(item) == {"x0", "x1", "label"}
    assert item["x0"].dtype == torch.float32 and item["x0"].shape == (3,)
    assert item["label"].dtype == torch.int64 and int(item["label"]) == fresh["test"]["label"][3]
    assert torch.equal(item["x1"], torch.from_numpy(fresh["test"]["x1"][3]))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["x0"].shape == (4, 3) and batch["label"].shape == (4,)

    (root / "test.npz").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="test.npz"):
        it.load_interactions(root)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dims": (4,)}, "dims must be a sequence of 2 or 3 ints"),
        ({"dims": (4, 4, 4, 4)}, "dims must be a sequence of 2 or 3 ints"),
        ({"dims": (4, 0)}, r"dims\[1\] must be an int >= 1, got 0"),
        ({"order": 3}, "order must be between 1 and the number of modalities 2, got 3"),
        ({"n_classes": 1}, "n_classes must be an int >= 2, got 1"),
        ({"label_noise": 1.0}, r"label_noise must be in \[0, 1\), got 1.0"),
        ({"lower_order_weight": -1}, "lower_order_weight must be a finite float >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        it.generate_interactions(**{"n_train": 4, "n_test": 2, "dims": (4, 4), **kwargs})

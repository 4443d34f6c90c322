"""Sort-of-CLEVR: every value checked against an independent computation."""
from __future__ import annotations

import inspect
import math
from collections import Counter

import numpy as np
import pytest
import torch

from mmfuse.data import sort_of_clevr as soc
from mmfuse.data import describe as describe_any

N_TRAIN, N_TEST = 20, 10
COLOURS = {  # RGB, written out here rather than read from the module
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "orange": (255, 156, 0),
    "gray": (128, 128, 128),
    "yellow": (255, 255, 0),
}
COLOUR_ORDER = ["red", "green", "blue", "orange", "gray", "yellow"]
TYPE_NAMES = ["shape", "left", "top", "closest", "furthest", "count"]


@pytest.fixture(scope="module")
def data():
    return soc.generate_sort_of_clevr(n_train=N_TRAIN, n_test=N_TEST, seed=7, n_distractors=3)


def _splits(data):
    return [(name, data[name]) for name in ("train", "test")]


def _objects_from_pixels(image: np.ndarray) -> list[tuple[float, float, str]]:
    """(x, y, shape) per colour, read back from the rendered pixels only."""
    objects = []
    for name in COLOUR_ORDER:
        ys, xs = np.nonzero((image == COLOURS[name]).all(-1))
        assert xs.size > 0, f"colour {name} is missing from the image"
        cx, cy = xs.mean(), ys.mean()  # both shapes are symmetric about their centre
        assert cx == int(cx) and cy == int(cy)
        corner = (image[int(cy) + 5, int(cx) + 5] == COLOURS[name]).all()  # squares fill their corners
        objects.append((cx, cy, "square" if corner else "circle"))
    return objects


def _expected_answer(objects, qtype: str, colour: int) -> str:
    x, y, shape = objects[colour]
    if qtype == "shape":
        return shape
    if qtype == "left":
        return "yes" if x < 75 / 2 else "no"
    if qtype == "top":
        return "yes" if y < 75 / 2 else "no"
    if qtype == "count":
        return str(sum(1 for o in objects if o[2] == shape))
    others = [(math.dist((x, y), o[:2]), i) for i, o in enumerate(objects) if i != colour]
    best = min(others) if qtype == "closest" else min(others, key=lambda t: (-t[0], t[1]))  # ties: lowest colour
    return objects[best[1]][2]


def _decode_bits(bits: np.ndarray) -> tuple[int, int]:
    assert bits.sum() == 3 and bits[:6].sum() == 1 and bits[6:8].sum() == 1 and bits[8:].sum() == 1
    colour = int(np.argmax(bits[:6]))
    qtype = 3 * int(bits[7]) + int(np.argmax(bits[8:]))
    return qtype, colour


def _parse_words(words: list[str]) -> tuple[int, int]:
    colours = [w for w in words if w in COLOUR_ORDER]
    assert len(colours) == 1, words
    text = " ".join(words)
    if "closest" in words or "nearest" in words:
        kind = "closest"
    elif "furthest" in words or "farthest" in words:
        kind = "furthest"
    elif "how many" in text or "number" in words:
        kind = "count"
    elif "left" in words:
        kind = "left"
    elif "top" in words or "upper" in words:
        kind = "top"
    else:
        assert "shape" in words or ("square" in words and "circle" in words), words
        kind = "shape"
    return TYPE_NAMES.index(kind), COLOUR_ORDER.index(colours[0])


def test_defaults_are_the_papers_sizes():
    params = inspect.signature(soc.generate_sort_of_clevr).parameters
    assert params["n_train"].default == 9800 and params["n_test"].default == 200
    assert params["n_nonrel"].default == 10 and params["n_rel"].default == 10


def test_object_list_matches_pixels_and_answers_are_correct(data):
    vocab = soc.ANSWER_VOCAB
    for _, a in _splits(data):
        for i in range(a["images"].shape[0]):
            objects = _objects_from_pixels(a["images"][i])
            for k, (x, y, shape) in enumerate(objects):
                assert (x, y) == tuple(a["object_xy"][i, k]) and shape == soc.SHAPE_NAMES[a["object_shape"][i, k]]
            for q in range(a["qtype"].shape[1]):
                qtype, colour = _decode_bits(a["question_bits"][i, q])
                assert qtype == a["qtype"][i, q] and colour == a["question_colour"][i, q]
                assert vocab[a["answer"][i, q]] == _expected_answer(objects, TYPE_NAMES[qtype], colour)


def test_answers_on_a_hand_built_scene():
    # centres in colour order; red/green/blue squares, the rest circles
    xy = np.array([[[10, 10], [30, 10], [60, 60], [10, 40], [40, 40], [65, 10]]], dtype=np.int16)
    shapes = np.array([[0, 0, 0, 1, 1, 1]], dtype=np.int8)
    table = soc._answer_table(xy, shapes)[0]
    words = [[soc.ANSWER_VOCAB[v] for v in row] for row in table]
    assert words[0] == ["square", "square", "square", "circle", "circle", "circle"]
    assert words[1] == ["yes", "yes", "no", "yes", "no", "no"]  # left: x < 37.5
    assert words[2] == ["yes", "yes", "no", "no", "no", "yes"]  # top: y < 37.5
    assert words[3][0] == "square"  # red (10,10): closest green (30,10) at 20
    assert words[4][0] == "square"  # red: furthest blue (60,60)
    assert words[3][4] == "square"  # gray (40,40): blue (60,60) at 28.3 beats orange (10,40) at 30
    assert words[3][3] == "square"  # orange (10,40): red (10,10) and gray (40,40) tie at 30 -> red, lower colour
    assert words[5] == ["3"] * 6


def test_colours_unique_and_objects_do_not_overlap(data):
    yy, xx = np.mgrid[0:75, 0:75]
    white = np.array([255, 255, 255])
    for _, a in _splits(data):
        for i in range(a["images"].shape[0]):
            image = a["images"][i]
            union = np.zeros((75, 75), dtype=int)
            for k, name in enumerate(COLOUR_ORDER):
                (cx, cy), square = a["object_xy"][i, k], a["object_shape"][i, k] == 0
                if square:
                    mask = (abs(xx - cx) <= 5) & (abs(yy - cy) <= 5)
                else:
                    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= 30
                assert mask.sum() == (121 if square else 97)
                has_colour = (image == COLOURS[name]).all(-1)
                assert has_colour[mask].all(), f"image {i}: part of the {name} object is covered"
                assert has_colour.sum() == mask.sum(), f"image {i}: {name} pixels outside its object"
                union += mask
            assert union.max() == 1, f"image {i}: objects overlap"
            assert (image[union == 0] == white).all()
            # every object keeps a white ring: bounding boxes are >= 12 px apart
            xy = a["object_xy"][i].astype(int)
            for p in range(6):
                for q in range(p + 1, 6):
                    assert max(abs(xy[p] - xy[q])) >= 12


def test_question_counts_per_image_and_type(data):
    for _, a in _splits(data):
        n = a["images"].shape[0]
        assert a["qtype"].shape == (n, 20)
        assert (a["relational"].sum(1) == 10).all()
        assert not a["relational"][:, :10].any() and a["relational"][:, 10:].all()
        assert (a["qtype"][:, :10] < 3).all() and (a["qtype"][:, 10:] >= 3).all()
        assert (a["relational"] == (a["qtype"] >= 3)).all()
    counts = Counter(data["train"]["qtype"].ravel().tolist())
    assert sum(counts.values()) == N_TRAIN * 20
    assert all(counts[t] > 35 for t in range(6)), counts  # ~67 each: subtypes drawn uniformly


def test_natural_language_decodes_to_the_bit_encoding(data):
    vocab = soc.WORD_VOCAB
    seen_texts: dict[int, set[str]] = {t: set() for t in range(6)}
    for _, a in _splits(data):
        tokens, lengths = a["question_tokens"], a["question_len"]
        assert tokens.shape[-1] == soc.MAX_QUESTION_LEN
        for i in range(tokens.shape[0]):
            for q in range(tokens.shape[1]):
                row, n = tokens[i, q], int(lengths[i, q])
                assert (row[:n] > 1).all() and (row[n:] == 0).all()  # no pad / unk inside, pad after
                words = [vocab[t] for t in row[:n]]
                assert _parse_words(words) == _decode_bits(a["question_bits"][i, q])
                seen_texts[int(a["qtype"][i, q])].add(" ".join(w for w in words if w not in COLOUR_ORDER))
    assert all(len(s) >= 2 for s in seen_texts.values()), seen_texts  # paraphrases are used


def test_templates_tokenise_cleanly():
    assert soc.tokenize("What's the SHAPE, of the red-object?") == ["what", "s", "the", "shape", "of", "the", "red", "object"]
    for group in soc.TEMPLATES:
        assert len(set(group)) >= 3
        for template in group:
            for name in COLOUR_ORDER:
                words = soc.tokenize(template.format(c=name))
                assert all(w in soc.WORD_VOCAB for w in words)
                assert _parse_words(words)[1] == COLOUR_ORDER.index(name)


def test_regions_match_the_objects(data):
    a = data["train"]
    n, r, d = a["regions"].shape
    assert (r, d) == (9, 10) and a["regions"].dtype == np.float32
    assert (a["region_mask"].sum(1) == 6).all()
    assert ((a["region_object"] >= 0) == a["region_mask"]).all()
    orders = set()
    for i in range(n):
        real = a["regions"][i][a["region_mask"][i]]
        colour_ids = real[:, :6].argmax(1)
        assert sorted(colour_ids.tolist()) == list(range(6))  # unique colours
        assert np.array_equal(colour_ids, a["region_object"][i][a["region_mask"][i]])
        for row, k in zip(real, colour_ids):
            assert np.array_equal(row[:6], np.eye(6)[k])
            assert np.array_equal(row[6:8], np.eye(2)[a["object_shape"][i, k]])
            np.testing.assert_allclose(row[8:] * 74, a["object_xy"][i, k], atol=1e-4)
        fake = a["regions"][i][~a["region_mask"][i]]
        assert (fake[:, :6].sum(1) == 1).all() and (fake[:, 6:8].sum(1) == 1).all()
        assert ((fake[:, 8:] >= 0) & (fake[:, 8:] <= 1)).all()
        orders.add(tuple(a["region_object"][i]))
    assert len(orders) > 1  # rows are shuffled per scene


def test_region_noise_is_gaussian_on_top_of_the_clean_features():
    clean = soc.generate_sort_of_clevr(n_train=40, n_test=0, seed=3)["train"]
    noisy = soc.generate_sort_of_clevr(n_train=40, n_test=0, seed=3, region_noise=0.1)["train"]
    assert np.array_equal(clean["images"], noisy["images"]) and np.array_equal(clean["answer"], noisy["answer"])
    assert (clean["region_mask"]).all() and clean["regions"].shape == (40, 6, 10)
    ref = np.zeros((40, 6, 10), np.float32)
    for i in range(40):  # rebuild the clean rows of the noisy scene in its own row order
        k = noisy["region_object"][i]
        ref[i, :, :6] = np.eye(6)[k]
        ref[i, :, 6:8] = np.eye(2)[noisy["object_shape"][i, k]]
        ref[i, :, 8:] = noisy["object_xy"][i, k] / 74
    residual = noisy["regions"] - ref
    assert abs(residual.std() - 0.1) < 0.01 and abs(residual.mean()) < 0.01


def test_same_seed_identical_different_seed_different(data):
    again = soc.generate_sort_of_clevr(n_train=N_TRAIN, n_test=N_TEST, seed=7, n_distractors=3)
    for split in ("train", "test"):
        assert set(again[split]) == set(soc.SPLIT_KEYS)
        for k in soc.SPLIT_KEYS:
            assert again[split][k].dtype == data[split][k].dtype
            assert again[split][k].tobytes() == data[split][k].tobytes(), (split, k)
    other = soc.generate_sort_of_clevr(n_train=N_TRAIN, n_test=N_TEST, seed=8, n_distractors=3)
    for split in ("train", "test"):
        assert not np.array_equal(other[split]["images"], data[split]["images"])
        assert not np.array_equal(other[split]["answer"], data[split]["answer"])
    bigger = soc.generate_sort_of_clevr(n_train=N_TRAIN + 5, n_test=N_TEST, seed=7, n_distractors=3)
    assert np.array_equal(bigger["test"]["images"], data["test"]["images"])  # test set independent of n_train


def test_make_load_describe_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path / "cache"))
    kwargs = dict(seed=2, n_train=12, n_test=4, n_distractors=1)
    root = soc.make_sort_of_clevr(**kwargs)
    assert root.is_relative_to(tmp_path / "cache" / "sort_of_clevr" / f"v{soc.GENERATOR_VERSION}")
    assert sorted(p.name for p in root.iterdir()) == ["meta.json", "test.npz", "train.npz"]

    def boom(*args, **kw):
        raise AssertionError("the cache should have been reused")

    with monkeypatch.context() as m:
        m.setattr(soc, "generate_sort_of_clevr", boom)
        assert soc.make_sort_of_clevr(**kwargs) == root
    assert soc.make_sort_of_clevr(**{**kwargs, "seed": 3}) != root

    loaded = soc.load_sort_of_clevr(root)
    fresh = soc.generate_sort_of_clevr(n_train=12, n_test=4, seed=2, n_distractors=1)
    for split in ("train", "test"):
        for k in soc.SPLIT_KEYS:
            assert np.array_equal(loaded.splits[split][k], fresh[split][k]) and loaded.splits[split][k].dtype == fresh[split][k].dtype
    assert loaded.answer_vocab == list(soc.ANSWER_VOCAB) and loaded.word_vocab == list(soc.WORD_VOCAB)
    assert loaded.qtype_names == TYPE_NAMES

    info = soc.describe(root)
    assert describe_any(root) == info
    for split, n in (("train", 12), ("test", 4)):
        s = info["splits"][split]
        assert s["images"] == n and s["questions"] == 20 * n
        assert s["relational"] == s["non_relational"] == 10 * n
        expected = Counter(fresh[split]["qtype"].ravel().tolist())
        assert s["by_type"] == {name: expected[t] for t, name in enumerate(TYPE_NAMES)}
        assert sum(s["by_answer"].values()) == 20 * n

    # a damaged cache is detected, refused on load, and rebuilt by make
    train = root / "train.npz"
    train.write_bytes(train.read_bytes()[:1000])
    with pytest.raises(ValueError, match="train.npz"):
        soc.load_sort_of_clevr(root)
    assert soc.make_sort_of_clevr(**kwargs) == root
    assert np.array_equal(soc.load_sort_of_clevr(root).splits["train"]["images"], fresh["train"]["images"])


def test_out_dir_and_overwrite(tmp_path):
    root = soc.make_sort_of_clevr(tmp_path / "mine", seed=0, n_train=3, n_test=2)
    assert root == tmp_path / "mine"
    first = (root / "train.npz").stat().st_mtime_ns
    assert soc.make_sort_of_clevr(root, seed=0, n_train=3, n_test=2) == root
    assert (root / "train.npz").stat().st_mtime_ns == first
    soc.make_sort_of_clevr(root, seed=1, n_train=3, n_test=2)  # another config: rewritten
    assert soc.load_sort_of_clevr(root).meta["seed"] == 1


def test_torch_dataset_view(tmp_path):
    root = soc.make_sort_of_clevr(tmp_path, seed=5, n_train=4, n_test=2, n_distractors=2)
    data = soc.load_sort_of_clevr(root)
    ds = data.dataset("train")
    assert len(ds) == 4 * 20
    item = ds[47]  # image 2, question 7
    a = data.splits["train"]
    assert item["image"].shape == (3, 75, 75) and item["image"].dtype == torch.float32
    assert torch.equal(item["image"], torch.from_numpy(a["images"][2]).permute(2, 0, 1).float() / 255)
    assert torch.equal(item["regions"], torch.from_numpy(a["regions"][2]))
    assert item["region_mask"].dtype == torch.bool and int(item["region_mask"].sum()) == 6
    assert torch.equal(item["question_bits"], torch.from_numpy(a["question_bits"][2, 7]).float())
    assert item["question_tokens"].dtype == torch.int64 and item["question_tokens"].shape == (soc.MAX_QUESTION_LEN,)
    for key in ("question_len", "answer", "qtype"):
        source = {"question_len": "question_len", "answer": "answer", "qtype": "qtype"}[key]
        assert item[key].dtype == torch.int64 and item[key].shape == () and int(item[key]) == a[source][2, 7]
    assert data.decode_question(item["question_tokens"]) == data.decode_question(item["question_tokens"], int(item["question_len"]))
    ids, n = data.encode_question("What is the shape of the RED object?")
    assert data.decode_question(ids, n) == "what is the shape of the red object"
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 75, 75) and batch["regions"].shape == (5, 8, 10)
    with pytest.raises(IndexError):
        ds[80]
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.dataset("val")


def test_accuracy_by_type():
    qtypes = np.array([0, 1, 2, 3, 4, 5, 5, 0])
    answers = np.array([2, 0, 1, 3, 2, 6, 7, 3])
    preds = answers.copy()
    preds[[6, 7]] = 0  # one count and one shape question wrong
    acc = soc.accuracy_by_type(torch.from_numpy(preds), answers, qtypes)
    assert acc["shape"] == 0.5 and acc["count"] == 0.5 and acc["closest"] == 1.0
    assert acc["non_relational"] == 0.75 and acc["relational"] == 0.75 and acc["overall"] == 0.75
    with pytest.raises(ValueError, match="one size"):
        soc.accuracy_by_type(preds[:3], answers, qtypes)


def _slow_references(data, split="test"):
    """reference_accuracies with dicts and loops: majority answer per key, lowest id on a tie."""
    from collections import Counter

    def rows(arrays):
        n, q = arrays["qtype"].shape
        for i in range(n):
            squares = int(sum(int(s) == 0 for s in arrays["object_shape"][i]))
            for j in range(q):
                question = (int(arrays["qtype"][i, j]), int(arrays["question_colour"][i, j]))
                yield question, (*question, squares), int(arrays["answer"][i, j]), int(arrays["qtype"][i, j])

    by_q, by_s = {}, {}
    for question, shapes, answer, _ in rows(data.splits["train"]):
        by_q.setdefault(question, Counter())[answer] += 1
        by_s.setdefault(shapes, Counter())[answer] += 1

    def majority(counter):
        return min(counter, key=lambda a: (-counter[a], a))

    pred_q, pred_s, answers, qtypes = [], [], [], []
    for question, shapes, answer, qtype in rows(data.splits[split]):
        pq = majority(by_q[question]) if question in by_q else 0
        pred_q.append(pq)
        pred_s.append(majority(by_s[shapes]) if shapes in by_s else pq)
        answers.append(answer)
        qtypes.append(qtype)
    return {"question only": soc.accuracy_by_type(np.array(pred_q), np.array(answers), np.array(qtypes)),
            "question + shape counts": soc.accuracy_by_type(np.array(pred_s), np.array(answers), np.array(qtypes))}


def test_reference_accuracies_equal_the_lookup_tables_built_by_hand(tmp_path):
    data = soc.load_sort_of_clevr(soc.make_sort_of_clevr(tmp_path, seed=2, n_train=60, n_test=30))
    got = soc.reference_accuracies(data)
    want = _slow_references(data)
    assert set(got) == set(want) == set(soc.REFERENCE_LEVELS)
    for level in want:
        assert got[level] == pytest.approx(want[level], nan_ok=True)
    # scored on another split: the training split itself
    on_train, want_train = soc.reference_accuracies(data, "train"), _slow_references(data, "train")
    for level in want_train:
        assert on_train[level] == pytest.approx(want_train[level], nan_ok=True)
    # counting the shapes answers count questions better than the question alone
    assert got["question + shape counts"]["count"] > got["question only"]["count"]


def test_reference_accuracies_on_a_hand_built_split():
    def split(shapes, questions):  # questions: (qtype, colour, answer) per image
        n = len(shapes)
        q = np.array([[qq[:2] for qq in row] for row in questions])
        return {"object_shape": np.array(shapes, dtype=np.int8), "qtype": q[..., 0].astype(np.int8),
                "question_colour": q[..., 1].astype(np.int8),
                "answer": np.array([[qq[2] for qq in row] for row in questions], dtype=np.int8)[:n]}

    count_3, count_4 = 6, 7  # answer ids of "3" and "4"
    three_squares, four_squares = [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]
    train = split([three_squares, three_squares, four_squares],
                  [[(5, 0, count_3)], [(5, 0, count_3)], [(5, 0, count_4)]])
    # the 5-square key is missing from training: the question-only answer stands in
    test = split([four_squares, three_squares, [0, 0, 0, 0, 0, 1]],
                 [[(5, 0, count_4)], [(5, 0, count_3)], [(5, 0, count_3)]])
    data = soc.SortOfClevr(root=None, meta={}, splits={"train": train, "test": test})
    got = soc.reference_accuracies(data)
    assert got["question only"]["count"] == pytest.approx(2 / 3)  # "3" every time
    assert got["question + shape counts"]["count"] == 1.0  # "4", "3", then "3" from the question alone
    assert np.isnan(got["question only"]["shape"])  # no shape question in this split
    with pytest.raises(ValueError, match="expected splits 'train' and 'val'"):
        soc.reference_accuracies(data, "val")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": -1}, "n_train must be an int >= 0, got -1"),
        ({"n_test": 2.5}, "n_test must be an int >= 0, got 2.5"),
        ({"n_nonrel": 0, "n_rel": 0}, "at least one question"),
        ({"region_noise": -0.1}, "region_noise must be a finite float >= 0"),
        ({"seed": -3}, "seed must be an int >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        soc.generate_sort_of_clevr(**{"n_train": 2, "n_test": 1, **kwargs})


def test_load_rejects_other_datasets_and_versions(tmp_path):
    from mmfuse.data._io import save_json

    with pytest.raises(ValueError, match="meta.json: file does not exist"):
        soc.load_sort_of_clevr(tmp_path)
    save_json(tmp_path / "meta.json", {"name": "interactions"})
    with pytest.raises(ValueError, match="expected a 'sort_of_clevr' dataset, found 'interactions'"):
        soc.load_sort_of_clevr(tmp_path)
    save_json(tmp_path / "meta.json", {"name": "sort_of_clevr", "generator_version": 99, "sizes": {}})
    with pytest.raises(ValueError, match="generator version 99, expected 1"):
        soc.load_sort_of_clevr(tmp_path)

"""Sort-of-CLEVR: the generated relational VQA task of Santoro et al., 2017.

Paper: Santoro, Raposo, Barrett, Malinowski, Pascanu, Battaglia & Lillicrap, "A simple neural
network module for relational reasoning", NeurIPS 2017 (section 3.2, appendix D). This is an
independent numpy implementation of the process the paper describes.

Scene: a white 75x75 RGB image with 6 objects, one per colour (red, green, blue, orange, gray,
yellow), each a square (11x11 px) or a circle (radius 5.5 px), shape drawn uniformly. Object
centres are integer pixels in [5, 69]; each object is placed uniformly at random among the
positions whose bounding box keeps at least one white pixel from every object placed before it
(Chebyshev centre distance >= 12), so objects never overlap or touch. (The reference generator
only asked for a Euclidean centre distance >= 10, which lets squares overlap; this one does not.)

Questions, per image: ``n_nonrel`` (10) non-relational then ``n_rel`` (10) relational, each about
a colour drawn uniformly (with replacement) and a subtype drawn uniformly::

    qtype  name       relational  answer
    0      shape      no          shape of the object of colour c            square / circle
    1      left       no          is its centre x < 37.5 (left half)?         yes / no
    2      top        no          is its centre y < 37.5 (top half)?          yes / no
    3      closest    yes         shape of the object nearest to c           square / circle
    4      furthest   yes         shape of the object farthest from c        square / circle
    5      count      yes         number of objects with c's shape, c incl.  1 ... 6

Distances are Euclidean between integer centres; ties go to the lowest colour index. Answers
use one vocabulary, :data:`ANSWER_VOCAB` = yes, no, square, circle, 1, ..., 6.

Encodings of a question:
- ``question_bits`` (Tensor[11]): the paper's vector: colour one-hot (6), then
  [non-relational, relational] (2), then subtype one-hot (3), subtype = qtype % 3.
- ``question_tokens`` (Tensor[L]) + ``question_len``: one of 3 English paraphrases per qtype,
  lower-cased, punctuation stripped, ids in :data:`WORD_VOCAB` (0 = ``<pad>``), padded to
  :data:`MAX_QUESTION_LEN`.

Object-level regions (Tensor[R, 10], R = 6 + n_distractors): colour one-hot (6), shape one-hot
(2: square, circle), centre (x, y) / 74 in [0, 1]. Rows are shuffled per scene; optional
Gaussian noise (std ``region_noise``) is added to every row, and ``n_distractors`` extra rows
of random but plausible features (random colour, shape, position) are marked False in
``region_mask``.

Axis letters in shape notes: N images, Q questions per image, R region rows, L tokens.

Example::

    root = make_sort_of_clevr(seed=0)          # cached under cache_dir(); ~3 s the first time
    data = load_sort_of_clevr(root)
    item = data.dataset("train")[0]            # dict of tensors, see SortOfClevrQuestions
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._io import dataset_root, is_complete_dataset, load_npz, read_dataset_meta, write_dataset

__all__ = [
    "ANSWER_VOCAB",
    "COLOUR_NAMES",
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "MAX_QUESTION_LEN",
    "QTYPE_NAMES",
    "SHAPE_NAMES",
    "WORD_VOCAB",
    "SortOfClevr",
    "SortOfClevrQuestions",
    "accuracy_by_type",
    "reference_accuracies",
    "REFERENCE_LEVELS",
    "describe",
    "detect_objects",
    "parse_question",
    "question_bits",
    "generate_sort_of_clevr",
    "load_sort_of_clevr",
    "make_sort_of_clevr",
    "tokenize",
]

NAME = "sort_of_clevr"
GENERATOR_VERSION = 1

IMAGE_SIZE = 75
OBJECT_HALF = 5                      # squares span centre +- 5 px: 11x11 pixels
CIRCLE_RADIUS2 = 30                  # circle: dx^2 + dy^2 <= 30, i.e. radius 5.5 px
MIN_SEPARATION = 2 * OBJECT_HALF + 2  # Chebyshev centre distance: boxes keep a 1 px gap
N_OBJECTS = 6
REGION_DIM = 10                      # colour (6) + shape (2) + x, y (2)
QUESTION_BITS = 11                   # colour (6) + rel/non-rel (2) + subtype (3)

COLOUR_NAMES = ("red", "green", "blue", "orange", "gray", "yellow")
PALETTE = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 156, 0], [128, 128, 128], [255, 255, 0]], dtype=np.uint8
)
BACKGROUND = np.array([255, 255, 255], dtype=np.uint8)
SHAPE_NAMES = ("square", "circle")
QTYPE_NAMES = ("shape", "left", "top", "closest", "furthest", "count")
ANSWER_VOCAB = ("yes", "no", "square", "circle", "1", "2", "3", "4", "5", "6")
_YES, _NO, _SQUARE = 0, 1, 2
_COUNT_ONE = ANSWER_VOCAB.index("1")

# Three paraphrases per qtype, indexed like QTYPE_NAMES; "{c}" is the colour word.
TEMPLATES: tuple[tuple[str, ...], ...] = (
    (
        "What is the shape of the {c} object?",
        "What shape is the {c} object?",
        "Is the {c} object a square or a circle?",
    ),
    (
        "Is the {c} object on the left?",
        "Is the {c} object in the left half of the image?",
        "Does the {c} object lie on the left side?",
    ),
    (
        "Is the {c} object on the top?",
        "Is the {c} object in the upper half of the image?",
        "Does the {c} object lie near the top?",
    ),
    (
        "What is the shape of the object closest to the {c} object?",
        "What shape is the object nearest to the {c} one?",
        "Is the object closest to the {c} object a square or a circle?",
    ),
    (
        "What is the shape of the object furthest from the {c} object?",
        "What shape is the object farthest from the {c} one?",
        "Is the object furthest from the {c} object a square or a circle?",
    ),
    (
        "How many objects have the same shape as the {c} object?",
        "How many objects share the shape of the {c} object?",
        "What is the number of objects shaped like the {c} one?",
    ),
)
N_TEMPLATES = 3

_WORD_RE = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case words of ``text`` with punctuation stripped: ``"Is it red?" -> ["is", "it", "red"]``."""
    return _WORD_RE.findall(text.lower())


def _build_vocab() -> tuple[str, ...]:
    words = {w for group in TEMPLATES for t in group for c in COLOUR_NAMES for w in tokenize(t.format(c=c))}
    return ("<pad>", "<unk>", *sorted(words))


WORD_VOCAB: tuple[str, ...] = _build_vocab()
_WORD_ID = {w: i for i, w in enumerate(WORD_VOCAB)}


def _build_token_table() -> tuple[np.ndarray, np.ndarray]:
    """Token ids of every (qtype, template, colour): Tensor[6, 3, 6, L] int16 and lengths [6, 3, 6]."""
    texts = [[[tokenize(t.format(c=c)) for c in COLOUR_NAMES] for t in group] for group in TEMPLATES]
    max_len = max(len(w) for g in texts for t in g for w in t)
    table = np.zeros((len(TEMPLATES), N_TEMPLATES, N_OBJECTS, max_len), dtype=np.int16)
    lengths = np.zeros((len(TEMPLATES), N_TEMPLATES, N_OBJECTS), dtype=np.int8)
    for q, group in enumerate(texts):
        for t, per_colour in enumerate(group):
            for c, words in enumerate(per_colour):
                table[q, t, c, : len(words)] = [_WORD_ID[w] for w in words]
                lengths[q, t, c] = len(words)
    return table, lengths


_TOKEN_TABLE, _TOKEN_LEN = _build_token_table()
MAX_QUESTION_LEN = int(_TOKEN_TABLE.shape[-1])

SPLIT_KEYS = (
    "images",             # uint8   [N, 75, 75, 3]
    "object_xy",          # int16   [N, 6, 2]   pixel centre (x = column, y = row), row k = colour k
    "object_shape",       # int8    [N, 6]      0 square, 1 circle, row k = colour k
    "regions",            # float32 [N, R, 10]
    "region_mask",        # bool    [N, R]      True = a real object
    "region_object",      # int8    [N, R]      colour id of the row's object, -1 = distractor
    "question_bits",      # uint8   [N, Q, 11]
    "question_tokens",    # int16   [N, Q, L]
    "question_len",       # int8    [N, Q]
    "question_colour",    # int8    [N, Q]
    "question_template",  # int8    [N, Q]
    "qtype",              # int8    [N, Q]
    "relational",         # bool    [N, Q]
    "answer",             # int8    [N, Q]      id in ANSWER_VOCAB
)


# --------------------------------------------------------------------------- generation


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"sort_of_clevr: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _config(
    seed: int, n_train: int, n_test: int, n_nonrel: int, n_rel: int, n_distractors: int, region_noise: float
) -> dict[str, Any]:
    """Validated, JSON-ready generator config (the cache key)."""
    config = {
        "seed": _check_int("seed", seed, 0),
        "n_train": _check_int("n_train", n_train, 0),
        "n_test": _check_int("n_test", n_test, 0),
        "n_nonrel": _check_int("n_nonrel", n_nonrel, 0),
        "n_rel": _check_int("n_rel", n_rel, 0),
        "n_distractors": _check_int("n_distractors", n_distractors, 0),
        "region_noise": float(region_noise),
    }
    if config["n_nonrel"] + config["n_rel"] == 0:
        raise ValueError(
            "sort_of_clevr: expected at least one question per image, got n_nonrel=0 and n_rel=0"
        )
    if not math.isfinite(config["region_noise"]) or config["region_noise"] < 0:
        raise ValueError(f"sort_of_clevr: region_noise must be a finite float >= 0, got {region_noise!r}")
    return config


def _place_objects(n: int, rng: np.random.Generator) -> np.ndarray:
    """Non-overlapping integer centres, object by object, vectorised over the batch.

    Returns:
        int16 [n, 6, 2]: (x, y) pixel centres in [OBJECT_HALF, IMAGE_SIZE - OBJECT_HALF).
    """
    centres = np.zeros((n, N_OBJECTS, 2), dtype=np.int64)
    for k in range(N_OBJECTS):
        todo = np.arange(n)
        while todo.size:  # rejection sampling; at most 5 boxes block < 2/3 of the positions
            cand = rng.integers(OBJECT_HALF, IMAGE_SIZE - OBJECT_HALF, size=(todo.size, 2))
            sep = np.abs(centres[todo, :k, :] - cand[:, None, :]).max(axis=-1)  # (t, k)
            ok = (sep >= MIN_SEPARATION).all(axis=-1)  # (t,)
            centres[todo[ok], k] = cand[ok]
            todo = todo[~ok]
    return centres.astype(np.int16)


def _render(centres: np.ndarray, shapes: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Draw scenes with boolean masks over whole coordinate grids, ``chunk`` images at a time.

    Args:
        centres: int [N, 6, 2] pixel (x, y); shapes: int [N, 6] (0 square, 1 circle).

    Returns:
        uint8 [N, 75, 75, 3].
    """
    n = centres.shape[0]
    lut = np.concatenate([BACKGROUND[None], PALETTE])  # (7, 3): 0 = background, k + 1 = colour k
    grid = np.arange(IMAGE_SIZE, dtype=np.int32)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        c = centres[start : start + chunk].astype(np.int32)
        is_square = shapes[start : start + chunk] == 0
        label = np.zeros((c.shape[0], IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)  # (b, y, x)
        for k in range(N_OBJECTS):
            dx = grid[None, None, :] - c[:, k, 0, None, None]  # (b, 1, x)
            dy = grid[None, :, None] - c[:, k, 1, None, None]  # (b, y, 1)
            in_square = (np.abs(dx) <= OBJECT_HALF) & (np.abs(dy) <= OBJECT_HALF)  # (b, y, x)
            in_circle = dx * dx + dy * dy <= CIRCLE_RADIUS2  # (b, y, x)
            mask = np.where(is_square[:, k, None, None], in_square, in_circle)
            label[mask] = k + 1
        images[start : start + chunk] = lut[label]  # (b, y, x, 3)
    return images


def _answer_table(centres: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Answer id of every (qtype, colour) for every scene: int8 [N, 6 qtypes, 6 colours]."""
    xy = centres.astype(np.int64)
    d2 = ((xy[:, :, None, :] - xy[:, None, :, :]) ** 2).sum(-1)  # (N, 6, 6) squared distances
    eye = np.eye(N_OBJECTS, dtype=bool)
    closest = np.where(eye, np.iinfo(np.int64).max, d2).argmin(-1)  # first minimum: lowest colour wins ties
    furthest = d2.argmax(-1)  # self is at distance 0 < any other
    same = (shapes[:, :, None] == shapes[:, None, :]).sum(-1)  # (N, 6), includes the object itself
    table = np.empty((xy.shape[0], len(QTYPE_NAMES), N_OBJECTS), dtype=np.int8)
    table[:, 0] = _SQUARE + shapes
    table[:, 1] = np.where(2 * xy[..., 0] < IMAGE_SIZE, _YES, _NO)
    table[:, 2] = np.where(2 * xy[..., 1] < IMAGE_SIZE, _YES, _NO)
    table[:, 3] = _SQUARE + np.take_along_axis(shapes, closest, axis=1)
    table[:, 4] = _SQUARE + np.take_along_axis(shapes, furthest, axis=1)
    table[:, 5] = _COUNT_ONE - 1 + same
    return table


def _questions(
    centres: np.ndarray, shapes: np.ndarray, rng: np.random.Generator, n_nonrel: int, n_rel: int
) -> dict[str, np.ndarray]:
    n, q = centres.shape[0], n_nonrel + n_rel
    colour = rng.integers(0, N_OBJECTS, size=(n, q)).astype(np.int8)
    subtype = rng.integers(0, 3, size=(n, q)).astype(np.int8)
    template = rng.integers(0, N_TEMPLATES, size=(n, q)).astype(np.int8)
    relational = np.zeros((n, q), dtype=bool)
    relational[:, n_nonrel:] = True
    qtype = (subtype + 3 * relational).astype(np.int8)

    answer = _answer_table(centres, shapes)[np.arange(n)[:, None], qtype, colour]  # (N, Q)

    bits = np.zeros((n, q, QUESTION_BITS), dtype=np.uint8)
    eye6, eye3 = np.eye(N_OBJECTS, dtype=np.uint8), np.eye(3, dtype=np.uint8)
    bits[..., :6] = eye6[colour]
    bits[..., 6] = ~relational
    bits[..., 7] = relational
    bits[..., 8:] = eye3[subtype]
    return {
        "question_bits": bits,
        "question_tokens": _TOKEN_TABLE[qtype, template, colour],  # (N, Q, L)
        "question_len": _TOKEN_LEN[qtype, template, colour],
        "question_colour": colour,
        "question_template": template,
        "qtype": qtype,
        "relational": relational,
        "answer": answer.astype(np.int8),
    }


def _regions(
    centres: np.ndarray, shapes: np.ndarray, rng: np.random.Generator, n_distractors: int, noise: float
) -> dict[str, np.ndarray]:
    n, r = centres.shape[0], N_OBJECTS + n_distractors
    feats = np.zeros((n, r, REGION_DIM), dtype=np.float32)
    feats[:, :N_OBJECTS, :6] = np.eye(N_OBJECTS, dtype=np.float32)
    feats[:, :N_OBJECTS, 6:8] = np.eye(2, dtype=np.float32)[shapes]
    feats[:, :N_OBJECTS, 8:] = centres / np.float32(IMAGE_SIZE - 1)
    if n_distractors:
        fake_colour = rng.integers(0, N_OBJECTS, (n, n_distractors))
        fake_shape = rng.integers(0, 2, (n, n_distractors))
        feats[:, N_OBJECTS:, :6] = np.eye(N_OBJECTS, dtype=np.float32)[fake_colour]
        feats[:, N_OBJECTS:, 6:8] = np.eye(2, dtype=np.float32)[fake_shape]
        feats[:, N_OBJECTS:, 8:] = rng.random((n, n_distractors, 2), dtype=np.float32)
    if noise > 0:
        feats += rng.normal(0.0, noise, size=feats.shape).astype(np.float32)
    mask = np.zeros((n, r), dtype=bool)
    mask[:, :N_OBJECTS] = True
    owner = np.broadcast_to(np.r_[np.arange(N_OBJECTS), -np.ones(n_distractors, dtype=np.int64)], (n, r))
    perm = np.argsort(rng.random((n, r)), axis=1)  # a random row order per scene
    return {
        "regions": np.take_along_axis(feats, perm[:, :, None], axis=1),
        "region_mask": np.take_along_axis(mask, perm, axis=1),
        "region_object": np.take_along_axis(owner, perm, axis=1).astype(np.int8),
    }


def _generate_split(n: int, rng: np.random.Generator, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    centres = _place_objects(n, rng)
    shapes = rng.integers(0, 2, size=(n, N_OBJECTS)).astype(np.int8)
    # questions draw before regions, so region options never change the questions
    questions = _questions(centres, shapes, rng, config["n_nonrel"], config["n_rel"])
    regions = _regions(centres, shapes, rng, config["n_distractors"], config["region_noise"])
    images = _render(centres, shapes)
    return {"images": images, "object_xy": centres, "object_shape": shapes, **regions, **questions}


_SPLIT_STREAM = {"train": 1, "test": 2}  # independent random streams: the test set does not move with n_train


def generate_sort_of_clevr(
    n_train: int = 9800,
    n_test: int = 200,
    seed: int = 0,
    *,
    n_nonrel: int = 10,
    n_rel: int = 10,
    n_distractors: int = 0,
    region_noise: float = 0.0,
) -> dict[str, dict[str, np.ndarray]]:
    """Generate Sort-of-CLEVR in memory (see the module docstring for the process).

    Each split draws from ``np.random.default_rng([seed, split_id])``; the same arguments give
    byte-identical arrays.

    Args:
        n_train, n_test: number of images per split.
        seed: int >= 0.
        n_nonrel, n_rel: questions per image of each kind; Q = n_nonrel + n_rel.
        n_distractors: extra random region rows per scene (False in ``region_mask``).
        region_noise: std of Gaussian noise added to every region feature.

    Returns:
        ``{"train": arrays, "test": arrays}``; arrays as listed in :data:`SPLIT_KEYS`, e.g.
        ``images`` uint8 [N, 75, 75, 3], ``regions`` float32 [N, R, 10], ``answer`` int8 [N, Q].
    """
    config = _config(seed, n_train, n_test, n_nonrel, n_rel, n_distractors, region_noise)
    return {
        split: _generate_split(config[f"n_{split}"], np.random.default_rng([config["seed"], stream]), config)
        for split, stream in _SPLIT_STREAM.items()
    }


def _counts(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    qtype, answer = arrays["qtype"].ravel(), arrays["answer"].ravel()
    by_type = np.bincount(qtype, minlength=len(QTYPE_NAMES))
    by_answer = np.bincount(answer, minlength=len(ANSWER_VOCAB))
    n_rel = int(arrays["relational"].sum())
    return {
        "images": int(arrays["images"].shape[0]),
        "questions": int(qtype.size),
        "relational": n_rel,
        "non_relational": int(qtype.size) - n_rel,
        "by_type": {name: int(by_type[i]) for i, name in enumerate(QTYPE_NAMES)},
        "by_answer": {name: int(by_answer[i]) for i, name in enumerate(ANSWER_VOCAB)},
    }


def _meta(config: Mapping[str, Any], splits: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    return {
        "name": NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": config["seed"],
        "config": dict(config),
        "sizes": {split: int(arrays["images"].shape[0]) for split, arrays in splits.items()},
        "image_size": IMAGE_SIZE,
        "colour_names": list(COLOUR_NAMES),
        "shape_names": list(SHAPE_NAMES),
        "qtype_names": list(QTYPE_NAMES),
        "relational_qtypes": [3, 4, 5],
        "answer_vocab": list(ANSWER_VOCAB),
        "word_vocab": list(WORD_VOCAB),
        "max_question_len": MAX_QUESTION_LEN,
        "question_bits_layout": [
            *COLOUR_NAMES, "non_relational", "relational", "subtype0", "subtype1", "subtype2"
        ],
        "region_features_layout": [*COLOUR_NAMES, *SHAPE_NAMES, "x", "y"],
        "counts": {split: _counts(arrays) for split, arrays in splits.items()},
    }


def make_sort_of_clevr(
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    n_train: int = 9800,
    n_test: int = 200,
    n_nonrel: int = 10,
    n_rel: int = 10,
    n_distractors: int = 0,
    region_noise: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Generate Sort-of-CLEVR to disk, or return the folder when it already holds this dataset.

    Args:
        out_dir: target folder; ``None`` = ``cache_dir()/sort_of_clevr/v<version>/seed<seed>-<hash>``.
        overwrite: regenerate even when a complete dataset with this config is present.
        others: as in :func:`generate_sort_of_clevr`.

    Returns:
        The folder holding ``train.npz``, ``test.npz`` and ``meta.json`` (written last).
    """
    config = _config(seed, n_train, n_test, n_nonrel, n_rel, n_distractors, region_noise)
    root = dataset_root(out_dir, NAME, GENERATOR_VERSION, config)
    if not overwrite and is_complete_dataset(root, NAME, GENERATOR_VERSION, config):
        return root
    splits = generate_sort_of_clevr(**config)
    return write_dataset(root, splits, _meta(config, splits))


# --------------------------------------------------------------------------- loading


class SortOfClevrQuestions(Dataset):
    """One item per (image, question) of a split, as a dict of tensors.

    Item ``i`` is question ``i % Q`` of image ``i // Q``:

    - ``image``: Tensor[3, 75, 75] float32 in [0, 1]
    - ``regions``: Tensor[R, 10] float32; ``region_mask``: Tensor[R] bool (True = real object)
    - ``question_bits``: Tensor[11] float32
    - ``question_tokens``: Tensor[L] int64 (0-padded); ``question_len``: Tensor[] int64
    - ``answer``: Tensor[] int64, id in :data:`ANSWER_VOCAB`; ``qtype``: Tensor[] int64
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        self.n_images, self.questions_per_image = (int(s) for s in arrays["qtype"].shape)

    def __len__(self) -> int:
        return self.n_images * self.questions_per_image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sort_of_clevr: index {index} out of range for {n} questions")
        img, q = divmod(index % n, self.questions_per_image)
        t = self._t
        return {
            "image": t["images"][img].permute(2, 0, 1).float().div_(255.0),
            "regions": t["regions"][img],
            "region_mask": t["region_mask"][img],
            "question_bits": t["question_bits"][img, q].float(),
            "question_tokens": t["question_tokens"][img, q].long(),
            "question_len": t["question_len"][img, q].long(),
            "answer": t["answer"][img, q].long(),
            "qtype": t["qtype"][img, q].long(),
        }


def detect_objects(image: np.ndarray) -> dict[str, np.ndarray]:
    """Object-level region features read back from a rendered scene (the inverse of rendering).

    Each palette colour is looked up by exact pixel value; its pixels give the centre (their
    mean) and the shape (a square fills 121 pixels, a circle of radius^2 <= 30 fills 97).
    This lets a model trained on region features answer questions about an image file.

    Args:
        image: uint8 [75, 75, 3] (or float in [0, 1]).
    Returns:
        ``regions`` float32 [6, 10] in the dataset's layout (colour one-hot, shape one-hot,
        centre / 74), ``region_mask`` bool [6] (False for a colour that is absent), and
        ``centres`` float32 [6, 2] in pixels.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"sort_of_clevr: expected an image of shape (75, 75, 3), got {img.shape}")
    regions = np.zeros((N_OBJECTS, REGION_DIM), dtype=np.float32)
    mask = np.zeros(N_OBJECTS, dtype=bool)
    centres = np.zeros((N_OBJECTS, 2), dtype=np.float32)
    square_px = (2 * OBJECT_HALF + 1) ** 2
    for k, colour in enumerate(PALETTE):
        ys, xs = np.nonzero((img == colour).all(-1))
        if len(xs) == 0:
            continue
        mask[k] = True
        centres[k] = (xs.mean(), ys.mean())
        is_square = len(xs) > (square_px + 97) / 2
        regions[k, k] = 1.0
        regions[k, 6 + (0 if is_square else 1)] = 1.0
        regions[k, 8:] = centres[k] / np.float32(IMAGE_SIZE - 1)
    return {"regions": regions, "region_mask": mask, "centres": centres}


def parse_question(text: str) -> tuple[int, int]:
    """``(qtype, colour)`` of a question written like one of the dataset's templates.

    Raises:
        ValueError: the question matches no template (the message lists two examples).
    """
    words = tokenize(text)
    for q, group in enumerate(TEMPLATES):
        for template in group:
            for c, colour in enumerate(COLOUR_NAMES):
                if tokenize(template.format(c=colour)) == words:
                    return q, c
    raise ValueError(
        f"sort_of_clevr: the question {text!r} matches none of the dataset's templates, "
        f"e.g. {TEMPLATES[0][0].format(c='red')!r} or {TEMPLATES[3][0].format(c='blue')!r}"
    )


def question_bits(qtype: int, colour: int) -> np.ndarray:
    """The paper's 11-bit code of a question: float32 [11]."""
    bits = np.zeros(QUESTION_BITS, dtype=np.float32)
    bits[colour] = 1.0
    bits[6 + int(qtype >= 3)] = 1.0
    bits[8 + qtype % 3] = 1.0
    return bits


@dataclass(frozen=True)
class SortOfClevr:
    """A loaded Sort-of-CLEVR dataset: arrays per split plus its vocabularies.

    Attributes:
        root: the folder it was read from.
        meta: the parsed ``meta.json``.
        splits: split name -> arrays (see :data:`SPLIT_KEYS`).
    """

    root: Path
    meta: dict[str, Any]
    splits: dict[str, dict[str, np.ndarray]]

    @property
    def answer_vocab(self) -> list[str]:
        return list(self.meta["answer_vocab"])

    @property
    def word_vocab(self) -> list[str]:
        return list(self.meta["word_vocab"])

    @property
    def qtype_names(self) -> list[str]:
        return list(self.meta["qtype_names"])

    def dataset(self, split: str = "train") -> SortOfClevrQuestions:
        """A ``torch.utils.data.Dataset`` over the questions of ``split``."""
        if split not in self.splits:
            raise ValueError(f"sort_of_clevr: unknown split {split!r}, expected one of {sorted(self.splits)}")
        return SortOfClevrQuestions(self.splits[split])

    def decode_question(
        self, tokens: Sequence[int] | np.ndarray | torch.Tensor, length: int | None = None
    ) -> str:
        """Words of a token-id row, padding dropped: ``[..] -> "what shape is the red object"``."""
        ids = [int(i) for i in (tokens.tolist() if hasattr(tokens, "tolist") else tokens)]
        ids = ids[:length] if length is not None else [i for i in ids if i != 0]
        vocab = self.meta["word_vocab"]
        return " ".join(vocab[i] for i in ids)

    def encode_question(self, text: str) -> tuple[np.ndarray, int]:
        """Token ids of ``text`` (unknown words -> ``<unk>``), padded: (int64 [L], length)."""
        index = {w: i for i, w in enumerate(self.meta["word_vocab"])}
        ids = [index.get(w, 1) for w in tokenize(text)]  # 1 = <unk>
        max_len = int(self.meta["max_question_len"])
        if len(ids) > max_len:
            raise ValueError(
                f"sort_of_clevr: question has {len(ids)} words, expected at most {max_len}: {text!r}"
            )
        out = np.zeros(max_len, dtype=np.int64)
        out[: len(ids)] = ids
        return out, len(ids)


def load_sort_of_clevr(path: str | os.PathLike[str]) -> SortOfClevr:
    """Load a dataset written by :func:`make_sort_of_clevr` (no unpickling).

    Raises:
        ValueError: when the folder lacks a valid ``meta.json``, was written by an unknown
            generator version, or a split file is missing, corrupt or inconsistent.
    """
    root = Path(path)
    meta = read_dataset_meta(root, NAME)
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(
            f"{root}: generator version {meta.get('generator_version')!r}, expected {GENERATOR_VERSION}; "
            "regenerate it with make_sort_of_clevr()"
        )
    sizes = meta.get("sizes")
    if not isinstance(sizes, dict) or not sizes:
        raise ValueError(f"{root / 'meta.json'}: expected a 'sizes' entry {{split: images}}, got {sizes!r}")
    splits: dict[str, dict[str, np.ndarray]] = {}
    for split, n in sizes.items():
        arrays = load_npz(root / f"{split}.npz", keys=SPLIT_KEYS)
        got = {k: arrays[k].shape[0] for k in SPLIT_KEYS}
        if any(v != n for v in got.values()):
            raise ValueError(f"{root / f'{split}.npz'}: expected {n} images in every array, got {got}")
        splits[split] = arrays
    return SortOfClevr(root=root, meta=meta, splits=splits)


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a dataset folder from its ``meta.json``: config and counts per split.

    Returns:
        ``{"name", "path", "generator_version", "seed", "config", "splits": {split: {"images",
        "questions", "relational", "non_relational", "by_type": {qtype name: count},
        "by_answer": {answer: count}}}}``.
    """
    root = Path(path)
    meta = read_dataset_meta(root, NAME)
    return {
        "name": NAME,
        "path": str(root),
        "generator_version": meta["generator_version"],
        "seed": meta["seed"],
        "config": meta["config"],
        "splits": meta["counts"],
    }


def accuracy_by_type(
    predictions: np.ndarray | torch.Tensor,
    answers: np.ndarray | torch.Tensor,
    qtypes: np.ndarray | torch.Tensor,
) -> dict[str, float]:
    """Accuracy per question type, per kind and overall.

    Args:
        predictions, answers, qtypes: int arrays of the same shape (answer ids, qtype codes).

    Returns:
        ``{"shape": acc, ..., "count": acc, "non_relational": acc, "relational": acc,
        "overall": acc}``; a type with no questions gets ``nan``.
    """
    pred, ans, qt = (
        np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a).ravel() for a in (predictions, answers, qtypes)
    )
    if not pred.shape == ans.shape == qt.shape:
        raise ValueError(
            f"accuracy_by_type: expected arrays of one size, got {pred.size}, {ans.size}, {qt.size} elements"
        )
    right = pred == ans

    def mean(sel: np.ndarray) -> float:
        return float(right[sel].mean()) if sel.any() else float("nan")

    out = {name: mean(qt == i) for i, name in enumerate(QTYPE_NAMES)}
    out["non_relational"] = mean(qt < 3)
    out["relational"] = mean(qt >= 3)
    out["overall"] = float(right.mean()) if right.size else float("nan")
    return out


# what a lookup table reads, per reference level of :func:`reference_accuracies`
REFERENCE_LEVELS: dict[str, str] = {
    "question only": "the majority answer of each question (type and colour) in the training split",
    "question + shape counts": "the same per question and number of squares in the scene: what a model that counts "
                               "the shapes but cannot tell which object is where can reach",
}


def reference_accuracies(data: SortOfClevr, split: str = "test") -> dict[str, dict[str, float]]:
    """Accuracies on ``split`` of lookup tables fitted on the training split, no model involved:
    the levels a trained fusion is read against (:data:`REFERENCE_LEVELS`).

    ``"question only"`` answers each (question type, colour) with its most frequent training
    answer: a model that ignores the image. ``"question + shape counts"`` also keys on how many of
    the scene's 6 objects are squares: a model that reads the image's bag of shapes but neither
    positions nor which colour has which shape. A key missing from the training split falls back
    to the question-only answer. Ties go to the lowest answer id.

    Returns:
        level name -> :func:`accuracy_by_type` of its predictions.
    """
    if "train" not in data.splits or split not in data.splits:
        raise ValueError(f"reference_accuracies: expected splits 'train' and {split!r}, got {sorted(data.splits)}")
    n_answers = len(ANSWER_VOCAB)

    def keys(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        question = arrays["qtype"].astype(np.int64) * N_OBJECTS + arrays["question_colour"]  # [N, Q]
        squares = (arrays["object_shape"] == 0).sum(axis=1)  # [N]
        return question.ravel(), (question * (N_OBJECTS + 1) + squares[:, None]).ravel(), arrays["answer"].ravel()

    q_train, s_train, a_train = keys(data.splits["train"])
    q_test, s_test, a_test = keys(data.splits[split])
    qtypes = data.splits[split]["qtype"].ravel()

    def table(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        counts = np.zeros((size, n_answers), dtype=np.int64)
        np.add.at(counts, (key, a_train.astype(np.int64)), 1)
        return counts.argmax(axis=1), counts.sum(axis=1) > 0

    n_questions = len(QTYPE_NAMES) * N_OBJECTS
    by_question, _ = table(q_train, n_questions)
    by_shapes, seen = table(s_train, n_questions * (N_OBJECTS + 1))
    pred_q = by_question[q_test]
    pred_s = np.where(seen[s_test], by_shapes[s_test], pred_q)
    return {
        "question only": accuracy_by_type(pred_q, a_test, qtypes),
        "question + shape counts": accuracy_by_type(pred_s, a_test, qtypes),
    }

r"""Synthetic N-modal interaction task: labels that only product / tensor fusions can read.

The label of a sample depends on its M modality vectors (M = 2 or 3) through interaction
terms of one chosen order: unimodal (additive), bimodal (products across pairs of
modalities) or trimodal (a product across all three). At order >= 2 no function of a
single modality, and so no sum or concatenation followed by a linear layer, carries
information about the label, while a fusion that multiplies per-modality projections
(TFN, LMF, MLB, MUTAN, ...) can represent it exactly.

Generating process. Inputs: dims d_0 .. d_{M-1}, classes C >= 2, rank r >= 1, order
k* in {1, .., M}, lower-order weight lambda >= 0, label noise eta in [0, 1).

1. Projections (fixed by the seed): for every order k <= k*, modality m, class c and rank
   index j, a unit direction a^{(k)}_{m,c,j} in R^{d_m}. For fixed (k, m, c) the r directions
   are orthonormal and Haar-random (when r > d_m: independent, uniform on the unit sphere).
2. Inputs: x_m ~ N(0, I_{d_m}), independent across modalities and samples. Each projection
   p^{(k)}_{m,c,j} = <a^{(k)}_{m,c,j}, x_m> is then N(0, 1), independent across j when r <= d_m.
3. Interaction terms, each with mean 0 and variance 1 per class c (when r <= every d_m)::

       S1_c = 1/sqrt(M r)   * sum_m        sum_j p1_{m,c,j}                       (unimodal)
       S2_c = 1/sqrt(P r)   * sum_{m<n}    sum_j p2_{m,c,j} * p2_{n,c,j}          (bimodal, P = M(M-1)/2)
       S3_c = 1/sqrt(r)     *              sum_j p3_{0,c,j} * p3_{1,c,j} * p3_{2,c,j}   (trimodal, M = 3)

4. Class scores s_c = S{k*}_c + lambda * sum_{k < k*} Sk_c; clean label y* = argmax_c s_c
   (classes are balanced by symmetry).
5. Observed label: y = y* with probability 1 - eta, else a class drawn uniformly from the
   other C - 1 classes. The Bayes accuracy is therefore 1 - eta.

Why concatenation fails at order >= 2 (with lambda = 0): for every single modality m,
E[s_c | x_m] = 0, and at order 2 with M = 2 the label is unchanged by (x_0, x_1) -> (-x_0, -x_1)
while any linear score flips sign; a linear classifier on [x_0; x_1] is at chance. A linear
classifier on the outer products x_m (x) x_n sees s_c as a linear function and is exact.

Storage per split (``train.npz``, ``test.npz``): ``x0``, ``x1`` [, ``x2``] float32 [N, d_m],
``label`` int64 [N], ``clean_label`` int64 [N] (y*, before label noise). ``generator.npz``
holds the projections, ``a{k}_m{m}`` float32 [C, r, d_m]. ``meta.json`` holds the config
and per-split class counts.

Example::

    root = make_interactions(dims=(16, 16), order=2, seed=0)
    data = load_interactions(root)
    item = data.dataset("train")[0]   # {"x0": Tensor[16], "x1": Tensor[16], "label": Tensor[]}
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._io import dataset_root, is_complete_dataset, load_npz, read_dataset_meta, write_dataset

__all__ = [
    "GENERATOR_VERSION",
    "InteractionDataset",
    "Interactions",
    "describe",
    "generate_interactions",
    "interaction_projections",
    "load_interactions",
    "make_interactions",
]

NAME = "interactions"
GENERATOR_VERSION = 1
_STREAM = {"generator": 0, "train": 1, "test": 2}


def _config(
    seed: int,
    n_train: int,
    n_test: int,
    dims: Sequence[int],
    order: int,
    n_classes: int,
    rank: int,
    label_noise: float,
    lower_order_weight: float,
) -> dict[str, Any]:
    """Validated, JSON-ready config (the cache key)."""

    def as_int(name: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"interactions: {name} must be an int >= {minimum}, got {value!r}")
        return int(value)

    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or len(dims) not in (2, 3):
        raise ValueError(
            f"interactions: dims must be a sequence of 2 or 3 ints (one per modality), got {dims!r}"
        )
    dims = [as_int(f"dims[{i}]", d, 1) for i, d in enumerate(dims)]
    order = as_int("order", order, 1)
    if order > len(dims):
        raise ValueError(
            f"interactions: order must be between 1 and the number of modalities {len(dims)}, got {order}"
        )
    label_noise, lower_order_weight = float(label_noise), float(lower_order_weight)
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"interactions: label_noise must be in [0, 1), got {label_noise}")
    if not math.isfinite(lower_order_weight) or lower_order_weight < 0:
        raise ValueError(
            f"interactions: lower_order_weight must be a finite float >= 0, got {lower_order_weight}"
        )
    return {
        "seed": as_int("seed", seed, 0),
        "n_train": as_int("n_train", n_train, 0),
        "n_test": as_int("n_test", n_test, 0),
        "dims": dims,
        "order": order,
        "n_classes": as_int("n_classes", n_classes, 2),
        "rank": as_int("rank", rank, 1),
        "label_noise": label_noise,
        "lower_order_weight": lower_order_weight,
    }


def _projections(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([config["seed"], _STREAM["generator"]])
    c, r = config["n_classes"], config["rank"]
    out = {}
    for k in range(1, config["order"] + 1):
        for m, d in enumerate(config["dims"]):
            g = rng.standard_normal((c, d, r))
            if r <= d:  # Haar-random orthonormal columns: QR with the signs of diag(R) fixed
                q, rr = np.linalg.qr(g)  # (c, d, r), (c, r, r)
                a = q * np.sign(np.diagonal(rr, axis1=-2, axis2=-1))[:, None, :]
            else:
                a = g / np.linalg.norm(g, axis=1, keepdims=True)
            out[f"a{k}_m{m}"] = np.ascontiguousarray(a.transpose(0, 2, 1)).astype(np.float32)  # (c, r, d)
    return out


def interaction_projections(
    dims: Sequence[int] = (16, 16),
    order: int = 2,
    n_classes: int = 2,
    rank: int = 1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The unit projection directions of step 1: ``a{k}_m{m}`` float32 [C, r, d_m] for k <= order."""
    return _projections(_config(seed, 0, 0, dims, order, n_classes, rank, 0.0, 0.0))


def _scores(
    xs: Sequence[np.ndarray], proj: Mapping[str, np.ndarray], config: Mapping[str, Any]
) -> np.ndarray:
    """Class scores s (float64 [N, C]) of step 4 for inputs xs[m]: [N, d_m]."""
    n_mod, r, top = len(xs), config["rank"], config["order"]
    terms = {}
    for k in range(1, top + 1):
        # p[m]: (N, C, r) projections of modality m for order k
        p = [
            np.einsum("nd,crd->ncr", x.astype(np.float64), proj[f"a{k}_m{m}"].astype(np.float64))
            for m, x in enumerate(xs)
        ]
        groups = list(combinations(range(n_mod), k))
        total = sum(np.prod([p[m] for m in g], axis=0) for g in groups)  # (N, C, r)
        terms[k] = total.sum(-1) / math.sqrt(len(groups) * r)  # (N, C), unit variance per class
    lower = sum((terms[k] for k in range(1, top)), np.zeros_like(terms[top]))
    return terms[top] + config["lower_order_weight"] * lower


def _generate_split(
    n: int, rng: np.random.Generator, proj: Mapping[str, np.ndarray], config: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    xs = [rng.standard_normal((n, d)).astype(np.float32) for d in config["dims"]]
    clean = _scores(xs, proj, config).argmax(-1).astype(np.int64)  # (N,)
    c = config["n_classes"]
    flip = rng.random(n) < config["label_noise"]
    other = (clean + rng.integers(1, c, size=n)) % c  # uniform over the other C - 1 classes
    label = np.where(flip, other, clean)
    return {**{f"x{m}": x for m, x in enumerate(xs)}, "label": label, "clean_label": clean}


def generate_interactions(
    n_train: int = 10000,
    n_test: int = 2000,
    dims: Sequence[int] = (16, 16),
    order: int = 2,
    n_classes: int = 2,
    rank: int = 1,
    label_noise: float = 0.0,
    lower_order_weight: float = 0.0,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Generate the interaction task in memory (process in the module docstring).

    Args:
        n_train, n_test: samples per split.
        dims: d_m per modality, 2 or 3 of them.
        order: k*, 1 (additive), 2 (pairwise products) or 3 (three-way product, M = 3).
        n_classes: C >= 2 (2 = binary).
        rank: r, number of product terms per class.
        label_noise: eta, probability of replacing the label by another class.
        lower_order_weight: lambda, weight of the terms of order < k*.
        seed: int >= 0; splits use ``np.random.default_rng([seed, split_id])``.

    Returns:
        ``{"train": arrays, "test": arrays}``: ``x{m}`` float32 [N, d_m], ``label`` and
        ``clean_label`` int64 [N].
    """
    config = _config(seed, n_train, n_test, dims, order, n_classes, rank, label_noise, lower_order_weight)
    proj = _projections(config)
    rngs = {split: np.random.default_rng([config["seed"], _STREAM[split]]) for split in ("train", "test")}
    return {split: _generate_split(config[f"n_{split}"], rng, proj, config) for split, rng in rngs.items()}


def _counts(arrays: Mapping[str, np.ndarray], n_classes: int) -> dict[str, Any]:
    label, clean = arrays["label"], arrays["clean_label"]
    return {
        "samples": int(label.size),
        "by_class": {str(c): int(v) for c, v in enumerate(np.bincount(label, minlength=n_classes))},
        "noisy_labels": int((label != clean).sum()),
    }


def make_interactions(
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    n_train: int = 10000,
    n_test: int = 2000,
    dims: Sequence[int] = (16, 16),
    order: int = 2,
    n_classes: int = 2,
    rank: int = 1,
    label_noise: float = 0.0,
    lower_order_weight: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Generate the task to disk, or return the folder when it already holds it.

    Args:
        out_dir: target folder; ``None`` = ``cache_dir()/interactions/v<version>/seed<seed>-<hash>``.
        overwrite: regenerate even when a complete dataset with this config is present.
        others: as in :func:`generate_interactions`.

    Returns:
        The folder with ``train.npz``, ``test.npz``, ``generator.npz`` and ``meta.json``.
    """
    config = _config(seed, n_train, n_test, dims, order, n_classes, rank, label_noise, lower_order_weight)
    root = dataset_root(out_dir, NAME, GENERATOR_VERSION, config)
    if not overwrite and is_complete_dataset(root, NAME, GENERATOR_VERSION, config):
        return root
    splits = generate_interactions(**config)
    meta = {
        "name": NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": config["seed"],
        "config": config,
        "sizes": {split: int(a["label"].size) for split, a in splits.items()},
        "modalities": [f"x{m}" for m in range(len(config["dims"]))],
        "counts": {split: _counts(a, config["n_classes"]) for split, a in splits.items()},
    }
    return write_dataset(root, splits, meta, extra_files={"generator": _projections(config)})


class InteractionDataset(Dataset):
    """Samples of one split as dicts of tensors.

    Item: ``{"x0": Tensor[d_0], "x1": Tensor[d_1], ["x2": Tensor[d_2]], "label": Tensor[]}``;
    ``x{m}`` are float32, ``label`` is int64.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], modalities: Sequence[str]) -> None:
        self.modalities = tuple(modalities)
        self._t = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in (*self.modalities, "label")}

    def __len__(self) -> int:
        return int(self._t["label"].shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self._t.items()}


@dataclass(frozen=True)
class Interactions:
    """A loaded interaction task: arrays per split, projections and ``meta.json``."""

    root: Path
    meta: dict[str, Any]
    splits: dict[str, dict[str, np.ndarray]]
    projections: dict[str, np.ndarray]

    @property
    def modalities(self) -> list[str]:
        return list(self.meta["modalities"])

    def dataset(self, split: str = "train") -> InteractionDataset:
        """A ``torch.utils.data.Dataset`` over ``split``."""
        if split not in self.splits:
            raise ValueError(f"interactions: unknown split {split!r}, expected one of {sorted(self.splits)}")
        return InteractionDataset(self.splits[split], self.modalities)


def load_interactions(path: str | os.PathLike[str]) -> Interactions:
    """Load a task written by :func:`make_interactions`; problems raise ``ValueError`` naming the file."""
    root = Path(path)
    meta = read_dataset_meta(root, NAME)
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(
            f"{root}: generator version {meta.get('generator_version')!r}, expected {GENERATOR_VERSION}; "
            "regenerate it with make_interactions()"
        )
    keys = (*meta["modalities"], "label", "clean_label")
    splits = {}
    for split, n in meta["sizes"].items():
        arrays = load_npz(root / f"{split}.npz", keys=keys)
        got = {k: arrays[k].shape[0] for k in keys}
        if any(v != n for v in got.values()):
            raise ValueError(f"{root / f'{split}.npz'}: expected {n} samples in every array, got {got}")
        splits[split] = arrays
    return Interactions(root=root, meta=meta, splits=splits, projections=load_npz(root / "generator.npz"))


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary from ``meta.json``: ``{"name", "path", "generator_version", "seed", "config",
    "splits": {split: {"samples", "by_class": {class: count}, "noisy_labels"}}}``."""
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

"""Lightning data modules: every mmfuse dataset as dict batches with the model's key names.

Batch keys per dataset (``B`` batch, ``R`` regions, ``L`` question tokens, ``T`` time steps)::

    sort-of-clevr   image [B, 3, 75, 75] float in [0, 1]; regions [B, R, 10]; region_mask [B, R] bool;
                    question_bits [B, 11]; question_tokens [B, L] long; question_mask [B, L] bool;
                    answer [B] long; qtype [B] long
    interactions    x0, x1, (x2) [B, D_m] float; label [B] long
    vqa2            regions [B, K, D]; region_mask [B, K]; boxes [B, K, 4] (x1/w, y1/h, x2/w, y2/h);
                    box_geometry [B, K, 6]; question_tokens, question_mask; target [B, A] soft scores;
                    answer [B] long (best-scored class, -1 = none); question_id [B]
    mosi / mosei    text, audio, vision [B, T, D_m] (+ *_mask [B, T] bool); label [B] float (regression)
                    or long (binary / 7class)
    mmimdb          text [B, 300]; image [B, 4096] (or [B, 3, H, W]); label [B, 23] float multi-hot
    image-folder    image [B, 3, H, W]; question_tokens, question_mask; answer [B] long (-1 = unknown)

Question tokens are trimmed to the longest question of the batch; masks are True on real tokens.

``datamodule.info`` (after :meth:`MMFuseDataModule.setup`) describes what a model config needs::

    {"dataset": "sort-of-clevr", "task": {"kind": "classification", "num_outputs": 10},
     "target_key": "answer", "soft_targets": False,
     "inputs": {"regions": {"in_dim": 10, "max_len": 6, "shape": [6, 10], "mask_key": "region_mask"},
                "question_tokens": {"vocab_size": 38, "max_len": 12, ...}, ...},
     "qtype_names": [...], "relational_qtypes": [3, 4, 5], "answer_vocab": [...], "word_vocab": [...],
     "sizes": {"train": ..., "val": ..., "test": ...}, "data_root": "<folder of a generated dataset>"}

Training batches come from :class:`EpochBatchSampler`: one permutation per epoch drawn from
``(train.seed, epoch)``, cut into global batches of ``batch_size x world_size`` rows, each split
contiguously across the ranks, so N processes at batch b see the same global batches as one
process at batch N*b. :class:`ResumableLoader` records how many batches of the epoch were handed
out (Lightning stores it in ``last.ckpt``) and skips them after a resume, so a resumed run sees
exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import default_collate

from .config import ConfigError, canonical_dataset

__all__ = [
    "EpochBatchSampler",
    "MMFuseDataModule",
    "ResumableLoader",
    "ShardedBatchSampler",
    "build_datamodule",
    "collate_batch",
    "question_mask",
]


# --------------------------------------------------------------------------- distributed helpers


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _EpochHolder:
    """What Lightning's ``_set_sampler_epoch`` finds at ``loader.batch_sampler.sampler``."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class EpochBatchSampler:
    """Shuffled training batches, deterministic in ``(seed, epoch)`` and split across ranks.

    Epoch ``e`` uses ``np.random.default_rng([seed, e]).permutation(n)``, cut into global batches
    of ``batch_size * world_size`` indices; rank ``r`` takes rows ``[r*batch_size, (r+1)*batch_size)``
    of each. ``skip`` batches at the start of the epoch are left out (resume).

    Args:
        n: dataset size.
        batch_size: per-rank batch size.
        seed: shuffling seed.
        drop_last: drop the last incomplete global batch. When kept with several ranks it is
            split as evenly as possible, and dropped if it has fewer rows than ranks.
        group: shuffle whole groups of ``group`` consecutive indices (``n`` must be a multiple):
            the groups are permuted and each keeps its indices together, so a batch holds whole
            groups (Sort-of-CLEVR: every question of an image, whose CNN then runs once).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, *, drop_last: bool = True, group: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.drop_last = int(n), int(batch_size), int(seed), bool(drop_last)
        self.group = int(group)
        if self.group < 1 or self.n % self.group:
            raise ValueError(f"EpochBatchSampler: expected a group size >= 1 dividing n = {self.n}, got {group}")
        self.sampler = _EpochHolder()
        self.skip = 0

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        _, world = _rank_world()
        per_step = self.batch_size * world
        full, rest = divmod(self.n, per_step)
        return full + (1 if rest >= world and not self.drop_last else 0)

    def __iter__(self):
        rank, world = _rank_world()
        per_step = self.batch_size * world
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.group == 1:
            order = rng.permutation(self.n)
        else:  # whole groups in a random order; a group's indices stay together
            order = (rng.permutation(self.n // self.group)[:, None] * self.group + np.arange(self.group)).ravel()
        for b in range(self.skip, len(self)):
            chunk = order[b * per_step : (b + 1) * per_step]
            if len(chunk) == per_step:
                part = chunk[rank * self.batch_size : (rank + 1) * self.batch_size]
            else:
                part = np.array_split(chunk, world)[rank]
            yield part.tolist()


class ShardedBatchSampler:
    """Evaluation batches in dataset order; rank ``r`` of ``w`` takes indices ``r, r + w, ...``.

    No index is repeated or padded, so metrics summed over ranks equal one process's.
    """

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size = int(n), int(batch_size)

    def _indices(self) -> range:
        rank, world = _rank_world()
        return range(rank, self.n, world)

    def __len__(self) -> int:
        return math.ceil(len(self._indices()) / self.batch_size)

    def __iter__(self):
        idx = self._indices()
        for start in range(0, len(idx), self.batch_size):
            yield list(idx[start : start + self.batch_size])


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` whose position in the epoch survives a checkpoint.

    Lightning saves :meth:`state_dict` (epoch, batches handed out) into ``last.ckpt`` and calls
    :meth:`load_state_dict` on resume; the next iteration of that epoch then starts after those
    batches.
    """

    def __init__(self, dataset: Dataset, batch_sampler: EpochBatchSampler, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._served = 0
        self._served_epoch = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self):
        return self._batches()

    def _batches(self):
        # A generator: this body runs at the first next(), not at iter(). Lightning creates the
        # iterator before it sets the sampler's epoch (and, on a resume, may do so before it
        # hands back the saved position); by the first next() both are in place.
        sampler = self.batch_sampler
        skip = 0
        if self._resume is not None:
            epoch, served = self._resume
            self._resume = None
            if epoch == sampler.epoch:
                skip = served
        sampler.skip = skip
        self._served_epoch, self._served = sampler.epoch, skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._served_epoch), "batches": int(self._served)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))


# --------------------------------------------------------------------------- collate


def question_mask(tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim ``tokens`` [B, L] to the longest question and build its mask (True = real token).

    Args:
        tokens: Tensor[B, L] int, 0-padded on the right.
        lengths: Tensor[B] number of real tokens; ``None`` = the non-zero tokens.

    Returns:
        ``(tokens [B, L'], mask [B, L'] bool)`` with ``L' = max(lengths)`` (at least 1).
    """
    tokens = tokens.long()
    if lengths is None:
        lengths = (tokens != 0).sum(-1)
    width = max(int(lengths.max()) if lengths.numel() else 1, 1)
    mask = torch.arange(width)[None, :] < lengths[:, None]  # (B, L')
    return tokens[:, :width].contiguous(), mask


def _finish_questions(batch: dict[str, Any]) -> dict[str, Any]:
    if "question_tokens" in batch:
        batch["question_tokens"], batch["question_mask"] = question_mask(
            batch["question_tokens"], batch.pop("question_len", None)
        )
    return batch


def collate_batch(items: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> dict[str, Any]:
    """Stack dataset items into a dict batch (or pass through a batch a dataset built already).

    Question tokens are trimmed and masked (:func:`question_mask`); sequence features of
    different lengths (MOSI with trimming) are right-padded with a ``<key>_mask``; VQA ``boxes``
    become the normalised corners of ``box_geometry``.
    """
    if isinstance(items, Mapping):
        return dict(items)
    if not items:
        raise ValueError("collate_batch: empty batch")
    first = items[0]
    batch: dict[str, Any] = {}
    for key in first:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor) and values[0].dim() == 2 and len({v.shape[0] for v in values}) > 1:
            batch[key], batch[f"{key}_mask"] = _pad_sequences(values)
        else:
            batch[key] = default_collate(values)
    if "box_geometry" in batch:  # VQA: pixel boxes -> normalised (x1/w, y1/h, x2/w, y2/h)
        batch["boxes"] = batch["box_geometry"][..., :4].contiguous()
    return _finish_questions(batch)


def _pad_sequences(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    t_max = max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros(len(seqs), t_max, seqs[0].shape[1])  # (B, T, D)
    mask = torch.zeros(len(seqs), t_max, dtype=torch.bool)  # (B, T)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask


def _collate_affect(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    from mmfuse.data.mosi import collate_affect

    return collate_affect(items)


# --------------------------------------------------------------------------- array-backed datasets


class _SortOfClevrQuestions(Dataset):
    """Questions of a subset of Sort-of-CLEVR images; batches are built vectorised (``__getitems__``).

    Item ``i`` is question ``i % Q`` of image ``images[i // Q]``.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], images: np.ndarray, *, pixels: bool, regions: bool,
                 bits: bool, tokens: bool, group_by_image: bool = False) -> None:
        self.a = arrays
        self.images = np.asarray(images, dtype=np.int64)
        self.q = int(arrays["qtype"].shape[1])
        self.pixels, self.regions, self.bits, self.tokens = pixels, regions, bits, tokens
        # training batches of whole images (read by the train sampler): see data.group_by_image
        self.group_size = self.q if group_by_image else 1

    def __len__(self) -> int:
        return len(self.images) * self.q

    def _rows(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        img, q = self.images[idx // self.q], idx % self.q
        a = self.a
        rows: dict[str, torch.Tensor] = {}
        if self.pixels:
            rows["image"] = torch.from_numpy(a["images"][img]).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
            rows["image_id"] = torch.from_numpy(img)  # (B,) rows of one image share it (model input group_key)
        if self.regions:
            rows["regions"] = torch.from_numpy(a["regions"][img])
            rows["region_mask"] = torch.from_numpy(a["region_mask"][img])
        if self.bits:
            rows["question_bits"] = torch.from_numpy(a["question_bits"][img, q].astype(np.float32))
        if self.tokens:
            rows["question_tokens"] = torch.from_numpy(a["question_tokens"][img, q].astype(np.int64))
            rows["question_len"] = torch.from_numpy(a["question_len"][img, q].astype(np.int64))
        rows["answer"] = torch.from_numpy(a["answer"][img, q].astype(np.int64))
        rows["qtype"] = torch.from_numpy(a["qtype"][img, q].astype(np.int64))
        return rows

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch at once (the ``DataLoader`` passes it to :func:`collate_batch`)."""
        return _finish_questions(self._rows(indices))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self._rows([index]).items()}


class _ArrayRows(Dataset):
    """Rows ``rows`` of same-length arrays, as dicts of tensors; batched through ``__getitems__``."""

    def __init__(self, arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> None:
        self.a = dict(arrays)
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        sel = self.rows[np.asarray(indices, dtype=np.int64)]
        return {k: torch.from_numpy(np.ascontiguousarray(v[sel])) for k, v in self.a.items()}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def _carve(n: int, fraction: float, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of ``range(n)`` into (kept, carved) sorted index arrays."""
    if fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    n_out = min(max(int(round(fraction * n)), 1), n - 1)
    perm = np.random.default_rng([seed, stream]).permutation(n)
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


# --------------------------------------------------------------------------- builders

_Splits = dict[str, Dataset]
_VAL_STREAM, _TEST_STREAM = 7, 8


def _sort_of_clevr(cfg: Mapping[str, Any], vocab: Mapping[str, Any] | None) -> tuple[_Splits, dict[str, Any], Callable]:
    from mmfuse.data import sort_of_clevr as soc

    if cfg["path"] is None:
        root = soc.make_sort_of_clevr(
            seed=cfg["seed"], n_train=cfg["n_train"], n_test=cfg["n_test"], n_nonrel=cfg["n_nonrel"],
            n_rel=cfg["n_rel"], n_distractors=cfg["n_distractors"], region_noise=cfg["region_noise"],
        )
    else:
        root = cfg["path"]
    data = soc.load_sort_of_clevr(root)
    for split in ("train", "test"):
        if split not in data.splits:
            raise ConfigError(f"data.path: {root} has no {split!r} split (found {sorted(data.splits)})")
    rep, question = cfg["representation"], cfg["question"]
    flags = {
        "pixels": rep in ("pixels", "all"), "regions": rep in ("regions", "all"),
        "bits": question in ("bits", "all"), "tokens": question in ("tokens", "all"),
    }
    train_arrays, test_arrays = data.splits["train"], data.splits["test"]
    n_images = train_arrays["qtype"].shape[0]
    keep, val = _carve(n_images, cfg["val_fraction"], cfg["seed"], _VAL_STREAM)  # by image: no shared scenes
    group = cfg["group_by_image"]
    group = flags["pixels"] if group == "auto" else bool(group)
    splits = {
        "train": _SortOfClevrQuestions(train_arrays, keep, **flags, group_by_image=group),
        "val": _SortOfClevrQuestions(train_arrays, val, **flags),
        "test": _SortOfClevrQuestions(test_arrays, np.arange(test_arrays["qtype"].shape[0]), **flags),
    }
    r = int(train_arrays["regions"].shape[1])
    length = int(data.meta["max_question_len"])
    inputs: dict[str, dict[str, Any]] = {}
    if flags["pixels"]:
        size = int(data.meta["image_size"])
        inputs["image"] = {"shape": [3, size, size], "in_channels": 3, "height": size, "width": size, "image_size": size}
    if flags["regions"]:
        inputs["regions"] = {"shape": [r, soc.REGION_DIM], "in_dim": soc.REGION_DIM, "max_len": r, "num_regions": r,
                             "mask_key": "region_mask"}
    if flags["bits"]:
        inputs["question_bits"] = {"shape": [soc.QUESTION_BITS], "in_dim": soc.QUESTION_BITS}
    if flags["tokens"]:
        inputs["question_tokens"] = {"shape": [length], "vocab_size": len(data.word_vocab), "max_len": length,
                                     "mask_key": "question_mask"}
    info = {
        "task": {"kind": "classification", "num_outputs": len(data.answer_vocab)},
        "target_key": "answer",
        "inputs": inputs,
        "qtype_names": data.qtype_names,
        "relational_qtypes": list(data.meta.get("relational_qtypes", [3, 4, 5])),
        "answer_vocab": data.answer_vocab,
        "word_vocab": data.word_vocab,
        "data_root": str(root),
        # batch keys of row ids that a model input may share work by (model.inputs.*.group_key)
        "group_keys": ["image_id"] if flags["pixels"] else [],
    }
    return splits, info, collate_batch


def _interactions(cfg: Mapping[str, Any], vocab: Mapping[str, Any] | None) -> tuple[_Splits, dict[str, Any], Callable]:
    from mmfuse.data import interactions as it

    if cfg["path"] is None:
        root = it.make_interactions(
            seed=cfg["seed"], n_train=cfg["n_train"], n_test=cfg["n_test"], dims=cfg["dims"], order=cfg["order"],
            n_classes=cfg["n_classes"], rank=cfg["rank"], label_noise=cfg["label_noise"],
            lower_order_weight=cfg["lower_order_weight"],
        )
    else:
        root = cfg["path"]
    data = it.load_interactions(root)
    keys = [*data.modalities, "label"]
    train = {k: data.splits["train"][k] for k in keys}
    test = {k: data.splits["test"][k] for k in keys}
    keep, val = _carve(len(train["label"]), cfg["val_fraction"], cfg["seed"], _VAL_STREAM)
    splits = {"train": _ArrayRows(train, keep), "val": _ArrayRows(train, val), "test": _ArrayRows(test, np.arange(len(test["label"])))}
    info = {
        "task": {"kind": "classification", "num_outputs": int(data.meta["config"]["n_classes"])},
        "target_key": "label",
        "inputs": {m: {"shape": [int(train[m].shape[1])], "in_dim": int(train[m].shape[1])} for m in data.modalities},
        "data_root": str(root),
    }
    return splits, info, collate_batch


def _affect(cfg: Mapping[str, Any], vocab: Mapping[str, Any] | None) -> tuple[_Splits, dict[str, Any], Callable]:
    from mmfuse.data.mosi import load_affect

    data = load_affect(cfg["path"], nonfinite=cfg["nonfinite"])
    options = {"trim": cfg["trim"], "labels": cfg["labels"], "modalities": cfg["modalities"]}
    splits = {"train": data.dataset("train", **options), "val": data.dataset("valid", **options),
              "test": data.dataset("test", **options)}
    first = data.splits["train"]
    n_labels = int(first["labels"].reshape(first["labels"].shape[0], -1).shape[1])
    task = {
        "regression": {"kind": "regression", "num_outputs": n_labels},
        "binary": {"kind": "classification", "num_outputs": 2},
        "7class": {"kind": "classification", "num_outputs": 7},
    }[cfg["labels"]]
    inputs = {}
    for m in cfg["modalities"]:
        x = first[m]
        if x.ndim == 3:
            inputs[m] = {"shape": [int(x.shape[1]), int(x.shape[2])], "in_dim": int(x.shape[2]), "max_len": int(x.shape[1]),
                         "mask_key": f"{m}_mask"}
        else:
            inputs[m] = {"shape": [int(x.shape[1])], "in_dim": int(x.shape[1])}
    info = {"task": task, "target_key": "label", "inputs": inputs}
    return splits, info, _collate_affect


def _mmimdb(cfg: Mapping[str, Any], vocab: Mapping[str, Any] | None) -> tuple[_Splits, dict[str, Any], Callable]:
    from mmfuse.data.mmimdb import MMIMDB_SPLITS, load_mmimdb

    ranges = {k: tuple(v) for k, v in cfg["splits"].items()} if cfg["splits"] else MMIMDB_SPLITS
    data = load_mmimdb(cfg["path"], image=cfg["image"], splits=ranges)
    train = data["train"]
    image_shape = [int(s) for s in train.image_shape]
    image_info: dict[str, Any] = {"shape": image_shape}
    if len(image_shape) == 1:
        image_info["in_dim"] = image_shape[0]
    else:
        image_info.update(in_channels=image_shape[0], height=image_shape[1], width=image_shape[2], image_size=image_shape[1])
    info = {
        "task": {"kind": "multilabel", "num_outputs": int(train.num_genres[0])},
        "target_key": "label",
        "inputs": {"text": {"shape": [int(train.text_dim[0])], "in_dim": int(train.text_dim[0])}, "image": image_info},
    }
    return {"train": train, "val": data["valid"], "test": data["test"]}, info, collate_batch


def _vqa2(cfg: Mapping[str, Any], vocab: Mapping[str, Any] | None) -> tuple[_Splits, dict[str, Any], Callable]:
    from mmfuse.data import vqa
    from mmfuse.data.vqa_features import open_features

    def per_split(value: Any, split: str) -> Any:
        return value.get(split, value.get("train")) if isinstance(value, Mapping) else value

    def store(split: str) -> Any:
        options: dict[str, Any] = {"feature_dim": cfg["feature_dim"]}
        id_map = per_split(cfg["id_map"], split)
        if id_map is not None:
            options["id_map"] = id_map
        return open_features(per_split(cfg["features"], split), **options)

    train_q = vqa.load_vqa_questions(cfg["train_questions"])
    train_a = vqa.load_vqa_annotations(cfg["train_annotations"])
    if vocab and vocab.get("answer_vocab") is not None:
        answers = vqa.AnswerVocab(tuple(vocab["answer_vocab"]))
        words = vqa.QuestionVocab(tuple(vocab["word_vocab"]))
    else:
        answers = vqa.build_answer_vocab(train_a, top_n=cfg["top_answers"], min_count=cfg["min_answer_count"],
                                         source=cfg["answer_source"])
        words = vqa.build_question_vocab(train_q)
    if len(answers) == 0:
        raise ConfigError("data.top_answers: the answer vocabulary is empty (no answer passes min_answer_count)")
    image_ids = sorted({q["image_id"] for q in train_q})
    keep, val = _carve(len(image_ids), cfg["val_fraction"], cfg["seed"], _VAL_STREAM)  # by image
    val_images = {image_ids[i] for i in val}
    by_image = {"train": [q for q in train_q if q["image_id"] not in val_images],
                "val": [q for q in train_q if q["image_id"] in val_images]}
    options = {"max_question_len": cfg["max_question_len"], "max_boxes": cfg["max_boxes"],
               "drop_missing_images": cfg["drop_missing_images"]}
    train_store = store("train")
    splits: _Splits = {
        name: vqa.VQADataset(qs, _annotations_of(qs, train_a), train_store, answers, words, **options)
        for name, qs in by_image.items()
    }
    if cfg["test_questions"] is not None:
        test_q = vqa.load_vqa_questions(cfg["test_questions"])
        test_a = vqa.load_vqa_annotations(cfg["test_annotations"])
        splits["test"] = vqa.VQADataset(test_q, test_a, store("test"), answers, words, **options)
    else:
        splits["test"] = splits["val"]
    d = int(train_store.feature_dim) if train_store.feature_dim else int(splits["train"][0]["regions"].shape[-1])
    k = cfg["max_boxes"]
    info = {
        "task": {"kind": "multilabel", "num_outputs": len(answers)},
        "target_key": "target",
        "soft_targets": True,
        "inputs": {
            "regions": {"shape": [k, d], "in_dim": d, "max_len": k, "num_regions": k, "mask_key": "region_mask"},
            "boxes": {"shape": [k, 4], "in_dim": 4},
            "box_geometry": {"shape": [k, 6], "in_dim": 6},
            "question_tokens": {"shape": [cfg["max_question_len"]], "vocab_size": len(words),
                                "max_len": cfg["max_question_len"], "mask_key": "question_mask"},
        },
        "answer_vocab": list(answers.answers),
        "word_vocab": list(words.words),
    }
    return splits, info, collate_batch


def _annotations_of(questions: Sequence[Mapping[str, Any]], annotations: Sequence[Mapping[str, Any]]) -> list:
    wanted = {q["question_id"] for q in questions}
    return [a for a in annotations if a["question_id"] in wanted]


def _image_folder(cfg: Mapping[str, Any], vocab: Mapping[str, Any] | None) -> tuple[_Splits, dict[str, Any], Callable]:
    from mmfuse.data.image_folder import ImageFolderVQA
    from mmfuse.data.vqa import AnswerVocab, QuestionVocab

    size = cfg["image_size"] if isinstance(cfg["image_size"], int) else tuple(cfg["image_size"])
    options: dict[str, Any] = {"image_size": size, "max_question_len": cfg["max_question_len"]}
    if vocab and vocab.get("answer_vocab") is not None:
        options["answer_vocab"] = AnswerVocab(tuple(vocab["answer_vocab"]))
        options["question_vocab"] = QuestionVocab(tuple(vocab["word_vocab"]))
    table = ImageFolderVQA(cfg["path"], cfg["table"], min_answer_count=cfg["min_answer_count"], **options)
    options["answer_vocab"], options["question_vocab"] = table.answer_vocab, table.question_vocab
    rows = np.arange(len(table))
    if cfg["test_table"] is not None:
        test: Dataset = ImageFolderVQA(cfg["path"], cfg["test_table"], **options)
    else:
        kept, carved = _carve(len(rows), cfg["test_fraction"], cfg["seed"], _TEST_STREAM)
        rows, test = kept, Subset(table, carved.tolist())
    keep, val = _carve(len(rows), cfg["val_fraction"], cfg["seed"], _VAL_STREAM)
    splits = {"train": Subset(table, rows[keep].tolist()), "val": Subset(table, rows[val].tolist()), "test": test}
    h, w = table.image_size
    info = {
        "task": {"kind": "classification", "num_outputs": len(table.answer_vocab)},
        "target_key": "answer",
        "inputs": {
            "image": {"shape": [3, h, w], "in_channels": 3, "height": h, "width": w, "image_size": h},
            "question_tokens": {"shape": [cfg["max_question_len"]], "vocab_size": len(table.question_vocab),
                                "max_len": cfg["max_question_len"], "mask_key": "question_mask"},
        },
        "answer_vocab": list(table.answer_vocab.answers),
        "word_vocab": list(table.question_vocab.words),
    }
    return splits, info, collate_batch


_BUILDERS: dict[str, Callable[..., tuple[_Splits, dict[str, Any], Callable]]] = {
    "sort-of-clevr": _sort_of_clevr,
    "interactions": _interactions,
    "vqa2": _vqa2,
    "mosi": _affect,
    "mosei": _affect,
    "mmimdb": _mmimdb,
    "image-folder": _image_folder,
}


# --------------------------------------------------------------------------- the data module


class MMFuseDataModule(L.LightningDataModule):
    """Train / val / test loaders of one dataset, from the (validated) ``data`` config section.

    Args:
        config: the ``data`` section (:func:`mmfuse.train.config.load_config` fills it).
        shuffle_seed: seed of the training order (the run's ``train.seed``).
        vocab: ``{"answer_vocab": [...], "word_vocab": [...]}`` to reuse a trained model's
            vocabularies (VQA v2, image-folder) instead of building them from the data.

    ``info`` (see the module docstring) is available after :meth:`setup`.
    """

    def __init__(self, config: Mapping[str, Any], *, shuffle_seed: int = 0, vocab: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = dict(config)
        self.name = canonical_dataset(self.config.get("name"))
        self.shuffle_seed = int(shuffle_seed)
        self.vocab = vocab
        self.datasets: dict[str, Dataset] = {}
        self.info: dict[str, Any] = {}
        self._collate: Callable = collate_batch

    def prepare_data(self) -> None:
        """Generate a generated dataset into the cache (once, on the main process)."""
        if self.name in ("sort-of-clevr", "interactions") and self.config.get("path") is None:
            self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits, info, collate = _BUILDERS[self.name](self.config, self.vocab)
        for split, dataset in splits.items():
            if split == "train" and len(dataset) == 0:
                raise ConfigError(f"data: the {self.name!r} training split is empty")
        self.datasets, self._collate = splits, collate
        self.info = {
            "dataset": self.name,
            "soft_targets": False,
            **info,
            "sizes": {split: len(ds) for split, ds in splits.items()},
        }

    def _loader_options(self) -> dict[str, Any]:
        workers = self.config["num_workers"]
        return {
            "collate_fn": self._collate,
            "num_workers": workers,
            "pin_memory": self.config["pin_memory"],
            "persistent_workers": workers > 0,
        }

    def _train_sampler(self) -> EpochBatchSampler:
        self.setup()
        train = self.datasets["train"]
        return EpochBatchSampler(len(train), self.config["batch_size"], self.shuffle_seed,
                                 drop_last=self.config["drop_last"], group=getattr(train, "group_size", 1))

    def train_batches_per_epoch(self) -> int:
        """Training batches per epoch and process (with the current process group, if any)."""
        return len(self._train_sampler())

    def train_dataloader(self) -> ResumableLoader:
        sampler = self._train_sampler()
        dataset = self.datasets["train"]
        if len(sampler) == 0:
            _, world = _rank_world()
            raise ConfigError(
                f"data.batch_size: {self.config['batch_size']} x {world} process(es) is larger than the "
                f"{len(dataset)} training samples with drop_last=true"
            )
        return ResumableLoader(dataset, sampler, **self._loader_options())

    def _eval_loader(self, split: str) -> DataLoader:
        self.setup()
        dataset = self.datasets[split]
        size = self.config["eval_batch_size"] or self.config["batch_size"]
        return DataLoader(dataset, batch_sampler=ShardedBatchSampler(len(dataset), size), **self._loader_options())

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return self._eval_loader("val") if len(self.datasets["val"]) else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def build_datamodule(data_config: Mapping[str, Any], *, shuffle_seed: int = 0,
                     vocab: Mapping[str, Any] | None = None) -> MMFuseDataModule:
    """The data module of a validated ``data`` section (see :class:`MMFuseDataModule`)."""
    return MMFuseDataModule(data_config, shuffle_seed=shuffle_seed, vocab=vocab)


def json_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` without machine-specific entries, for ``info.json`` next to saved weights."""
    return {k: v for k, v in info.items() if k not in ("data_root",)}

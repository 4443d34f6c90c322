"""Data modules: batch keys and dtypes per dataset, ``info``, samplers, resumable loaders."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

import train_helpers as h
from mmfuse.train import ConfigError, build_datamodule, load_config
from mmfuse.train.data import EpochBatchSampler, ResumableLoader, ShardedBatchSampler, collate_batch, question_mask


def datamodule(name, **data):
    cfg = load_config(h.tiny_config(name, **data))
    dm = build_datamodule(cfg["data"], shuffle_seed=0)
    dm.setup("fit")
    return dm


def first_batch(dm, split="train"):
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return next(iter(loader))


def test_sort_of_clevr_batches_and_info():
    dm = datamodule("sort-of-clevr", representation="all", n_distractors=2)
    b = first_batch(dm)
    assert b["image"].shape == (16, 3, 75, 75) and b["image"].dtype == torch.float32
    assert 0.0 <= float(b["image"].min()) and float(b["image"].max()) <= 1.0
    assert b["regions"].shape == (16, 8, 10) and b["region_mask"].dtype == torch.bool
    assert b["region_mask"].sum(1).eq(6).all()  # 6 objects + 2 distractors
    assert b["question_bits"].shape == (16, 11) and b["question_bits"].dtype == torch.float32
    tokens, mask = b["question_tokens"], b["question_mask"]
    assert tokens.dtype == torch.long and mask.dtype == torch.bool and tokens.shape == mask.shape
    assert mask.any(0).all(), "trimmed to the longest question of the batch"
    assert ((tokens != 0) == mask).all()
    assert b["answer"].dtype == torch.long and b["qtype"].dtype == torch.long and b["answer"].shape == (16,)
    info = dm.info
    assert info["task"] == {"kind": "classification", "num_outputs": 10}
    assert info["target_key"] == "answer"
    assert info["inputs"]["regions"]["in_dim"] == 10 and info["inputs"]["regions"]["max_len"] == 8
    assert info["inputs"]["question_tokens"]["vocab_size"] == len(info["word_vocab"])
    assert info["qtype_names"] == ["shape", "left", "top", "closest", "furthest", "count"]
    assert info["relational_qtypes"] == [3, 4, 5]
    # 40 train images x 4 questions, 4 images carved out for validation, 10 test images
    assert info["sizes"] == {"train": 144, "val": 16, "test": 40}


def test_sort_of_clevr_validation_images_are_not_training_images():
    dm = datamodule("sort-of-clevr")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert set(train.images).isdisjoint(val.images)
    assert datamodule("sort-of-clevr").datasets["val"].images.tolist() == val.images.tolist()  # deterministic


def test_sort_of_clevr_representation_options_drop_keys():
    b = first_batch(datamodule("sort-of-clevr", representation="regions", question="bits"))
    assert "image" not in b and "question_tokens" not in b and "regions" in b and "question_bits" in b


def test_interactions_batches():
    dm = datamodule("interactions", dims=[4, 3, 2], order=2)
    b = first_batch(dm)
    assert set(b) == {"x0", "x1", "x2", "label"}
    assert b["x2"].shape == (16, 2) and b["label"].dtype == torch.int64
    assert dm.info["inputs"]["x1"]["in_dim"] == 3


def test_mosi_batches(tmp_path):
    dm = datamodule("mosi", path=str(h.write_mosi(tmp_path / "mosi.pkl")), trim="aligned")
    b = first_batch(dm)
    assert b["text"].shape[:2] == b["text_mask"].shape and b["text"].shape[2] == 5
    assert b["label"].shape == (16,) and b["label"].dtype == torch.float32
    assert dm.info["task"] == {"kind": "regression", "num_outputs": 1}
    binary = datamodule("mosi", path=str(tmp_path / "mosi.pkl"), labels="binary")
    assert first_batch(binary)["label"].dtype == torch.int64
    assert binary.info["task"] == {"kind": "classification", "num_outputs": 2}


def test_mmimdb_batches(tmp_path):
    path, splits = h.write_mmimdb(tmp_path / "mm.hdf5")
    dm = datamodule("mmimdb", path=str(path), splits=splits)
    b = first_batch(dm)
    assert b["text"].shape == (16, 8) and b["image"].shape == (16, 6) and b["label"].shape == (16, 5)
    assert dm.info["task"] == {"kind": "multilabel", "num_outputs": 5}
    assert dm.info["sizes"] == {"train": 64, "val": 16, "test": 16}


def test_vqa2_batches(tmp_path):
    root = h.write_vqa(tmp_path / "vqa")
    dm = datamodule("vqa2", path=str(root), feature_dim=8, max_boxes=6)
    b = first_batch(dm, "test")
    assert b["regions"].shape == (16, 6, 8) and b["region_mask"].shape == (16, 6)
    assert b["boxes"].shape == (16, 6, 4) and float(b["boxes"].max()) <= 1.0
    assert b["target"].shape == (16, len(dm.info["answer_vocab"]))
    assert torch.allclose(b["target"].max(1).values, torch.ones(16))  # 7 of 10 humans agree: score 1
    assert dm.info["soft_targets"] and dm.info["task"]["kind"] == "multilabel"
    assert dm.info["sizes"]["test"] == 36


def test_image_folder_batches(tmp_path):
    dm = datamodule("image-folder", path=str(h.write_image_folder(tmp_path / "img")))
    b = first_batch(dm)
    assert b["image"].shape == (b["answer"].shape[0], 3, 16, 16)
    assert dm.info["answer_vocab"] == ["blue", "red"]
    assert sum(dm.info["sizes"].values()) == 24


def test_question_mask_trims_and_masks():
    tokens = torch.tensor([[5, 6, 0, 0, 0], [7, 0, 0, 0, 0]])
    out, mask = question_mask(tokens)
    assert out.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[True, True], [True, False]]


def test_collate_pads_sequences_of_different_lengths():
    items = [{"text": torch.ones(3, 2), "label": torch.tensor(1.0)}, {"text": torch.ones(1, 2), "label": torch.tensor(0.0)}]
    b = collate_batch(items)
    assert b["text"].shape == (2, 3, 2) and b["text_mask"].tolist() == [[True] * 3, [True, False, False]]


# ----------------------------------------------------------------------------- samplers


def _with_world(rank, world):
    return mock.patch("mmfuse.train.data._rank_world", return_value=(rank, world))


def test_epoch_sampler_is_deterministic_per_epoch_and_covers_the_data():
    s = EpochBatchSampler(50, 8, seed=3)
    first = list(s)
    assert len(first) == len(s) == 6 and all(len(b) == 8 for b in first)
    assert len({i for b in first for i in b}) == 48
    assert list(EpochBatchSampler(50, 8, seed=3)) == first
    s.set_epoch(1)
    assert list(s) != first
    keep = EpochBatchSampler(50, 8, seed=3, drop_last=False)
    assert sorted(i for b in keep for i in b) == list(range(50))


def test_grouped_sampler_keeps_groups_whole():
    s = EpochBatchSampler(60, 10, seed=2, group=5)
    batches = list(s)
    assert len(batches) == 6 and sorted(i for b in batches for i in b) == list(range(60))
    for b in batches:  # every batch is two whole groups of 5 consecutive indices
        groups = {i // 5 for i in b}
        assert len(groups) == 2 and sorted(b) == sorted(i for g in groups for i in range(5 * g, 5 * g + 5))
    assert [b[0] // 5 for b in batches] != sorted(b[0] // 5 for b in batches)  # the groups are shuffled
    s.set_epoch(1)
    assert list(s) != batches
    with pytest.raises(ValueError, match="group size >= 1 dividing n = 60, got 7"):
        EpochBatchSampler(60, 10, group=7)


def test_sort_of_clevr_pixels_batches_are_whole_images_with_their_ids():
    dm = datamodule("sort-of-clevr", representation="pixels", batch_size=12)  # 4 questions an image
    b = first_batch(dm)
    q = dm.datasets["train"].q
    ids = b["image_id"]
    assert len(ids) % q == 0 and all((ids == i).sum() == q for i in ids.unique())
    for i in ids.unique():  # the rows of one id carry one image
        rows = b["image"][ids == i]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    plain = first_batch(datamodule("sort-of-clevr", representation="pixels", batch_size=12, group_by_image=False))
    assert len(plain["image_id"].unique()) > len(ids.unique())
    with pytest.raises(ConfigError, match=r"^data\.group_by_image: expected true, false or 'auto', got 'yes'"):
        datamodule("sort-of-clevr", group_by_image="yes")


def test_ranks_split_each_global_batch():
    one = list(EpochBatchSampler(50, 8, seed=1))
    parts = []
    for rank in (0, 1):
        with _with_world(rank, 2):
            parts.append(list(EpochBatchSampler(50, 4, seed=1)))
    assert len(parts[0]) == len(parts[1]) == len(one)
    for b, p0, p1 in zip(one, *parts):
        assert p0 + p1 == b


def test_sharded_eval_sampler_partitions_the_data():
    seen = []
    for rank in range(3):
        with _with_world(rank, 3):
            seen += [i for b in ShardedBatchSampler(10, 2) for i in b]
    assert sorted(seen) == list(range(10))


def test_resumable_loader_skips_the_batches_already_served():
    data = [{"x": torch.tensor(i)} for i in range(40)]
    loader = ResumableLoader(data, EpochBatchSampler(40, 4, seed=0))
    loader.batch_sampler.set_epoch(2)
    full = [b["x"].tolist() for b in loader]
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 3}
    fresh = ResumableLoader(data, EpochBatchSampler(40, 4, seed=0))
    fresh.batch_sampler.set_epoch(2)
    fresh.load_state_dict(state)
    assert len(fresh) == len(full)
    assert [b["x"].tolist() for b in fresh] == full[3:]
    assert [b["x"].tolist() for b in fresh] == full  # only the resumed epoch skips


def test_position_and_epoch_are_read_at_the_first_batch():
    """Lightning creates the iterator before it sets the epoch and restores the position."""
    data = list(range(40))
    loader = ResumableLoader(data, EpochBatchSampler(40, 4, seed=0))
    reference = ResumableLoader(data, EpochBatchSampler(40, 4, seed=0))
    reference.batch_sampler.set_epoch(1)
    expected = [b.tolist() for b in reference][2:]
    it = iter(loader)
    loader.load_state_dict({"epoch": 1, "batches": 2})
    loader.batch_sampler.set_epoch(1)
    assert [b.tolist() for b in it] == expected


def test_resume_state_of_another_epoch_is_ignored():
    data = list(range(12))
    loader = ResumableLoader(data, EpochBatchSampler(12, 4, seed=0))
    loader.load_state_dict({"epoch": 0, "batches": 3})
    loader.batch_sampler.set_epoch(1)
    assert len(list(loader)) == 3


def test_lightning_sets_the_sampler_epoch():
    from lightning.fabric.utilities.data import _set_sampler_epoch

    loader = ResumableLoader(list(range(8)), EpochBatchSampler(8, 2, seed=0))
    _set_sampler_epoch(loader, 5)
    assert loader.batch_sampler.epoch == 5


def test_batches_are_identical_to_per_item_collation():
    dm = datamodule("sort-of-clevr")
    ds = dm.datasets["test"]
    idx = [3, 0, 7]
    batched = collate_batch(ds.__getitems__(idx))
    single = collate_batch([ds[i] for i in idx])
    assert batched.keys() == single.keys()
    for k in batched:
        assert torch.equal(batched[k], single[k]), k
    assert np.array_equal(batched["answer"].numpy(), single["answer"].numpy())

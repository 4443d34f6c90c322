"""Functions behind `mmfuse data make|info`."""
from __future__ import annotations

import re

import pytest

from mmfuse.data import commands, describe, load_interactions, load_sort_of_clevr


def _table_rows(text: str, title: str) -> dict[str, list[str]]:
    """Rows of the Markdown table under ``### title``: first cell -> other cells."""
    block = text.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    header, *body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert set(body[0][0]) <= {"-", ":"}  # separator row
    return {"__header__": header[1:], **{row[0]: row[1:] for row in body[1:]}}


def test_make_sort_of_clevr_and_info(tmp_path):
    root = commands.make_dataset("sort-of-clevr", out=tmp_path / "soc", seed="3", n_train="12", n_test=4, n_rel=2)
    assert root == tmp_path / "soc"
    data = load_sort_of_clevr(root)
    assert data.meta["config"]["seed"] == 3 and data.splits["train"]["qtype"].shape == (12, 12)
    summary = describe(root)
    text = commands.info(root)
    assert text.startswith("## sort_of_clevr\n") and f"- path: {root}" in text and "n_train=12" in text
    counts = _table_rows(text, "Counts per split")
    assert counts["__header__"] == ["images", "questions", "non_relational", "relational"]
    assert counts["train"] == ["12", "144", "120", "24"] and counts["test"] == ["4", "48", "40", "8"]
    per_type = _table_rows(text, "Questions per type")
    assert per_type["__header__"] == ["train", "test"]
    assert list(per_type)[1:] == ["shape", "left", "top", "closest", "furthest", "count"]
    for qtype, cells in list(per_type.items())[1:]:
        assert cells == [str(summary["splits"]["train"]["by_type"][qtype]), str(summary["splits"]["test"]["by_type"][qtype])]
    per_answer = _table_rows(text, "Questions per answer")
    assert list(per_answer)[1:5] == ["yes", "no", "square", "circle"]
    assert sum(int(c[0]) for c in list(per_answer.values())[1:]) == 144


def test_make_interactions_converts_strings(tmp_path):
    root = commands.make_dataset("interactions", out=tmp_path / "it", **{"dims": "4,5,6", "order": "3", "n-train": "30", "n_test": 10, "label_noise": "0.1"})
    data = load_interactions(root)
    assert data.meta["config"]["dims"] == [4, 5, 6] and data.meta["config"]["label_noise"] == 0.1
    assert data.splits["train"]["x2"].shape == (30, 6)
    text = commands.info(root)
    counts = _table_rows(text, "Counts per split")
    assert counts["__header__"] == ["samples", "noisy_labels"] and counts["train"][0] == "30"
    per_class = _table_rows(text, "Samples per class")
    assert list(per_class)[1:] == ["0", "1"]
    assert sum(int(v[0]) for v in list(per_class.values())[1:]) == 30


def test_make_dataset_uses_the_cache_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path / "cache"))
    first = commands.make_dataset("interactions", n_train=20, n_test=5)
    assert first.is_relative_to(tmp_path / "cache" / "interactions")
    stamp = (first / "meta.json").stat().st_mtime_ns
    again = commands.make_dataset("INTERACTIONS", n_train="20", n_test="5")  # same config, any spelling
    assert again == first and (first / "meta.json").stat().st_mtime_ns == stamp
    redone = commands.make_dataset("interactions", n_train=20, n_test=5, overwrite="true")
    assert redone == first and (first / "meta.json").stat().st_mtime_ns >= stamp
    assert commands.make_dataset("sort_of_clevr", n_train=2, n_test=1, seed=1).is_relative_to(tmp_path / "cache" / "sort_of_clevr")


def test_errors():
    with pytest.raises(ValueError, match=re.escape("unknown dataset 'clevr', expected one of ['interactions', 'sort-of-clevr']")):
        commands.make_dataset("clevr")
    with pytest.raises(ValueError, match=r"sort-of-clevr: unknown option 'n_images', expected one of \[.*'n_train'"):
        commands.make_dataset("sort-of-clevr", n_images=3)
    with pytest.raises(ValueError, match=r"option 'n_train': cannot read 'many' as int"):
        commands.make_dataset("interactions", n_train="many")
    with pytest.raises(ValueError, match=r"option 'overwrite': expected true/false, got 'maybe'"):
        commands.make_dataset("interactions", overwrite="maybe")
    with pytest.raises(ValueError, match=r"order must be between 1 and the number of modalities 2"):
        commands.make_dataset("interactions", order=3, n_train=1, n_test=1)


def test_info_of_a_folder_without_a_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"meta\.json: file does not exist"):
        commands.info(tmp_path)


def test_dataset_options_lists_defaults():
    options = commands.dataset_options("sort-of-clevr")
    assert options["n_train"] == 9800 and options["overwrite"] is False and "seed" not in options


def test_render_summary_generic():
    text = commands.render_summary({"name": "toy", "splits": {"test": {"n": 1, "by_colour": {"b": 2}}, "train": {"n": 3, "by_colour": {"a": 1}}}})
    rows = _table_rows(text, "By colour")
    assert rows["__header__"] == ["train", "test"] and rows["a"] == ["1", "0"] and rows["b"] == ["0", "2"]
    assert commands.render_summary({"name": "empty"}) == "## empty\n\n"

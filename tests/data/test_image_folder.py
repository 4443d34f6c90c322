"""Image-folder VQA: JSON and CSV tables, resizing, answer vocabularies and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from mmfuse.data.image_folder import ImageFolderVQA, read_vqa_table  # noqa: E402
from mmfuse.data.vqa import AnswerVocab  # noqa: E402

ROWS = [
    {"image": "red.png", "question": "What color is it?", "answer": "Red"},
    {"image": "sub/blue.jpg", "question": "How many squares are there?", "answer": "two"},
    {"image": "red.png", "question": "Is it a dog?", "answer": "no."},
    {"image": "blue-gray.png", "question": "What color is it?", "answer": "red"},
]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "red.png")
    Image.new("RGB", (10, 50), (0, 0, 255)).save(root / "sub" / "blue.jpg", quality=100)
    Image.new("L", (7, 7), 128).save(root / "blue-gray.png")  # grey scale: converted to RGB
    return root


def _json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _csv(path, rows, header="image,question,answer"):
    lines = [header] + [",".join(f'"{r[k]}"' for k in header.split(",")) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["json", "csv", "json_rows"])
def test_roundtrip(folder, tmp_path, fmt):
    if fmt == "json":
        table = _json(tmp_path / "qa.json", ROWS)
    elif fmt == "json_rows":
        table = _json(tmp_path / "qa.json", {"rows": ROWS})
    else:
        table = _csv(tmp_path / "qa.csv", ROWS, header="question,answer,image")
    data = ImageFolderVQA(folder, table, image_size=(8, 12))
    assert len(data) == 4
    assert data.answer_vocab.answers == ("red", "2", "no")  # normalised, most frequent first
    item = data[0]
    assert item["image"].shape == (3, 8, 12) and item["image"].dtype == torch.float32
    assert torch.allclose(item["image"][0], torch.ones(8, 12)) and not item["image"][1:].any()
    assert item["answer"].item() == 0 and item["index"].item() == 0
    words = data.question_vocab.words
    assert [words[i] for i in item["question_tokens"][: item["question_len"]]] == ["what", "color", "is", "it"]
    blue = data[1]["image"]
    assert blue.shape == (3, 8, 12) and blue[2].min() > 0.9 and blue[0].max() < 0.1
    assert data[1]["answer"].item() == 1
    grey = data[3]["image"]
    assert torch.allclose(grey, torch.full((3, 8, 12), 128 / 255))
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 3, 8, 12) and batch["answer"].tolist() == [0, 1, 2, 0]


def test_given_vocab_marks_unknown_answers(folder, tmp_path):
    data = ImageFolderVQA(folder, _json(tmp_path / "qa.json", ROWS), image_size=4, answer_vocab=AnswerVocab(("no", "red")))
    assert [data[i]["answer"].item() for i in range(4)] == [1, -1, 0, 1]
    assert data[0]["image"].shape == (3, 4, 4)
    counted = ImageFolderVQA(folder, _json(tmp_path / "qa.json", ROWS), image_size=4, min_answer_count=2)
    assert counted.answer_vocab.answers == ("red",)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([ROWS[0], {"image": "missing.png", "question": "q?", "answer": "a"}], r"qa\.json: row 2: image 'missing\.png' not found"),
        ([ROWS[0], ROWS[1], {"image": "red.png", "answer": "a"}], r"qa\.json: row 3: field 'question' must be a non-empty string, got nothing"),
        ([{"image": "red.png", "question": "  ", "answer": "a"}], r"qa\.json: row 1: field 'question' must be a non-empty string, got '  '"),
        ([{"image": "red.png", "question": "q", "answer": 3}], r"qa\.json: row 1: field 'answer' must be a non-empty string, got 3"),
        ([{"image": "red.png", "question": "q", "answer": "the"}], r"qa\.json: row 1: answer 'the' is empty after normalisation"),
        ([ROWS[0], ["red.png", "q", "a"]], r"qa\.json: row 2: expected an object"),
        ([], r"qa\.json: no rows"),
    ],
)
def test_bad_json_rows_name_file_and_row(folder, tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        ImageFolderVQA(folder, _json(tmp_path / "qa.json", rows))


def test_bad_csv_tables(folder, tmp_path):
    table = _csv(tmp_path / "qa.csv", [ROWS[0], {**ROWS[1], "image": "sub/none.jpg"}])
    with pytest.raises(ValueError, match=r"qa\.csv: line 3: image 'sub/none\.jpg' not found"):
        ImageFolderVQA(folder, table)
    table.write_text("picture,question,answer\nred.png,q,a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa\.csv: header lacks columns \['image'\]"):
        ImageFolderVQA(folder, table)
    table.write_text("image,question,answer\nred.png,q,a,extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa\.csv: line 2: 4 cells, header has 3"):
        ImageFolderVQA(folder, table)
    table.write_text("image,question,answer\nred.png,q\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa\.csv: line 2: field 'answer' must be a non-empty string, got nothing"):
        ImageFolderVQA(folder, table)
    (tmp_path / "qa.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa\.txt: expected a \.json or \.csv table"):
        read_vqa_table(tmp_path / "qa.txt", folder)
    with pytest.raises(ValueError, match=r"qa\.json: expected a list of rows, or an object with a 'rows' or 'data' list"):
        ImageFolderVQA(folder, _json(tmp_path / "qa.json", {"items": ROWS}))
    with pytest.raises(ValueError, match=r"nowhere: image folder does not exist"):
        ImageFolderVQA(tmp_path / "nowhere", table)


def test_corrupt_image_names_image_and_row(folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = ImageFolderVQA(folder, _json(tmp_path / "qa.json", [ROWS[0], {**ROWS[0], "image": "broken.png"}]))
    data[0]
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image .*; row 2 of .*qa\.json"):
        data[1]


def test_bad_options(folder, tmp_path):
    table = _json(tmp_path / "qa.json", ROWS)
    for size in (0, (3,), (4, -1), 2.5, (True, 3)):
        with pytest.raises(ValueError, match="image_size must be an int or"):
            ImageFolderVQA(folder, table, image_size=size)
    with pytest.raises(ValueError, match="max_question_len must be an int >= 1"):
        ImageFolderVQA(folder, table, max_question_len=0)
    with pytest.raises(IndexError, match="out of range for 4 rows"):
        ImageFolderVQA(folder, table)[4]
    assert np.isclose(ImageFolderVQA(folder, table, image_size=2)[-1]["image"].mean().item(), 128 / 255)

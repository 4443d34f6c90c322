"""VQA on anyone's images: a folder of pictures plus a JSON or CSV table of questions.

Table formats (``image`` is a path relative to the image folder, or absolute)::

    rows.json   [{"image": "cat.jpg", "question": "What animal is this?", "answer": "cat"}, ...]
                (or {"rows": [...]} / {"data": [...]}; other keys in a row are ignored)
    rows.csv    image,question,answer          <- header row, any column order, extra columns ignored
                cat.jpg,What animal is this?,cat

Answers are normalised with the official VQA rules (:func:`mmfuse.data.vqa.normalize_answer`)
and mapped to an answer vocabulary (built from the table by frequency unless one is given);
questions are tokenised as in :mod:`mmfuse.data.vqa`. Images are read with Pillow when an item
is requested, converted to RGB and resized (bilinear) to ``image_size``.

Every problem found while reading the table (unreadable file, missing column, empty field,
image file absent) raises a ``ValueError`` naming the table and the row (``row 3`` = the third
JSON object; ``line 4`` = the CSV line); an image that exists but cannot be decoded raises one
naming the image and its row when the item is read.

Example::

    data = ImageFolderVQA("photos/", "photos/qa.csv", image_size=224)
    item = data[0]     # {"image": Tensor[3, 224, 224], "question_tokens": Tensor[14], ..., "answer": Tensor[]}
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._io import load_json
from .vqa import AnswerVocab, QuestionVocab, _ranked, build_question_vocab, normalize_answer

__all__ = ["ImageFolderVQA", "VQARow", "read_vqa_table"]

_FIELDS = ("image", "question", "answer")


@dataclass(frozen=True)
class VQARow:
    """One row of the table: image path (resolved), question, normalised answer, and where it came from."""

    image: Path
    question: str
    answer: str
    where: str


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - Pillow is in the test extra
        raise ImportError("reading image folders needs Pillow: pip install 'mmfuse[data]'") from err
    return Image


def _raw_rows(path: Path) -> list[tuple[str, Any]]:
    """(where, row) pairs of a JSON or CSV table."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = load_json(path)
        if isinstance(data, dict):
            key = next((k for k in ("rows", "data") if isinstance(data.get(k), list)), None)
            if key is None:
                raise ValueError(f"{path}: expected a list of rows, or an object with a 'rows' or 'data' list; found keys {sorted(data)}")
            data = data[key]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of rows, got {type(data).__name__}")
        return [(f"row {i + 1}", row) for i, row in enumerate(data)]
    if suffix == ".csv":
        if not path.is_file():
            raise ValueError(f"{path}: file does not exist")
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                missing = [c for c in _FIELDS if c not in header]
                if missing:
                    raise ValueError(f"{path}: header lacks columns {missing}; expected {list(_FIELDS)}, got {header}")
                rows = []
                for row in reader:
                    if None in row:  # more cells than header columns
                        raise ValueError(f"{path}: line {reader.line_num}: {len(header) + len(row[None])} cells, header has {len(header)}")
                    rows.append((f"line {reader.line_num}", row))
                return rows
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{path}: not a readable CSV file ({type(err).__name__}: {err})") from err
    raise ValueError(f"{path}: expected a .json or .csv table of (image, question, answer) rows")


def read_vqa_table(path: str | os.PathLike[str], image_root: str | os.PathLike[str]) -> list[VQARow]:
    """Parse and check a JSON / CSV table (module docstring); images must exist under ``image_root``.

    Raises:
        ValueError: ``"<table>: row N: ..."`` for the first bad row (not an object, missing or
            empty field, non-string value, image not found), or for an unreadable table.
    """
    path, root = Path(path), Path(image_root)
    if not root.is_dir():
        raise ValueError(f"{root}: image folder does not exist")
    rows: list[VQARow] = []
    for where, raw in _raw_rows(path):
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: {where}: expected an object with {list(_FIELDS)}, got {type(raw).__name__}")
        for name in _FIELDS:
            value = raw.get(name)
            if not isinstance(value, str) or not value.strip():
                got = "nothing" if value is None else repr(value)
                raise ValueError(f"{path}: {where}: field {name!r} must be a non-empty string, got {got}")
        image = root / raw["image"].strip()
        if not image.is_file():
            raise ValueError(f"{path}: {where}: image {raw['image']!r} not found (looked for {image})")
        answer = normalize_answer(raw["answer"])
        if not answer:
            raise ValueError(f"{path}: {where}: answer {raw['answer']!r} is empty after normalisation")
        rows.append(VQARow(image=image, question=raw["question"].strip(), answer=answer, where=where))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    hw = (image_size, image_size) if not isinstance(image_size, Sequence) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"ImageFolderVQA: image_size must be an int or (height, width) of positive ints, got {image_size!r}")
    return hw  # type: ignore[return-value]


class ImageFolderVQA(Dataset):
    """VQA over a folder of images and a question table (module docstring).

    Args:
        image_root: the image folder.
        table: the ``.json`` / ``.csv`` table.
        image_size: output (height, width), or one int for a square.
        answer_vocab: answer classes; ``None`` builds one from this table (answers seen at
            least ``min_answer_count`` times, most frequent first). Answers not in it get -1.
        question_vocab: question words; ``None`` builds one from this table.
        max_question_len: L, tokens per question (truncated / 0-padded).

    Item::

        image            Tensor[3, H, W] float32 in [0, 1]
        question_tokens  Tensor[L] int64;  question_len Tensor[] int64
        answer           Tensor[] int64 (class id, -1 = not in the vocabulary)
        index            Tensor[] int64 (row index)
    """

    def __init__(
        self,
        image_root: str | os.PathLike[str],
        table: str | os.PathLike[str],
        *,
        image_size: int | Sequence[int] = 224,
        answer_vocab: AnswerVocab | None = None,
        question_vocab: QuestionVocab | None = None,
        max_question_len: int = 14,
        min_answer_count: int = 1,
    ) -> None:
        self.image_size = _size(image_size)
        if isinstance(max_question_len, bool) or not isinstance(max_question_len, int) or max_question_len < 1:
            raise ValueError(f"ImageFolderVQA: max_question_len must be an int >= 1, got {max_question_len!r}")
        self.table = Path(table)
        self.rows = read_vqa_table(table, image_root)
        if answer_vocab is None:
            answer_vocab = AnswerVocab(_ranked(Counter(r.answer for r in self.rows), None, min_answer_count))
        self.answer_vocab = answer_vocab
        self.question_vocab = question_vocab or build_question_vocab(r.question for r in self.rows)
        self.max_question_len = max_question_len
        self._answers = np.array([answer_vocab.index(r.answer) for r in self.rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def load_image(self, index: int) -> torch.Tensor:
        """The resized RGB image of row ``index``: Tensor[3, H, W] float32 in [0, 1]."""
        row = self.rows[index]
        image_mod = _pil()
        h, w = self.image_size
        try:
            with image_mod.open(row.image) as img:
                pixels = np.asarray(img.convert("RGB").resize((w, h), image_mod.BILINEAR), dtype=np.uint8)  # (H, W, 3)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for truncated / foreign files
            raise ValueError(
                f"{row.image}: not a readable image ({type(err).__name__}: {err}); {row.where} of {self.table}"
            ) from err
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"ImageFolderVQA: index {index} out of range for {n} rows")
        index %= n
        tokens, length = self.question_vocab.encode(self.rows[index].question, self.max_question_len)
        return {
            "image": self.load_image(index),
            "question_tokens": torch.from_numpy(tokens),
            "question_len": torch.tensor(length, dtype=torch.int64),
            "answer": torch.tensor(self._answers[index]),
            "index": torch.tensor(index, dtype=torch.int64),
        }

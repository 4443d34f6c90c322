"""Datasets: generated tasks (Sort-of-CLEVR, synthetic N-modal interactions), cached on disk,
and readers of real data in its published formats (VQA v2 + region features, CMU-MOSI / MOSEI,
MM-IMDb, image-folder VQA).

Generated data is written under :func:`cache_dir` (``$MMFUSE_CACHE``, else the XDG cache),
keyed by generator version, seed and config; nothing is ever downloaded. Real data is read from
paths the user gives; ``.h5`` and image readers need the ``data`` extra (h5py, Pillow), imported
only when used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._io import cache_dir, load_json
from .interactions import (
    InteractionDataset,
    Interactions,
    generate_interactions,
    load_interactions,
    make_interactions,
)
from .interactions import describe as describe_interactions
from .image_folder import ImageFolderVQA
from .mmimdb import MMIMDb, load_mmimdb
from .mosi import AffectData, AffectDataset, collate_affect, load_affect, load_mosei, load_mosi
from .safe_pickle import UnsafePickleError, safe_load
from .sort_of_clevr import (
    SortOfClevr,
    SortOfClevrQuestions,
    accuracy_by_type,
    generate_sort_of_clevr,
    load_sort_of_clevr,
    make_sort_of_clevr,
)
from .sort_of_clevr import describe as describe_sort_of_clevr
from .vqa import (
    AnswerVocab,
    QuestionVocab,
    VQADataset,
    build_answer_vocab,
    build_question_vocab,
    evaluate_vqa,
    load_vqa_annotations,
    load_vqa_questions,
    normalize_answer,
    vqa_accuracy,
)
from .vqa_features import H5Features, NpzFeatureDir, RegionFeatures, TsvFeatures, open_features

_DESCRIBERS = {"sort_of_clevr": describe_sort_of_clevr, "interactions": describe_interactions}


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary (config, counts per split) of any generated dataset folder, read from its ``meta.json``."""
    meta = load_json(Path(path) / "meta.json")
    name = meta.get("name") if isinstance(meta, dict) else None
    if name not in _DESCRIBERS:
        raise ValueError(
            f"{Path(path) / 'meta.json'}: unknown dataset {name!r}, expected one of {sorted(_DESCRIBERS)}"
        )
    return _DESCRIBERS[name](path)


__all__ = [
    "AffectData",
    "AffectDataset",
    "AnswerVocab",
    "H5Features",
    "ImageFolderVQA",
    "InteractionDataset",
    "Interactions",
    "MMIMDb",
    "NpzFeatureDir",
    "QuestionVocab",
    "RegionFeatures",
    "SortOfClevr",
    "SortOfClevrQuestions",
    "TsvFeatures",
    "UnsafePickleError",
    "VQADataset",
    "accuracy_by_type",
    "build_answer_vocab",
    "build_question_vocab",
    "cache_dir",
    "collate_affect",
    "describe",
    "describe_interactions",
    "describe_sort_of_clevr",
    "evaluate_vqa",
    "generate_interactions",
    "generate_sort_of_clevr",
    "load_affect",
    "load_interactions",
    "load_mmimdb",
    "load_mosei",
    "load_mosi",
    "load_sort_of_clevr",
    "load_vqa_annotations",
    "load_vqa_questions",
    "make_interactions",
    "make_sort_of_clevr",
    "normalize_answer",
    "open_features",
    "safe_load",
    "vqa_accuracy",
]

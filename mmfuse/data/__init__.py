"""Datasets: generated tasks (Sort-of-CLEVR, synthetic N-modal interactions), cached on disk.

Generated data is written under :func:`cache_dir` (``$MMFUSE_CACHE``, else the XDG cache),
keyed by generator version, seed and config; nothing is ever downloaded.
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
from .sort_of_clevr import (
    SortOfClevr,
    SortOfClevrQuestions,
    accuracy_by_type,
    generate_sort_of_clevr,
    load_sort_of_clevr,
    make_sort_of_clevr,
)
from .sort_of_clevr import describe as describe_sort_of_clevr

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
    "InteractionDataset",
    "Interactions",
    "SortOfClevr",
    "SortOfClevrQuestions",
    "accuracy_by_type",
    "cache_dir",
    "describe",
    "describe_interactions",
    "describe_sort_of_clevr",
    "generate_interactions",
    "generate_sort_of_clevr",
    "load_interactions",
    "load_sort_of_clevr",
    "make_interactions",
    "make_sort_of_clevr",
]

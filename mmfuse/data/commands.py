"""Functions behind ``mmfuse data make|info``: build a generated dataset, summarise one.

    make_dataset("sort-of-clevr", out="data/soc", seed=0, n_train=1000)   -> Path of the folder
    make_dataset("interactions", dims="16,16,16", order="3")              -> strings are converted
    print(info("data/soc"))                                               -> Markdown tables

Both are plain functions so the command line only parses arguments and prints.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._io import load_json
from .interactions import make_interactions
from .sort_of_clevr import make_sort_of_clevr

__all__ = ["DATASETS", "dataset_options", "info", "make_dataset", "render_summary"]

DATASETS: dict[str, Callable[..., Path]] = {
    "sort-of-clevr": make_sort_of_clevr,
    "interactions": make_interactions,
}
"""Generated datasets ``make_dataset`` knows, by command-line name."""

_SECTION_TITLES = {"by_type": "Questions per type", "by_answer": "Questions per answer", "by_class": "Samples per class"}
_FIRST_COLUMN = {"by_type": "question type", "by_answer": "answer", "by_class": "class"}


def _maker(name: str) -> tuple[str, Callable[..., Path]]:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}, expected one of {sorted(DATASETS)}")
    return key, DATASETS[key]


def dataset_options(name: str) -> dict[str, Any]:
    """The options of ``name`` and their defaults: ``{"n_train": 9800, ...}`` (for ``--help``)."""
    _, maker = _maker(name)
    return {
        p.name: p.default
        for p in inspect.signature(maker).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _parse_bool(option: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option {option!r}: expected true/false, got {text!r}")


def _coerce(option: str, value: Any, default: Any) -> Any:
    """Convert a command-line string to the type of the option's default; other values pass."""
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            return _parse_bool(option, value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (tuple, list)):
            parts = [p for p in value.replace("x", ",").replace(" ", ",").split(",") if p]
            kind = type(default[0]) if default else int
            return tuple(kind(p) for p in parts)
    except ValueError as err:
        raise ValueError(f"option {option!r}: cannot read {value!r} as {type(default).__name__} ({err})") from None
    return value


def make_dataset(
    name: str,
    out: str | os.PathLike[str] | None = None,
    seed: int | str = 0,
    **options: Any,
) -> Path:
    """Generate dataset ``name`` (see :data:`DATASETS`) and return its folder.

    Args:
        name: ``"sort-of-clevr"`` or ``"interactions"`` (``_`` and ``-`` both accepted).
        out: target folder; ``None`` = the cache folder keyed by version, seed and options.
            An existing complete dataset with the same options is reused, not rewritten.
        seed: int >= 0 (a numeric string is accepted).
        **options: keyword options of :func:`~mmfuse.data.make_sort_of_clevr` /
            :func:`~mmfuse.data.make_interactions` (``n_train``, ``n_test``, ``dims``, ...,
            ``overwrite``); dashes in names become underscores, and string values are
            converted to the type of the option's default (``"16,16"`` -> ``(16, 16)``,
            ``"true"`` -> ``True``).

    Raises:
        ValueError: unknown dataset or option, or a value the generator rejects.
    """
    key, maker = _maker(name)
    allowed = dataset_options(key)
    kwargs: dict[str, Any] = {}
    for raw_name, value in options.items():
        option = raw_name.replace("-", "_")
        if option not in allowed:
            raise ValueError(f"{key}: unknown option {raw_name!r}, expected one of {sorted(allowed)}")
        kwargs[option] = _coerce(option, value, allowed[option])
    seed_value = _coerce("seed", seed, 0)
    return maker(out, seed_value, **kwargs)


# ------------------------------------------------------------------ info


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; numeric columns right-aligned."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [i > 0 and all(isinstance(r[i], (int, float)) for r in rows) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(list(headers)), sep, *(line(r) for r in cells)])


_SPLIT_ORDER = ("train", "valid", "val", "dev", "test")
_SCALAR_ORDER = ("images", "samples", "questions", "non_relational", "relational", "noisy_labels")
_NESTED_ORDER = ("by_type", "by_class", "by_answer")


def _ordered(keys: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """``keys`` with those in ``preferred`` first (in that order), then the rest as given."""
    rank = {k: i for i, k in enumerate(preferred)}
    return sorted(keys, key=lambda k: (rank.get(k, len(rank)), list(keys).index(k)))


def _natural(key: str) -> tuple[int, Any]:
    return (0, int(key)) if key.lstrip("-").isdigit() else (1, key)


def render_summary(summary: Mapping[str, Any], category_order: Mapping[str, Sequence[str]] | None = None) -> str:
    """Markdown for a :func:`mmfuse.data.describe` dict (see :func:`info`).

    Args:
        summary: ``{"name", "path", "generator_version", "seed", "config", "splits": {split:
            {count: int, ..., breakdown: {category: int}}}}``.
        category_order: breakdown key -> preferred row order (e.g. ``{"by_type": qtype names}``);
            other rows follow, numbers in numeric order.
    """
    category_order = category_order or {}
    lines = [f"## {summary.get('name', 'dataset')}", ""]
    for label, key in (("path", "path"), ("generator version", "generator_version"), ("seed", "seed")):
        if key in summary:
            lines.append(f"- {label}: {summary[key]}")
    config = summary.get("config") or {}
    if config:
        lines.append("- config: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    splits: Mapping[str, Mapping[str, Any]] = summary.get("splits") or {}
    if not splits:
        return "\n".join(lines) + "\n"
    names = _ordered(list(splits), _SPLIT_ORDER)
    fields: list[str] = []
    for s in names:
        fields += [k for k in splits[s] if k not in fields]
    nested = {k for s in names for k, v in splits[s].items() if isinstance(v, Mapping)}
    scalar_keys = _ordered([k for k in fields if k not in nested], _SCALAR_ORDER)
    nested_keys = _ordered([k for k in fields if k in nested], _NESTED_ORDER)
    rows = [[s, *(splits[s].get(k, "") for k in scalar_keys)] for s in names]
    lines += ["", "### Counts per split", "", _table(["split", *scalar_keys], rows)]
    for key in nested_keys:
        found: list[str] = []
        for s in names:
            found += [str(c) for c in splits[s].get(key, {}) if str(c) not in found]
        preferred = [str(c) for c in category_order.get(key, ())]
        categories = [c for c in preferred if c in found] + sorted((c for c in found if c not in preferred), key=_natural)
        rows = [[c, *(splits[s].get(key, {}).get(c, 0) for s in names)] for c in categories]
        title = _SECTION_TITLES.get(key, key.replace("_", " ").capitalize())
        lines += ["", f"### {title}", "", _table([_FIRST_COLUMN.get(key, key), *names], rows)]
    return "\n".join(lines) + "\n"


def info(path: str | os.PathLike[str]) -> str:
    """Summary of a generated dataset folder as Markdown: config, counts per split, and one
    table per breakdown (questions per type and per answer for Sort-of-CLEVR, samples per
    class for the interaction task), one column per split.

    Raises:
        ValueError: the folder has no readable ``meta.json`` of a known dataset.
    """
    from . import describe  # the package's dispatcher over every generated dataset

    summary = describe(path)
    meta = load_json(Path(path) / "meta.json")
    order = {"by_type": meta.get("qtype_names", ()), "by_answer": meta.get("answer_vocab", ())}
    return render_summary(summary, order)

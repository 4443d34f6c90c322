"""Config checking for task models: :class:`ConfigError` and a small field schema.

Every problem in a model config raises :class:`ConfigError` (a ``ValueError``) whose message
starts with the dotted key it is about, so that a user can find the line in the YAML::

    model.inputs.q.vocab_size: expected a positive int, got 0

A section is described by a mapping ``{key: Field(check, default)}``; :func:`check_section`
rejects unknown keys (with the closest known names), fills defaults and returns the normalised,
JSON-ready section. Checks only use Python values, never tensors.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConfigError",
    "Field",
    "REQUIRED",
    "check_section",
    "activation_name",
    "bool_value",
    "choice",
    "int_list",
    "optional",
    "positive_int",
    "non_negative_int",
    "probability",
    "string",
    "string_list",
]


from .._errors import ConfigError  # noqa: E402  (one class for the model and training sides)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Marks a :class:`Field` without a default."""

Check = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Field:
    """One config key: ``check(key, value) -> normalised value`` (raises ConfigError) and a default."""

    check: Check
    default: Any = REQUIRED


def _kind(value: Any) -> str:
    return f"{value!r}" if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(key: str, value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise ConfigError(key, f"expected a positive int, got {_kind(value)}")
    return int(value)


def non_negative_int(key: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ConfigError(key, f"expected an int >= 0, got {_kind(value)}")
    return int(value)


def positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < float("inf"):
        raise ConfigError(key, f"expected a positive finite number, got {_kind(value)}")
    return float(value)


def non_negative_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < float("inf"):
        raise ConfigError(key, f"expected a finite number >= 0, got {_kind(value)}")
    return float(value)


def probability(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(key, f"expected a probability in [0, 1), got {_kind(value)}")
    return float(value)


def bool_value(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_kind(value)}")
    return value


def string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a non-empty string, got {_kind(value)}")
    return value


def int_list(key: str, value: Any) -> list[int]:
    """A list of positive ints (``[]`` allowed); a single int is not a list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(key, f"expected a list of positive ints, got {_kind(value)}")
    return [positive_int(f"{key}[{i}]", v) for i, v in enumerate(value)]


def string_list(key: str, value: Any) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(key, f"expected a non-empty list of strings, got {_kind(value)}")
    return [string(f"{key}[{i}]", v) for i, v in enumerate(value)]


def choice(*options: str) -> Check:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise ConfigError(key, f"expected one of {', '.join(options)}; got {_kind(value)}")
        return value

    return check


def optional(check: Check) -> Check:
    """``check`` that also lets ``None`` (YAML ``null``) through."""

    def wrapped(key: str, value: Any) -> Any:
        return None if value is None else check(key, value)

    return wrapped


_ACTIVATIONS = ("identity", "none", "relu", "tanh", "sigmoid", "gelu", "elu", "silu", "leaky_relu")


def activation_name(key: str, value: Any) -> str:
    """An activation name understood by :func:`mmfuse.layers.make_activation`."""
    if not isinstance(value, str) or value.lower() not in _ACTIVATIONS:
        raise ConfigError(key, f"expected an activation name ({', '.join(_ACTIVATIONS)}), got {_kind(value)}")
    return value.lower()


def unknown_key(key: str, name: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"expected one of {', '.join(known)}"
    return ConfigError(f"{key}.{name}" if key else name, f"unknown key; {hint}")


def mapping(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, got {_kind(value)}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(key, f"keys must be strings, got {k!r}")
    return value


def check_section(
    key: str, value: Any, fields: Mapping[str, Field], skip: Sequence[str] = ()
) -> dict[str, Any]:
    """Validate the mapping ``value`` found at ``key`` against ``fields``.

    Keys in ``skip`` are allowed and left out of the result (the caller checks them).

    Returns:
        A new dict with every field, in the order of ``fields``, defaults filled in.
    Raises:
        ConfigError: not a mapping, an unknown key, a missing required key or a bad value.
    """
    section = mapping(key, value)
    for name in section:
        if name not in fields and name not in skip:
            raise unknown_key(key, name, [*fields, *skip])
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name in section:
            out[name] = f.check(f"{key}.{name}", section[name])
        elif f.default is REQUIRED:
            raise ConfigError(f"{key}.{name}", "missing required key")
        else:
            out[name] = list(f.default) if isinstance(f.default, (list, tuple)) else f.default
    return out


def json_ready(key: str, value: Any) -> Any:
    """``value`` as plain JSON data (dicts with str keys, lists, str, finite numbers, bool, None)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return value
    if isinstance(value, Mapping):
        return {k: json_ready(f"{key}.{k}", v) for k, v in mapping(key, value).items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(f"{key}[{i}]", v) for i, v in enumerate(value)]
    raise ConfigError(key, f"expected plain config data (numbers, strings, lists, mappings), got {type(value).__name__}")

"""A restricted unpickler for data-only pickles (CMU-MOSI / MOSEI, bottom-up id maps).

Unpickling is code execution: a pickle names any importable callable (``os.system``,
``subprocess.Popen``, ``builtins.eval`` ...) and the standard unpickler calls it while loading.
Several published multimodal datasets are only distributed as pickles, so mmfuse reads them
through :class:`SafeUnpickler`, which resolves a global only when it is on a short allow-list
and refuses every other one *before* anything is called:

- numpy arrays, dtypes and scalars: ``numpy.ndarray``, ``numpy.dtype``, the array
  reconstructors ``numpy[._]core.multiarray._reconstruct`` (protocols 0-4) and
  ``numpy[._]core.numeric._frombuffer`` (protocol 5), ``numpy[._]core.multiarray.scalar``
  (numpy 1 and numpy 2 module names are both accepted);
- ``_codecs.encode``, which protocol 2 uses to rebuild ``bytes``;
- plain containers and atoms: dict, list, tuple, str, bytes, int, float, bool, None, which the
  pickle opcodes build without naming any global, plus ``set`` and ``frozenset`` (named as
  globals by protocols < 4).

Anything else (functions, classes, ``copyreg._reconstructor`` for arbitrary objects,
persistent ids) raises :class:`UnsafePickleError` (a ``ValueError``) naming the file and the
refused global. Object arrays stay possible, but their elements go through the same rules.

Example::

    data = safe_load("mosi_raw.pkl")          # {"train": {"vision": ndarray, ...}, ...}
"""
from __future__ import annotations

import _codecs
import _compat_pickle
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SafeUnpickler", "UnsafePickleError", "safe_load", "safe_loads"]


class UnsafePickleError(ValueError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list of :mod:`mmfuse.data.safe_pickle`."""


def _numpy_core(name: str) -> Any:
    """``numpy._core.<name>`` (numpy 2) or ``numpy.core.<name>`` (numpy 1), without warnings."""
    import importlib

    for prefix in ("numpy._core", "numpy.core"):
        try:
            return importlib.import_module(f"{prefix}.{name}")
        except ImportError:
            continue
    raise ImportError(f"numpy core module {name!r} not found")  # pragma: no cover


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


_ALLOWED = _allowed_globals()


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals listed in the module docstring.

    Args:
        file: a binary file object.
        source: a name for error messages (usually the file path).
        encoding: how to decode Python 2 ``str`` objects; ``"latin1"`` (default) is what numpy
            needs to read arrays pickled by Python 2.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, *, source: str = "<bytes>", encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (``__builtin__.set``), mapped as the stock unpickler maps them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle global '{module}.{name}'; only numpy arrays, dtypes, "
                "scalars and plain containers (dict, list, tuple, set, str, bytes, int, float, bool, None) "
                "are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused a persistent id {pid!r}; only plain data is allowed")


def safe_loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` through :class:`SafeUnpickler`; any failure is a ``ValueError`` naming ``source``."""
    return _load_file(io.BytesIO(data), source)


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Read a pickle file with :class:`SafeUnpickler`.

    Raises:
        ValueError: the file is missing, truncated or corrupt, or names a refused global
            (:class:`UnsafePickleError`); the message starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file does not exist")
    try:
        with open(path, "rb") as f:
            return _load_file(f, str(path))
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err})") from err


def _load_file(f: io.BufferedIOBase, source: str) -> Any:
    try:
        return SafeUnpickler(f, source=source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError,
            UnicodeDecodeError, MemoryError) as err:
        raise ValueError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from err

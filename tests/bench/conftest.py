"""Fixtures of the benchmark tests: a private data cache, one thread."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("lightning")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Generated datasets go to a temporary cache shared by this session."""
    old = os.environ.get("MMFUSE_CACHE")
    os.environ["MMFUSE_CACHE"] = str(tmp_path_factory.mktemp("mmfuse-cache"))
    yield
    if old is None:
        os.environ.pop("MMFUSE_CACHE", None)
    else:
        os.environ["MMFUSE_CACHE"] = old

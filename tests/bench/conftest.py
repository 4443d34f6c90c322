"""Fixtures of the benchmark tests: a private data cache, one thread."""
from __future__ import annotations

import pytest

pytest.importorskip("lightning")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(private_cache):
    """Generated datasets go to a temporary cache shared by this session."""
    yield private_cache

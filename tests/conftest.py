"""Fixtures shared by the whole test-suite (the contract tests' helpers live in contract_helpers.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def private_cache(tmp_path_factory):
    """Point ``MMFUSE_CACHE`` (generated datasets) at a temporary folder for the session, then restore it.

    Folders whose tests generate data use it through an autouse fixture in their conftest.py.
    """
    old = os.environ.get("MMFUSE_CACHE")
    path = tmp_path_factory.mktemp("mmfuse-cache")
    os.environ["MMFUSE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MMFUSE_CACHE", None)
    else:
        os.environ["MMFUSE_CACHE"] = old

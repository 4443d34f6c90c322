"""Fixtures of the training tests: a private data cache and the model builder."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("lightning")
pytest.importorskip("safetensors")

import train_helpers  # noqa: E402  (tests/train is on sys.path: pytest's rootdir-less import mode)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Generated datasets go to a temporary cache shared by this session (and its subprocesses)."""
    old = os.environ.get("MMFUSE_CACHE")
    os.environ["MMFUSE_CACHE"] = str(tmp_path_factory.mktemp("mmfuse-cache"))
    yield
    if old is None:
        os.environ.pop("MMFUSE_CACHE", None)
    else:
        os.environ["MMFUSE_CACHE"] = old


@pytest.fixture(autouse=True)
def models(monkeypatch) -> str:
    """``"real"`` when mmfuse.models is importable, else ``"stand-in"`` (patched into the trainer)."""
    return "stand-in" if train_helpers.use_standin_if_needed(monkeypatch) else "real"


@pytest.fixture
def one_thread():
    """Run with one intra-op thread (bitwise-reproducible comparisons with subprocesses)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

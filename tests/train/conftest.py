"""Fixtures of the training tests: a private data cache and the model builder."""
from __future__ import annotations

import pytest

pytest.importorskip("lightning")
pytest.importorskip("safetensors")

import train_helpers  # noqa: E402  (tests/train is on sys.path: pytest's rootdir-less import mode)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(private_cache):
    """Generated datasets go to a temporary cache shared by this session (and its subprocesses)."""
    yield private_cache


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

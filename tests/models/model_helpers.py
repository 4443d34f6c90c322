"""Fake batches and small configs shared by the model tests."""

from __future__ import annotations

import copy
from typing import Any

import torch

VOCAB = 46  # Sort-of-CLEVR's word vocabulary
SOC_LEN = 13  # its longest question


def soc_batch(b: int = 4, regions: int = 6, length: int = SOC_LEN, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fake Sort-of-CLEVR batch with the keys of the interface (right-padded questions)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (b,), generator=g)
    lengths[0] = length
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # [B, L]
    tokens = torch.randint(1, VOCAB, (b, length), generator=g) * mask
    region_mask = torch.ones(b, regions, dtype=torch.bool)
    region_mask[-1, -2:] = False  # one scene with two padded rows
    return {
        "image": torch.rand(b, 3, 75, 75, generator=g),
        "regions": torch.rand(b, regions, 10, generator=g),
        "region_mask": region_mask,
        "question_bits": torch.randint(0, 2, (b, 11), generator=g).float(),
        "question_tokens": tokens,
        "question_mask": mask,
        "answer": torch.randint(0, 10, (b,), generator=g),
        "qtype": torch.randint(0, 6, (b,), generator=g),
    }


V_REGIONS = {"encoder": "regions", "key": "regions", "mask_key": "region_mask", "in_dim": 10, "dim": 16}
Q_GRU = {"encoder": "gru", "key": "question_tokens", "mask_key": "question_mask", "vocab_size": VOCAB, "dim": 16}


def soc_config(fusion: dict[str, Any], v: dict[str, Any] | None = None, q: dict[str, Any] | None = None) -> dict[str, Any]:
    """A small ``model:`` section on Sort-of-CLEVR regions + GRU question words."""
    return {
        "task": {"kind": "classification", "num_outputs": 10},
        "inputs": {"v": copy.deepcopy(v or V_REGIONS), "q": copy.deepcopy(q or Q_GRU)},
        "fusion": copy.deepcopy(fusion),
        "head": {"hidden_dims": [16], "dropout": 0.0, "activation": "relu"},
    }

"""The MFAS surrogate: a small recurrent network that predicts a configuration's accuracy.

Papers: Liu et al., "Progressive Neural Architecture Search", ECCV 2018 (an LSTM surrogate over
the cell's choices, fitted to the accuracies measured so far, ranks the next expansions);
Pérez-Rúa et al., MFAS, CVPR 2019 (the same for fusion layers).

Each fusion layer is the sum of one learned embedding per slot choice
(``e_l = Σ_s E_s[c_{l,s}]``: the feature layer of every modality, the activation, the combine),
an LSTM reads ``e_1 .. e_L`` and a Linear on its last state predicts the score. Scores are
standardised before fitting (mean 0, std 1) and mapped back by :meth:`Surrogate.predict`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .space import Configuration, SearchSpace

__all__ = ["Surrogate", "spearman"]


class Surrogate(nn.Module):
    """LSTM regressor ``configuration -> score``.

    Args:
        space: the search space (its ``slot_sizes`` size the embeddings).
        embed_dim: width of the slot embeddings and the LSTM input; hidden_dim: LSTM width.

    Shapes: ``forward(slots Tensor[N, L, S], lengths Tensor[N]) -> Tensor[N]`` (standardised
    scores); S = M + 2 slots per layer, rows padded past their length.
    """

    def __init__(self, space: SearchSpace, embed_dim: int = 16, hidden_dim: int = 32):
        super().__init__()
        self.space = space
        self.embeds = nn.ModuleList(nn.Embedding(n, embed_dim) for n in space.slot_sizes)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, 1)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def _encode(self, configs: Sequence[Configuration]) -> tuple[Tensor, Tensor]:
        lengths = torch.tensor([len(c) for c in configs])
        slots = torch.zeros(len(configs), int(lengths.max()), len(self.space.slot_sizes), dtype=torch.long)
        for i, c in enumerate(configs):
            slots[i, : len(c)] = torch.from_numpy(self.space.slots(c))
        return slots, lengths

    def forward(self, slots: Tensor, lengths: Tensor) -> Tensor:
        e = sum(emb(slots[..., s]) for s, emb in enumerate(self.embeds))  # (N, L, E)
        h, _ = self.lstm(e)  # (N, L, H)
        last = h[torch.arange(h.shape[0]), lengths - 1]  # (N, H): state after each row's last layer
        return self.out(last).squeeze(-1)

    def fit(
        self,
        configs: Sequence[Configuration],
        scores: Sequence[float],
        *,
        epochs: int = 300,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ) -> float:
        """Fit to ``(configs, scores)`` by full-batch Adam on the MSE of standardised scores.

        Re-initialises the weights first (from ``seed``), so a fit depends only on its data.

        Returns:
            The final training MSE (standardised units).
        """
        if len(configs) != len(scores) or not configs:
            raise ValueError(f"Surrogate.fit: expected as many scores as configurations (>= 1), got {len(scores)} and {len(configs)}")
        y = torch.tensor([float(s) for s in scores], dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in self.modules():
                if module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.mean.fill_(float(y.mean()))
        self.std.fill_(float(y.std()) if len(y) > 1 and float(y.std()) > 1e-8 else 1.0)
        target = (y - self.mean) / self.std
        slots, lengths = self._encode(configs)
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        self.train()
        loss = torch.tensor(0.0)
        for _ in range(epochs):
            loss = F.mse_loss(self(slots, lengths), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.eval()
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, configs: Sequence[Configuration], batch_size: int = 4096) -> np.ndarray:
        """Predicted scores (in the units of the fitted scores), float64 ``[N]``."""
        self.eval()
        out = []
        for start in range(0, len(configs), batch_size):
            slots, lengths = self._encode(configs[start : start + batch_size])
            out.append(self(slots, lengths) * self.std + self.mean)
        return torch.cat(out).double().numpy() if out else np.zeros(0)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 0-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two equal-length sequences (ties get average ranks)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"spearman: expected two 1-D sequences of the same length >= 2, got {x.shape} and {y.shape}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0

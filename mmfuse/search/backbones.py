"""Unimodal backbones that expose their hidden layers, for MFAS and CentralNet.

MFAS (Pérez-Rúa et al., CVPR 2019) fuses the hidden layers of unimodal networks that were
trained on the task one modality at a time and then frozen. Each backbone here returns the
list of its hidden features (one vector per layer) and classifies from the last one:

- :class:`MLPBackbone`: vectors ``[B, D]``; layer i is ``σ(W_i h_{i-1})``.
- :class:`CNNBackbone`: images ``[B, C, H, W]``; block i is conv3x3 (stride 2) + BatchNorm + ReLU,
  its feature is the spatial mean ``[B, C_i]``.
- :class:`GRUBackbone`: token ids ``[B, T]`` (0 = padding); an embedding then stacked GRUs,
  layer i's feature is its state at the last real token ``[B, H_i]``.

:func:`pretrain_backbone` trains one on its modality alone (cross-entropy on the task label);
:func:`extract_features` runs it frozen over a table of inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ActivationArg, make_activation

__all__ = ["Backbone", "MLPBackbone", "CNNBackbone", "GRUBackbone", "pretrain_backbone", "extract_features"]


def _dims(owner: str, name: str, dims: Sequence[int]) -> tuple[int, ...]:
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or not dims:
        raise ValueError(f"{owner}: {name} must be a non-empty list of positive ints, got {dims!r}")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"{owner}: {name} must be a non-empty list of positive ints, got {list(dims)}")
    return tuple(dims)


class Backbone(nn.Module):
    """Base: ``features(x) -> [Tensor[B, D_1], .., Tensor[B, D_n]]``, ``forward(x) -> logits [B, C]``."""

    feature_dims: tuple[int, ...]

    def __init__(self, feature_dims: Sequence[int], num_classes: int):
        super().__init__()
        self.feature_dims = tuple(feature_dims)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.feature_dims[-1], num_classes)

    def features(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)[-1])


class MLPBackbone(Backbone):
    """A stack of Linear + activation layers on a vector modality.

    Args:
        in_dim: D of the input ``[B, D]``; hidden_dims: width of each layer (its feature);
        num_classes: C of the unimodal classifier; activation: between layers.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], num_classes: int, activation: ActivationArg = "relu"):
        dims = _dims("MLPBackbone", "hidden_dims", hidden_dims)
        super().__init__(dims, num_classes)
        self.in_dim = in_dim
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip((in_dim, *dims[:-1]), dims))
        self.activation = make_activation(activation, "MLPBackbone")

    def features(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 2 or x.shape[-1] != self.in_dim:
            raise ValueError(f"MLPBackbone: expected input [B, {self.in_dim}], got {tuple(x.shape)}")
        out = []
        for layer in self.layers:
            x = self.activation(layer(x))
            out.append(x)
        return out


class CNNBackbone(Backbone):
    """Conv3x3 (stride 2) + BatchNorm + ReLU blocks on images; each block's feature is its spatial mean.

    Args:
        in_channels: C of the input ``[B, C, H, W]``; channels: output channels per block.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], num_classes: int):
        dims = _dims("CNNBackbone", "channels", channels)
        super().__init__(dims, num_classes)
        self.in_channels = in_channels
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in zip((in_channels, *dims[:-1]), dims)
        )

    def features(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"CNNBackbone: expected images [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.dtype == torch.uint8:  # stored images: bytes in 0..255
            x = x.float() / 255.0
        out = []
        for block in self.blocks:
            x = block(x)  # (B, C_i, H_i, W_i)
            out.append(x.mean(dim=(2, 3)))
        return out


class GRUBackbone(Backbone):
    """Embedding + stacked GRUs over token ids (0 = padding, right-padded).

    Layer i's feature is its hidden state at each row's last real token, ``[B, H_i]``.

    Args:
        vocab_size: token ids are in ``0 .. vocab_size - 1``; embed_dim: E;
        hidden_dims: H_i of each GRU layer.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dims: Sequence[int], num_classes: int):
        dims = _dims("GRUBackbone", "hidden_dims", hidden_dims)
        super().__init__(dims, num_classes)
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.grus = nn.ModuleList(nn.GRU(a, b, batch_first=True) for a, b in zip((embed_dim, *dims[:-1]), dims))

    def features(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 2 or x.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"GRUBackbone: expected int token ids [B, T], got {tuple(x.shape)} {x.dtype}")
        last = ((x != 0).sum(1) - 1).clamp(min=0)  # (B,) index of the last real token
        h = self.embed(x.long())  # (B, T, E)
        out = []
        for gru in self.grus:
            h, _ = gru(h)  # (B, T, H_i)
            out.append(h[torch.arange(h.shape[0]), last])
        return out


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def pretrain_backbone(
    backbone: Backbone,
    inputs: Tensor,
    labels: Tensor,
    *,
    index: Tensor | None = None,
    epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Train ``backbone`` and its classifier on one modality (cross-entropy), then freeze it.

    Args:
        inputs: ``Tensor[N, ...]`` the modality's inputs; labels: int ``Tensor[N]``, or class
            probabilities ``Tensor[N, C]`` (soft targets).
        index: optional int ``Tensor[N]``: sample j reads ``inputs[index[j]]`` (a table of
            images shared by several questions is then never copied per question).

    Returns:
        The final training loss (the backbone is left in eval mode, ``requires_grad=False``).
    """
    n = inputs.shape[0] if index is None else index.shape[0]
    if n != labels.shape[0]:
        raise ValueError(f"pretrain_backbone: expected as many labels as samples, got {labels.shape[0]} and {n}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(backbone.parameters(), lr=lr, weight_decay=weight_decay)
    backbone.train()
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        for idx in _batches(n, batch_size, g):
            rows = idx if index is None else index[idx]
            loss = F.cross_entropy(backbone(inputs[rows]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    freeze(backbone)
    return float(loss.detach())


def freeze(backbone: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the backbone is fixed for the search."""
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


@torch.no_grad()
def extract_features(backbone: Backbone, inputs: Tensor, batch_size: int = 1024) -> list[Tensor]:
    """The frozen features of every row of ``inputs``: a list over layers of ``Tensor[N, D_i]``."""
    backbone.eval()
    chunks = [backbone.features(inputs[idx]) for idx in _batches(inputs.shape[0], batch_size, None)]
    return [torch.cat([c[i] for c in chunks]) for i in range(len(backbone.feature_dims))]


@torch.no_grad()
def accuracy(backbone: Backbone, inputs: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Unimodal accuracy of the backbone's classifier."""
    backbone.eval()
    correct = sum(
        int((backbone(inputs[idx]).argmax(-1) == labels[idx]).sum()) for idx in _batches(inputs.shape[0], batch_size, None)
    )
    return correct / max(1, inputs.shape[0])

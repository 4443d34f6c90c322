"""Unimodal backbones: their hidden features by value, pre-training, freezing, bad input."""

from __future__ import annotations

import pytest
import torch

from mmfuse.search.backbones import (
    CNNBackbone,
    GRUBackbone,
    MLPBackbone,
    accuracy,
    extract_features,
    pretrain_backbone,
)
from mmfuse.search.tasks import _row_targets


def test_mlp_features_are_its_layers():
    torch.manual_seed(0)
    b = MLPBackbone(5, (6, 4, 3), num_classes=2, activation="tanh")
    x = torch.randn(7, 5)
    feats = b.features(x)
    h = x
    for layer, f in zip(b.layers, feats):
        h = torch.tanh(h @ layer.weight.T + layer.bias)
        torch.testing.assert_close(f, h)
    assert b.feature_dims == (6, 4, 3) and [f.shape[-1] for f in feats] == [6, 4, 3]
    torch.testing.assert_close(b(x), h @ b.classifier.weight.T + b.classifier.bias)


def test_gru_feature_is_the_state_at_the_last_real_token():
    torch.manual_seed(0)
    b = GRUBackbone(vocab_size=9, embed_dim=4, hidden_dims=(5, 3), num_classes=2).eval()
    tokens = torch.tensor([[3, 4, 5, 0, 0], [1, 2, 3, 4, 8]])
    feats = b.features(tokens)
    alone = b.features(tokens[:1, :3])  # row 0 without its padding
    for f, a in zip(feats, alone):
        torch.testing.assert_close(f[:1], a)
    # explicit: the first layer's state after the real tokens of row 0
    out, _ = b.grus[0](b.embed(tokens[:1, :3]))
    torch.testing.assert_close(feats[0][0], out[0, -1])
    assert [f.shape for f in feats] == [(2, 5), (2, 3)]


def test_cnn_features_are_spatial_means_and_bytes_are_scaled():
    torch.manual_seed(0)
    b = CNNBackbone(3, (4, 6), num_classes=3).eval()
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    feats = b.features(img)
    x = img.float() / 255.0
    for block, f in zip(b.blocks, feats):
        x = block(x)
        torch.testing.assert_close(f, x.mean(dim=(2, 3)))
    assert x.shape == (2, 6, 4, 4)


def test_pretraining_learns_and_freezes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    torch.manual_seed(0)
    b = MLPBackbone(4, (16, 8), num_classes=2)
    before = accuracy(b, x, y)
    pretrain_backbone(b, x, y, epochs=15, lr=1e-2, batch_size=64)
    assert accuracy(b, x, y) > 0.9 > before + 0.2
    assert not b.training and all(not p.requires_grad for p in b.parameters())
    feats = extract_features(b, x, batch_size=128)
    torch.testing.assert_close(feats[1], b.features(x)[1])


def test_pretraining_with_an_index_equals_the_gathered_table():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(10, 3, generator=g)
    index = torch.randint(0, 10, (50,), generator=g)
    y = torch.randint(0, 2, (50,), generator=g)
    torch.manual_seed(0)
    a = MLPBackbone(3, (4,), num_classes=2)
    torch.manual_seed(0)
    b = MLPBackbone(3, (4,), num_classes=2)
    pretrain_backbone(a, table, y, index=index, epochs=2, batch_size=8, seed=3)
    pretrain_backbone(b, table[index], y, epochs=2, batch_size=8, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_shared_rows_train_on_their_answer_histogram():
    index = torch.tensor([2, 0, 2, 2, 0])
    labels = torch.tensor([1, 0, 1, 2, 1])
    rows, targets = _row_targets(index, labels, 3)
    assert rows.tolist() == [0, 2]
    torch.testing.assert_close(targets, torch.tensor([[0.5, 0.5, 0.0], [0.0, 2 / 3, 1 / 3]]))
    distinct, same = _row_targets(torch.tensor([3, 1, 2]), labels[:3], 3)
    assert distinct.tolist() == [3, 1, 2] and same is not None and same.tolist() == [1, 0, 1]


def test_bad_input():
    with pytest.raises(ValueError, match=r"MLPBackbone: expected input \[B, 5\], got \(2, 4\)"):
        MLPBackbone(5, (3,), 2).features(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"CNNBackbone: expected images \[B, 3, H, W\], got \(2, 1, 8, 8\)"):
        CNNBackbone(3, (4,), 2).features(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="GRUBackbone: expected int token ids"):
        GRUBackbone(5, 4, (3,), 2).features(torch.randn(2, 3))
    with pytest.raises(ValueError, match="hidden_dims must be a non-empty list of positive ints, got \\[3, 0\\]"):
        MLPBackbone(5, (3, 0), 2)
    with pytest.raises(ValueError, match="expected as many labels as samples, got 3 and 4"):
        pretrain_backbone(MLPBackbone(2, (3,), 2), torch.randn(4, 2), torch.zeros(3, dtype=torch.long))

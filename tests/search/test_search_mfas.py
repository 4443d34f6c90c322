"""MFAS: the fusion network against an explicit computation, the search, its log and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmfuse.search import mfas
from mmfuse.search.mfas import FusionNet, SearchLog, SearchSettings, random_search, search
from mmfuse.search.space import FusionLayer, SearchSpace

FEATURE_DIMS = [[5, 3], [4, 6, 2]]


def _features(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(n, d, generator=g) for d in dims] for dims in FEATURE_DIMS]


def test_fusion_net_matches_an_explicit_computation():
    space = SearchSpace((2, 3), activations=("relu", "sigmoid", "tanh"), max_layers=3)
    config = (
        FusionLayer((1, 0), "tanh", "concat"),
        FusionLayer((0, 2), "sigmoid", "weighted_sum"),
        FusionLayer((1, 1), "relu", "concat"),
    )
    torch.manual_seed(0)
    net = FusionNet(space, config, FEATURE_DIMS, hidden_dim=4, num_classes=3)
    with torch.no_grad():  # non-trivial α
        net.alphas["1"].copy_(torch.tensor([0.7, -1.3, 2.0]))
    f = _features()
    out = net(f)

    def lin(layer, x):
        return x @ layer.weight.T + layer.bias

    h1 = torch.tanh(lin(net.blocks[0], torch.cat([f[0][1], f[1][0]], -1)))
    a = net.alphas["1"]
    p0, p1 = net.blocks[1]
    h2 = torch.sigmoid(a[0] * lin(p0, f[0][0]) + a[1] * lin(p1, f[1][2]) + a[2] * h1)
    h3 = torch.relu(lin(net.blocks[2], torch.cat([f[0][1], f[1][1], h2], -1)))
    torch.testing.assert_close(out, lin(net.classifier, h3))
    assert out.shape == (7, 3)
    assert net.reads == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    # features a configuration does not read may be None
    one = FusionNet(space, (FusionLayer((0, 1), "relu", "concat"),), FEATURE_DIMS, hidden_dim=4, num_classes=3)
    assert one.reads == [(0, 0), (1, 1)]
    sparse = [[f[0][0], None], [None, f[1][1], None]]
    torch.testing.assert_close(one(sparse), one(f))


def test_fusion_net_parameters_are_registered_and_learn():
    space = SearchSpace((2, 3), max_layers=2)
    config = (FusionLayer((0, 1), "relu", "weighted_sum"), FusionLayer((1, 2), "leaky_relu", "concat"))
    torch.manual_seed(1)
    net = FusionNet(space, config, FEATURE_DIMS, hidden_dim=5, num_classes=2)
    names = {n for n, _ in net.named_parameters()}
    assert "alphas.0" in names and "blocks.1.weight" in names and "classifier.weight" in names
    # 2 projections (5+1)*5 and (6+1)*5, 2 α; concat (3+2+5+1)*5; classifier (5+1)*2
    assert sum(p.numel() for p in net.parameters()) == 30 + 35 + 2 + 55 + 12
    net(_features()).pow(2).sum().backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def test_fusion_net_bad_feature_dims():
    space = SearchSpace((2, 3), max_layers=1)
    with pytest.raises(ValueError, match=r"feature_dims must give \(2, 3\) layer widths per modality, got \[2, 2\]"):
        FusionNet(space, (space.decode_layer(0),), [[5, 3], [4, 6]], 4, 2)


def test_train_fusion_learns_a_separable_task():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(400, 3, generator=g), torch.randn(400, 3, generator=g)
    y = ((x0[:, 0] * x1[:, 0]) > 0).long()  # a product: needs the nonlinearity
    feats = [[x0], [x1]]
    space = SearchSpace((1, 1), max_layers=2)
    torch.manual_seed(0)
    net = FusionNet(space, (FusionLayer((0, 0), "relu", "concat"),) * 2, [[3], [3]], hidden_dim=32, num_classes=2)
    before = mfas.evaluate_accuracy(net, feats, y)
    mfas.train_fusion(net, feats, y, epochs=60, lr=1e-2, batch_size=64, seed=0)
    after = mfas.evaluate_accuracy(net, feats, y)
    assert after > 0.9 and after > before + 0.2


# --------------------------------------------------------------------------- the search


SPACE = SearchSpace((4, 4), activations=("relu", "sigmoid", "leaky_relu"), max_layers=3)


def planted(config) -> float:
    """Higher for early feature layers and relu, a bonus for depth; deterministic."""
    s = sum(-0.1 * (l.feature_layers[0] + l.feature_layers[1]) + (0.2 if l.activation == "relu" else 0.0) for l in config)
    return s / len(config) + 0.02 * len(config)


class Counter:
    def __init__(self, fail_after: int | None = None):
        self.keys: list[str] = []
        self.fail_after = fail_after

    def __call__(self, config):
        if self.fail_after is not None and len(self.keys) >= self.fail_after:
            raise KeyboardInterrupt  # a kill in the middle of the search
        self.keys.append(SPACE.key(config))
        return {"score": planted(config), "extra": 1}


SETTINGS = SearchSettings(configs_per_step=6, iterations=2, surrogate_epochs=120, seed=3)


def test_search_grows_progressively_and_beats_random_sampling():
    ev = Counter()
    result = search(SPACE, ev, SETTINGS)
    lengths = [len(e.config) for e in result.evaluations]
    assert lengths == [1] * 6 + [2] * 6 + [3] * 6 + [1] * 6 + [2] * 6 + [3] * 6
    assert len(set(ev.keys)) == len(ev.keys) == 36  # never the same configuration twice
    assert result.stopped_by == "done" and result.surrogate is not None and result.trained == 36
    assert result.best.score == max(e.score for e in result.evaluations)
    # steps at L >= 2 expand the best configurations of the previous length
    for e in result.evaluations[6:12]:
        assert (e.config[0],) in {x.config for x in result.evaluations[:6]}
    rand = random_search(SPACE, Counter(), 36, seed=3)
    assert result.best.score > np.median([e.score for e in rand.evaluations])
    assert result.best.score >= max(e.score for e in rand.evaluations)
    # the second pass samples better configurations than the first (the surrogate has learnt)
    first, second = result.evaluations[:18], result.evaluations[18:]
    assert np.mean([e.score for e in second]) > np.mean([e.score for e in first])


def test_budget_in_configurations():
    settings = SearchSettings(configs_per_step=4, iterations=3, surrogate_epochs=20, budget_configs=7)
    result = search(SPACE, Counter(), settings)
    assert len(result.evaluations) == 7 and result.stopped_by == "budget_configs"


def test_budget_in_minutes_stops_before_training_more(monkeypatch):
    clock = iter(range(0, 10_000, 30))  # every perf_counter call advances 30 s
    monkeypatch.setattr(mfas.time, "perf_counter", lambda: float(next(clock)))
    settings = SearchSettings(configs_per_step=4, iterations=3, surrogate_epochs=20, budget_minutes=2.0)
    result = search(SPACE, Counter(), settings)
    assert result.stopped_by == "budget_minutes" and 0 < len(result.evaluations) < 12


def test_search_resumes_after_a_kill_without_retraining(tmp_path):
    path = tmp_path / "search.jsonl"
    fp = {"space": SPACE.describe(), "epochs": 1}
    with pytest.raises(KeyboardInterrupt):
        search(SPACE, Counter(fail_after=9), SETTINGS, SearchLog(path, fp))
    logged = [json.loads(line) for line in path.read_text().splitlines()]
    assert logged[0] == {"type": "header", "fingerprint": fp} and len(logged) == 10
    assert logged[1]["extra"] == 1 and logged[1]["type"] == "eval" and "config" in logged[1]

    again = Counter()
    resumed = search(SPACE, again, SETTINGS, SearchLog(path, fp))
    first_keys = [r["key"] for r in logged[1:]]
    assert not set(again.keys) & set(first_keys)  # nothing logged was trained again
    assert len(again.keys) == 36 - 9 and resumed.trained == 27
    reference = search(SPACE, Counter(), SETTINGS)  # the same search without the kill
    assert [e.key for e in resumed.evaluations] == [e.key for e in reference.evaluations]
    assert [e.score for e in resumed.evaluations] == [e.score for e in reference.evaluations]
    # a third run trains nothing
    third = Counter()
    search(SPACE, third, SETTINGS, SearchLog(path, fp))
    assert third.keys == []
    assert len(path.read_text().splitlines()) == 1 + 36


def test_log_drops_a_torn_last_line_and_refuses_another_search(tmp_path):
    path = tmp_path / "log.jsonl"
    log = SearchLog(path, {"a": 1})
    log.add({"key": "k1", "score": 0.5})
    with open(path, "ab") as f:
        f.write(b'{"type": "eval", "key": "k2", "sco')  # killed mid-write
    log = SearchLog(path, {"a": 1})
    assert list(log.records) == ["k1"] and "k1" in log and len(log) == 1
    assert path.read_bytes().endswith(b"\n")
    log.add({"key": "k3", "score": 0.7})
    assert [json.loads(x)["type"] for x in path.read_text().splitlines()] == ["header", "eval", "eval"]
    with pytest.raises(ValueError, match="belongs to a different search"):
        SearchLog(path, {"a": 2})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header", "fingerprint": {}}\nnot json\n{"type": "eval", "key": "x", "score": 1}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        SearchLog(bad, {})


def test_search_bad_settings():
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        search(SPACE, Counter(), SearchSettings(configs_per_step=0))
    assert SearchSettings(temperature_start=2.0, temperature_end=0.2).temperature(5, 6) == pytest.approx(0.2)
    assert SearchSettings(temperature_start=2.0, temperature_end=0.2).temperature(0, 6) == pytest.approx(2.0)

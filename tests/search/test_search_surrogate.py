"""The LSTM surrogate learns a planted (configuration -> score) function; Spearman is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfuse.search.space import SearchSpace
from mmfuse.search.surrogate import Surrogate, spearman


def planted_score(space: SearchSpace, config) -> float:
    """A known score: early feature layers and relu are good, with a bonus that depends on order."""
    s = 0.0
    for l, row in enumerate(space.slots(config)):
        s += -0.3 * row[0] - 0.2 * row[1] + (0.4 if row[2] == 0 else 0.0) + 0.1 * row[3] * (l + 1)
    return s / len(config) + 0.05 * len(config)


def test_surrogate_ranks_held_out_configurations():
    torch.manual_seed(0)
    space = SearchSpace((4, 4), activations=("relu", "sigmoid", "leaky_relu"), combines=("concat", "weighted_sum"), max_layers=3)
    rng = np.random.default_rng(0)
    seen, configs = set(), []
    while len(configs) < 260:
        c = space.sample(rng, int(rng.integers(1, 4)))
        if space.key(c) not in seen:
            seen.add(space.key(c))
            configs.append(c)
    scores = [planted_score(space, c) for c in configs]
    train_c, train_s, test_c, test_s = configs[:160], scores[:160], configs[160:], scores[160:]
    sur = Surrogate(space, embed_dim=16, hidden_dim=32)
    loss = sur.fit(train_c, train_s, epochs=300, lr=1e-2, seed=0)
    assert loss < 0.1
    pred = sur.predict(test_c)
    assert pred.shape == (100,)
    rho = spearman(pred, test_s)
    assert rho > 0.85, f"held-out rank correlation {rho:.3f}"
    # fitted to shuffled scores, it has nothing to learn: the held-out ranking is lost
    shuffled = Surrogate(space)
    shuffled.fit(train_c, list(np.random.default_rng(1).permutation(train_s)), epochs=300, seed=0)
    assert abs(spearman(shuffled.predict(test_c), test_s)) < 0.4
    # predictions are in the units of the scores (de-standardised)
    assert abs(float(np.mean(sur.predict(train_c))) - float(np.mean(train_s))) < 0.05


def test_fit_is_deterministic_and_leaves_the_global_rng_alone():
    space = SearchSpace((2, 3), max_layers=2)
    rng = np.random.default_rng(3)
    configs = [space.sample(rng, 2) for _ in range(20)]
    scores = list(rng.random(20))
    a, b = Surrogate(space), Surrogate(space, embed_dim=16, hidden_dim=32)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a.fit(configs, scores, epochs=30, seed=5)
    assert torch.equal(torch.rand(1), expected)  # fit forks the RNG: the caller's stream is untouched
    b.fit(configs, scores, epochs=30, seed=5)  # different initial weights, same fit: it re-initialises
    np.testing.assert_array_equal(a.predict(configs), b.predict(configs))


def test_fit_bad_input():
    space = SearchSpace((2, 2), max_layers=1)
    with pytest.raises(ValueError, match="expected as many scores as configurations"):
        Surrogate(space).fit([(space.decode_layer(0),)], [0.1, 0.2])


def test_spearman_against_hand_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = (1, 2, 3), y = (1, 3, 2): 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # ties get the average rank: y ranks (1.5, 1.5, 3) -> Pearson of (1,2,3) with (1.5,1.5,3)
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.5, 1.5, 3.0])
    expected = float(np.corrcoef(x, y)[0, 1])
    assert spearman([1, 2, 3], [5, 5, 9]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="same length >= 2"):
        spearman([1, 2], [1, 2, 3])

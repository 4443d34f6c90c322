"""benchmarks/relational_gaps.py: the distance gap between the answer object and the runner-up."""

from __future__ import annotations

import torch
from script_helpers import load_script


def _scene() -> torch.Tensor:
    """Two copies of one scene: six objects (colour k in row order 5, 4, ..., 0) at the pixel
    centres below; the tests' questions name colour 2 (row 2, at (10, 30))."""
    xy = torch.tensor([[10., 10.], [20., 10.], [10., 30.], [14., 33.], [70., 70.], [10., 70.]])
    colours = torch.tensor([5, 4, 2, 3, 1, 0])
    regions = torch.zeros(2, 6, 10)
    regions[:, torch.arange(6), colours] = 1.0
    regions[:, :, 8:10] = xy / 74.0
    return regions


def test_gaps_against_hand_computed_distances():
    mod = load_script("relational_gaps")
    regions = _scene()
    # distances from (10, 30): 20, 22.36, 5, 72.11, 40 -> nearest 5, second 20; farthest 72.11, second 40
    g = mod.gaps(regions, torch.tensor([2, 2]), torch.tensor([mod.CLOSEST, mod.FURTHEST]))
    torch.testing.assert_close(g, torch.tensor([15.0, 5200 ** 0.5 - 40.0]), rtol=0, atol=1e-4)


def test_attention_on_the_named_and_the_answer_object():
    mod = load_script("relational_gaps")
    regions = _scene()
    # named object: row 2 (colour 2); nearest other: row 3; farthest: row 4
    attn = torch.tensor([[0.1, 0.0, 0.5, 0.3, 0.1, 0.0],    # closest: most on the named object itself
                         [0.0, 0.1, 0.0, 0.2, 0.6, 0.1]])   # furthest: most on the farthest
    got = mod.attention_on(attn, regions, torch.tensor([2, 2]), torch.tensor([mod.CLOSEST, mod.FURTHEST]))
    torch.testing.assert_close(got, torch.tensor([[0.5, 0.3, 0.0], [0.0, 0.6, 1.0]]))


def test_squared_gaps_and_answer_distance():
    mod = load_script("relational_gaps")
    regions = _scene()
    q = torch.tensor([mod.CLOSEST, mod.FURTHEST])
    # squared distances from (10, 30): 400, 500, 25, 5200, 1600 -> closest 400 - 25, furthest 5200 - 1600
    sq = mod.gaps(regions, torch.tensor([2, 2]), q, power=2)
    torch.testing.assert_close(sq, torch.tensor([375.0, 3600.0]), rtol=1e-5, atol=1e-2)
    d = mod.answer_distance(regions, torch.tensor([2, 2]), q)
    torch.testing.assert_close(d, torch.tensor([5.0, 5200 ** 0.5]), rtol=0, atol=1e-4)

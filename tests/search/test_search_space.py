"""The MFAS search space: enumeration, encoding, decoding, names, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mmfuse.search.space import FusionLayer, SearchSpace


@pytest.fixture
def space():
    return SearchSpace((3, 2, 4), activations=("relu", "sigmoid"), combines=("concat", "weighted_sum"), max_layers=3)


def test_sizes_are_the_closed_form(space):
    assert space.slot_sizes == (3, 2, 4, 2, 2)
    assert space.layer_size == 3 * 2 * 4 * 2 * 2 == 96
    assert [space.size(k) for k in (1, 2, 3)] == [96, 96**2, 96**3]
    assert space.size() == 96 + 96**2 + 96**3
    two = SearchSpace((2, 3), activations=("tanh",), combines=("concat",), max_layers=2)
    assert two.layer_size == 6 and two.size() == 6 + 36


def test_layers_enumerate_every_choice_once_in_mixed_radix_order(space):
    layers = list(space.layers())
    assert len(layers) == space.layer_size == len(set(layers))
    expected = [
        FusionLayer((a, b, c), act, comb)
        for a, b, c, act, comb in itertools.product(range(3), range(2), range(4), space.activations, space.combines)
    ]
    assert layers == expected  # first slot slowest, last slot fastest
    for i, layer in enumerate(layers):
        assert space.encode_layer(layer) == i and space.decode_layer(i) == layer
    # one explicit index: (2, 1, 3, sigmoid, concat) = (((2*2 + 1)*4 + 3)*2 + 1)*2 + 0
    assert space.encode_layer(FusionLayer((2, 1, 3), "sigmoid", "concat")) == ((((2 * 2 + 1) * 4 + 3) * 2 + 1) * 2 + 0) == 94


def test_configurations_enumerate_the_product_in_lexicographic_order():
    small = SearchSpace((2, 2), activations=("relu",), combines=("concat",), max_layers=2)
    configs = list(small.configurations(2))
    assert len(configs) == small.size(2) == 16 == len(set(configs))
    assert [small.encode(c) for c in configs] == list(itertools.product(range(4), repeat=2))
    assert list(small.configurations(1)) == [(layer,) for layer in small.layers()]


def test_encode_decode_key_and_json_round_trips(space):
    rng = np.random.default_rng(0)
    for length in (1, 2, 3):
        for _ in range(20):
            c = space.sample(rng, length)
            assert len(c) == length
            assert space.decode(space.encode(c)) == c
            assert space.from_key(space.key(c)) == c
            assert space.from_json(space.to_json(c)) == c
    c = (FusionLayer((1, 0, 3), "relu", "concat"), FusionLayer((0, 1, 2), "sigmoid", "weighted_sum"))
    assert space.key(c) == "1-0-3:relu:concat/0-1-2:sigmoid:weighted_sum"
    np.testing.assert_array_equal(space.slots(c), [[1, 0, 3, 0, 0], [0, 1, 2, 1, 1]])


def test_sample_is_uniform_over_layers():
    small = SearchSpace((2, 2), activations=("relu",), combines=("concat",), max_layers=1)
    rng = np.random.default_rng(1)
    counts = np.bincount([small.encode(small.sample(rng, 1))[0] for _ in range(4000)], minlength=4)
    assert counts.min() > 850 and counts.max() < 1150


def test_expand_appends_every_layer(space):
    c = (space.decode_layer(5),)
    out = space.expand(c)
    assert len(out) == space.layer_size
    assert all(x[0] == c[0] for x in out) and [x[1] for x in out] == list(space.layers())
    with pytest.raises(ValueError, match="cannot expand a configuration of 3 layers"):
        space.expand(space.decode((0, 1, 2)))


def test_describe_and_repr(space):
    assert space.describe() == {
        "num_feature_layers": [3, 2, 4], "activations": ["relu", "sigmoid"],
        "combines": ["concat", "weighted_sum"], "max_layers": 3,
    }
    assert "SearchSpace(num_feature_layers=(3, 2, 4)" in repr(space)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_feature_layers": (3,)}, "num_feature_layers must be >= 2 positive ints"),
        ({"num_feature_layers": (3, 0)}, r"got \(3, 0\)"),
        ({"num_feature_layers": (3, 2), "activations": ("relu", "swish")}, "activations must be distinct names"),
        ({"num_feature_layers": (3, 2), "combines": ("concat", "concat")}, "combines must be distinct names"),
        ({"num_feature_layers": (3, 2), "max_layers": 0}, "max_layers must be an int >= 1, got 0"),
    ],
)
def test_bad_space_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace(**kwargs)


def test_bad_configurations_name_what_was_expected(space):
    with pytest.raises(ValueError, match=r"number of layers in 1..3, got 4"):
        space.decode((0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"layer index must be an int in 0..95, got 96"):
        space.decode_layer(96)
    with pytest.raises(ValueError, match=r"feature_layers must be 3 ints below \(3, 2, 4\), got \(0, 2, 0\)"):
        space.check([FusionLayer((0, 2, 0), "relu", "concat")])
    with pytest.raises(ValueError, match="activation must be one of"):
        space.check([FusionLayer((0, 0, 0), "tanh", "concat")])
    with pytest.raises(ValueError, match="malformed configuration key 'x:y'"):
        space.from_key("x:y")
    with pytest.raises(ValueError, match="number of layers in 1..3, got 0"):
        space.check([])
    assert math.prod(space.slot_sizes) == space.layer_size

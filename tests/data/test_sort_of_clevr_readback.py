"""Reading scenes back from pixels and questions back from text (used by `mmfuse predict`)."""

from __future__ import annotations

import numpy as np
import pytest

from mmfuse.data import sort_of_clevr as soc


@pytest.fixture(scope="module")
def split():
    return soc.generate_sort_of_clevr(n_train=30, n_test=1, seed=5)["train"]


def test_detect_objects_recovers_every_region_row(split):
    for i in range(30):
        det = soc.detect_objects(split["images"][i])
        assert det["region_mask"].all()
        # the dataset's rows are shuffled: put them back in colour order
        rows = split["regions"][i][split["region_mask"][i]]
        by_colour = rows[np.argsort(rows[:, :6].argmax(1))]
        np.testing.assert_allclose(det["regions"], by_colour, atol=1e-6)


def test_detect_objects_float_image_and_missing_colour(split):
    img = split["images"][0].astype(np.float32) / 255
    red = (split["images"][0] == soc.PALETTE[0]).all(-1)
    img[red] = 1.0  # paint the red object white
    det = soc.detect_objects(img)
    assert not det["region_mask"][0] and det["region_mask"][1:].all()
    assert (det["regions"][0] == 0).all()
    with pytest.raises(ValueError, match=r"expected an image of shape \(75, 75, 3\), got \(10, 10, 3\)"):
        soc.detect_objects(np.zeros((10, 10, 3), np.uint8))


def test_parse_question_inverts_every_template_and_bits_match(split):
    for q, group in enumerate(soc.TEMPLATES):
        for template in group:
            for c, colour in enumerate(soc.COLOUR_NAMES):
                assert soc.parse_question(template.format(c=colour).upper()) == (q, c)
    # the bits equal the generator's for every stored question
    qt, col = split["qtype"][0], split["question_colour"][0]
    for j in range(len(qt)):
        np.testing.assert_array_equal(soc.question_bits(int(qt[j]), int(col[j])), split["question_bits"][0, j])
    with pytest.raises(ValueError, match="matches none of the dataset's templates"):
        soc.parse_question("Where is the purple object?")

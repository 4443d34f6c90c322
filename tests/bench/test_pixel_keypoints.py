"""benchmarks/pixel_keypoints.py: keypoint coverage and test accuracy with running vs batch statistics."""

from __future__ import annotations

import json

import pytest
import torch
from script_helpers import load_script, pixel_entry

from mmfuse.data import sort_of_clevr as soc


def test_closest_keypoint_in_pixels():
    mod = load_script("pixel_keypoints")
    regions = torch.zeros(1, 2, 10)
    regions[0, :, 8:10] = torch.tensor([[37.0, 37.0], [0.0, 74.0]]) / 74  # the centre, the bottom-left corner
    # keypoints in grid_sample's units, pixel p at (2p + 1) / 75 - 1: 37.5 px per unit
    xy = torch.tensor([[[0.0, 0.0], [1 / 75 - 1, 0.0], [0.1, 0.0]]])  # pixel (37, 37), pixel (0, 37), 3.75 px right
    offset, index = mod.closest_keypoint(xy, regions)
    assert index.tolist() == [[0, 1]]
    # the keypoints' offsets from the objects: none for the centre; the corner is 37 px below pixel (0, 37)
    torch.testing.assert_close(offset, torch.tensor([[[0.0, 0.0], [0.0, -37.0]]]))
    torch.testing.assert_close(mod.region_centres(regions), torch.tensor([[[0.0, 0.0], [1 / 75 - 1, 149 / 75 - 1]]]))


@pytest.mark.parametrize("conv_norm", ["batch", "group"])
def test_accuracy_counts_the_answers_and_leaves_running_statistics_alone(tmp_path, conv_norm):
    mod = load_script("pixel_keypoints")
    folder, root = pixel_entry(tmp_path, conv_norm=conv_norm)
    model, _ = mod.load_entry(folder)
    arrays = soc.load_sort_of_clevr(root).splits["test"]
    right = arrays["answer"] == 0
    rel = arrays["relational"]
    expected = [100 * right.mean(), 100 * right[~rel].mean(), 100 * right[rel].mean()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == (2 if conv_norm == "batch" else 0)
    for batch_statistics in (False, True):
        got = mod.test_accuracy(model, arrays, batch_statistics)
        assert got == pytest.approx(expected)
        assert all(m.training == batch_statistics for m in norms)
    for k, v in model.state_dict().items():  # momentum 0: the running statistics did not move
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(v, before[k])


def test_main_prints_coverage_and_both_accuracies(tmp_path, capsys):
    mod = load_script("pixel_keypoints")
    folder, _ = pixel_entry(tmp_path, conv_norm="batch")
    assert mod.main([str(folder), "--images", "3"]) == 0
    out = capsys.readouterr().out
    assert "keypoint map entropy (uniform: 5.89 nats over 361 cells)" in out  # 75 -> 38 -> 19
    assert all(f"{name:>7}: closest keypoint" in out for name in soc.COLOUR_NAMES)
    assert "the usual one for" in out and "offset (" in out
    assert all(f"  keypoint {k}: " in out for k in range(4)) and "  keypoint 4: " not in out  # 4 keypoints
    assert "test accuracy,  evaluation mode:" in out and "test accuracy, batch statistics:" in out
    assert mod.main([str(folder), "--images", "3", "--positions-only"]) == 0
    out = capsys.readouterr().out
    assert "red: closest keypoint" in out and "test accuracy" not in out
    config = json.loads((folder / "config.json").read_text())
    config["data"]["representation"] = "regions"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="expected a from-pixels entry"):
        mod.main([str(folder)])

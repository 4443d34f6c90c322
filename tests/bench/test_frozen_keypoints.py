"""benchmarks/frozen_keypoints.py: a fresh fusion trained on a run's frozen keypoints."""

from __future__ import annotations

import pytest
import torch
from script_helpers import load_script, pixel_entry

from mmfuse.data import sort_of_clevr as soc
from mmfuse.models.encoders import fourier_extend


def test_nearest_attributes_are_the_nearest_regions_one_hots():
    mod = load_script("frozen_keypoints")
    regions = torch.zeros(1, 2, 10)
    regions[0, 0, [2, 6]] = 1.0  # blue square at the top-left
    regions[0, 1, [5, 7]] = 1.0  # yellow circle at the bottom-right
    regions[0, :, 8:10] = torch.tensor([[0.1, 0.1], [0.9, 0.9]])
    xy = torch.tensor([[[0.7, 0.9], [-0.9, -0.5], [0.0, 0.1]]])  # (x, y) in (-1, 1): near 2, near 1, nearer 2
    got = mod.nearest_attributes(xy, regions)
    torch.testing.assert_close(got, regions[0, [1, 0, 1], :8][None])


@pytest.mark.parametrize("tokens", ["cnn", "standardised", "oracle_shape", "oracle"])
def test_frozen_keypoints_tokens(tmp_path, tokens):
    mod = load_script("frozen_keypoints")
    folder, root = pixel_entry(tmp_path, channels=8, fourier_frequencies=2)
    trained, config = mod.load_entry(folder)
    fresh = mod.build_model(config["model"]).encoders["v"]
    stats = (torch.full((8,), 0.5), torch.full((8,), 2.0))
    frozen = mod.FrozenKeypoints(trained.encoders["v"], fresh, tokens, stats).train()
    assert not frozen.cnn.training and not any(p.requires_grad for p in frozen.cnn.parameters())
    split = mod.split_tensors(soc.load_sort_of_clevr(root).splits["test"])
    images, frozen.regions = split["images"][:3], split["regions"][:3]
    kp = mod.keypoints(frozen.cnn, images)  # [3, 4 keypoints, 8 channels + 2]
    feats, xy = kp[..., :8], kp[..., 8:]
    onehots = mod.nearest_attributes(xy, frozen.regions)
    feats = {"cnn": feats, "standardised": (feats - 0.5) / 2.0,
             "oracle_shape": torch.cat([feats[..., :6], onehots[..., 6:8]], -1), "oracle": onehots}[tokens]
    want = fresh.proj(fourier_extend(torch.cat([feats, xy], -1), fresh.xy_index, fresh.fourier_omegas))
    torch.testing.assert_close(frozen(images).seq, want)
    frozen(images).seq.sum().backward()
    assert fresh.proj[0].weight.grad.abs().sum() > 0 and frozen.cnn.keypoint_logits.weight.grad is None


def test_main_trains_and_prints_the_table(tmp_path, capsys):
    mod = load_script("frozen_keypoints")
    folder, _ = pixel_entry(tmp_path, channels=8)
    assert mod.main([str(folder), "--tokens", "cnn", "oracle", "--steps", "2", "--every", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("cnn step") == 2 and out.count("oracle step") == 2
    assert "| tokens | shape | left | top | closest | furthest | count |" in out
    assert out.count("\n| cnn | ") == 1 and out.count("\n| oracle | ") == 1
    small, _ = pixel_entry(tmp_path / "small")
    with pytest.raises(SystemExit, match="need 8 channels"):
        mod.main([str(small), "--tokens", "oracle", "--steps", "1"])
    glimpse, _ = pixel_entry(tmp_path / "glimpse", keypoint_glimpse=5)
    with pytest.raises(SystemExit, match="keypoints and no glimpse"):
        mod.main([str(glimpse), "--steps", "1"])

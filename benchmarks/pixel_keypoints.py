"""Where do a from-pixels model's CNN keypoints land, and does BatchNorm change its answers?

Reads one entry folder of ``mmfuse run --pixels`` (its ``config.json`` and Lightning ``last.ckpt``,
loaded with ``weights_only=True``) and the test split of the Sort-of-CLEVR it trained on, then
prints:

- for a CNN encoder with ``keypoints``: each keypoint map's entropy (uniform = log of the cell
  count) and largest weight, and for each of the six colours the mean distance in pixels from
  that object's centre to the closest keypoint, its median, and the share of objects with none
  within half an object's side (a colour no keypoint covers cannot be asked about); how often
  that keypoint is the colour's usual one (below 100%: a keypoint shared between colours); and
  its mean offset from the centre with the spread around it (a constant offset per colour
  distorts distances between objects; the spread is the position's noise); and for each keypoint,
  the colour it usually sits on and how far (a spare keypoint sits on the background, or on an
  object that already has one);
- test accuracy (overall, non-relational, relational) in evaluation mode and again with every
  BatchNorm layer normalising with its batch's statistics (13 images a batch, as in training):
  a gap between the two means the running statistics do not stand for the batches.

    python benchmarks/pixel_keypoints.py runs/s9_kp16/lxmert
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

from mmfuse.data import sort_of_clevr as soc
from mmfuse.models.encoders import CNNEncoder
from mmfuse.models.task import build_model

IMAGES_PER_BATCH = 13  # about 256 questions of 20 per image, as ``group_by_image`` batches them
FAR_PX = 5.5  # half an object's side (11 px): a keypoint further away sits beside the object, or between two


def load_entry(folder: Path) -> tuple[nn.Module, dict]:
    config = json.loads((folder / "config.json").read_text())
    model = build_model(config["model"])
    state = torch.load(folder / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model.eval(), config


def region_centres(regions: torch.Tensor) -> torch.Tensor:
    """Region rows Tensor[..., R, 10] (centre pixels at columns 8, 9, divided by 74) -> the centres
    in the (-1, 1) units of the keypoints (``grid_sample``'s, pixel p at ``(2p + 1) / 75 - 1``)."""
    pixels = regions[..., 8:10] * (soc.IMAGE_SIZE - 1)
    return (2 * pixels + 1) / soc.IMAGE_SIZE - 1


def closest_keypoint(xy: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints Tensor[N, K, 2] in (-1, 1) and region rows Tensor[N, R, 10] -> for each object,
    its closest keypoint's offset from the object's centre in pixels, Tensor[N, R, 2] (x, y), and
    that keypoint's index, Tensor[N, R]."""
    diff = (xy[:, :, None] - region_centres(regions)[:, None]) * (soc.IMAGE_SIZE / 2)  # [N, K, R, 2] pixels
    index = diff.norm(dim=-1).argmin(dim=1)  # [N, R]
    offset = torch.gather(diff, 1, index[:, None, :, None].expand(-1, 1, -1, 2)).squeeze(1)
    return offset, index


def keypoint_report(enc: CNNEncoder, images: torch.Tensor, regions: torch.Tensor) -> None:
    """Map entropy and sharpness per keypoint; per colour, how far the closest keypoint is, whether
    it is always the same keypoint, and its mean offset and spread (pixels)."""
    with torch.no_grad():
        g = enc.convs(images)  # [N, C, h, w]
        maps = enc.keypoint_maps(g, images.shape[2:])  # [N, K, h*w]
        xy = maps @ enc.cell_centres(g, images.shape[2:])  # [N, K, 2] in (-1, 1)
    entropy = -(maps.clamp_min(1e-12).log() * maps).sum(-1).mean(0)  # [K]
    print(f"keypoint map entropy (uniform: {math.log(maps.shape[-1]):.2f} nats over {maps.shape[-1]} cells):")
    print("  " + " ".join(f"{e:.2f}" for e in entropy.tolist()))
    print("largest weight per map: " + " ".join(f"{m:.2f}" for m in maps.max(-1).values.mean(0).tolist()))
    offset, index = closest_keypoint(xy, regions)
    colour = regions[..., :6].argmax(-1)  # [N, R]
    # per keypoint: the colour of the object nearest it (the most frequent, and how often) and how far
    dist = (xy[:, :, None] - region_centres(regions)[:, None]).norm(dim=-1) * (soc.IMAGE_SIZE / 2)  # [N, K, R]
    near, nearest = dist.min(-1)  # [N, K]
    near_colour = torch.gather(colour, 1, nearest)  # [N, K]
    print("per keypoint: the colour of the object nearest it (share of the images) and the distance to it:")
    for k in range(xy.shape[1]):
        counts = torch.bincount(near_colour[:, k], minlength=len(soc.COLOUR_NAMES))
        top = int(counts.argmax())
        print(f"  keypoint {k}: {soc.COLOUR_NAMES[top]:>7} ({100 * counts[top] / xy.shape[0]:5.1f}%), "
              f"{near[:, k].mean():5.1f} px (median {near[:, k].median():5.1f})")
    print(f"per colour: the closest keypoint's distance (mean, median, share over {FAR_PX} px), the share "
          "of objects whose closest keypoint is the colour's usual one, its mean offset (x, y) and spread:")
    for c, name in enumerate(soc.COLOUR_NAMES):
        o, k = offset[colour == c], index[colour == c]
        d = o.norm(dim=-1)
        usual = 100 * torch.bincount(k, minlength=xy.shape[1]).max() / len(k)
        mean, spread = o.mean(0), o.std(0) if len(o) > 1 else torch.zeros(2)
        print(f"  {name:>7}: closest keypoint {d.mean():5.1f} px (median {d.median():5.1f}, over {FAR_PX} px for "
              f"{100 * (d > FAR_PX).float().mean():4.1f}%), the usual one for {usual:5.1f}%, "
              f"offset ({mean[0]:+.2f}, {mean[1]:+.2f}) +- ({spread[0]:.2f}, {spread[1]:.2f}) px")


def split_tensors(arrays: dict) -> dict[str, torch.Tensor]:
    """A Sort-of-CLEVR split's arrays as tensors: images float in [0, 1], [N, 3, H, W]."""
    return {"images": torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float().div(255.0),
            "tokens": torch.from_numpy(arrays["question_tokens"]).long(),
            "answer": torch.from_numpy(arrays["answer"]).long(),
            "qtype": torch.from_numpy(arrays["qtype"]).long(),
            "relational": torch.from_numpy(arrays["relational"]).bool(),
            "regions": torch.from_numpy(arrays["regions"]).float()}


def make_batch(split: dict[str, torch.Tensor],
               rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Every question of the images ``rows``: the model's batch, the answers, the question types."""
    q = split["tokens"].shape[1]
    image_id = torch.arange(len(rows)).repeat_interleave(q)
    tokens = split["tokens"][rows].flatten(0, 1)
    batch = {"image": split["images"][rows][image_id], "image_id": image_id, "question_tokens": tokens,
             "question_mask": tokens != 0}
    return batch, split["answer"][rows].flatten(), split["qtype"][rows].flatten()


def test_accuracy(model: nn.Module, arrays: dict, batch_statistics: bool) -> tuple[float, float, float]:
    model.eval()
    if batch_statistics:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
                m.momentum = 0.0  # normalise with the batch, leave the running statistics alone
    split = split_tensors(arrays)
    n, q = split["answer"].shape
    correct = torch.zeros(n, q, dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, n, IMAGES_PER_BATCH):
            rows = torch.arange(start, min(start + IMAGES_PER_BATCH, n))
            batch, answer, _ = make_batch(split, rows)
            correct[rows] = (model(batch).logits.argmax(-1) == answer).view(len(rows), q)
    relational = split["relational"]
    return (100 * correct.float().mean().item(), 100 * correct[~relational].float().mean().item(),
            100 * correct[relational].float().mean().item())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("entry", type=Path, help="an entry folder of `mmfuse run --pixels` (config.json, last.ckpt)")
    p.add_argument("--images", type=int, default=64, help="test images for the keypoint report")
    p.add_argument("--positions-only", action="store_true",
                   help="print the keypoint report only, not the test accuracy (quick, e.g. during a run)")
    args = p.parse_args(argv)
    model, config = load_entry(args.entry)
    data = config["data"]
    if data.get("representation") != "pixels":
        raise SystemExit(f"{args.entry}: expected a from-pixels entry (data.representation: pixels), "
                         f"got {data.get('representation')!r}")
    root = data["path"] or soc.make_sort_of_clevr(seed=data["seed"], **{k: data[k] for k in (
        "n_train", "n_test", "n_nonrel", "n_rel", "n_distractors", "region_noise")})
    arrays = soc.load_sort_of_clevr(root).splits["test"]
    enc = model.encoders["v"]
    if isinstance(enc, CNNEncoder) and enc.keypoints is not None:
        images = torch.from_numpy(arrays["images"][: args.images]).permute(0, 3, 1, 2).float().div(255.0)
        keypoint_report(enc, images, torch.from_numpy(arrays["regions"][: args.images]).float())
    for label, batch_stats in () if args.positions_only else (("evaluation mode", False), ("batch statistics", True)):
        acc, nonrel, rel = test_accuracy(model, arrays, batch_stats)
        print(f"test accuracy, {label:>16}: {acc:.1f} overall, {nonrel:.1f} non-relational, {rel:.1f} relational")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Is it where the keypoints are, or what they carry? A fresh fusion on a run's frozen keypoints.

Reads one entry folder of ``mmfuse run --pixels`` whose CNN encoder has ``keypoints`` (its
``config.json`` and Lightning ``last.ckpt``, loaded with ``weights_only=True``). It keeps the
trained CNN and its keypoint maps, frozen (BatchNorm in evaluation mode), builds the rest of the
model afresh from the same config (the projection after the keypoints, the question encoder, the
fusion and the head), and trains only that on the Sort-of-CLEVR training split: AdamW, a linear
warm-up over 200 steps then a constant rate, whole images a batch as ``mmfuse run`` makes them.
Every ``--every`` steps it prints the test split's accuracy per question type.

``--tokens`` says what each keypoint carries besides its (x, y) (which stays as trained):

- ``cnn``: its map's expected CNN features, as the run computed them;
- ``standardised``: the same, each feature standardised with its mean and spread over the
  keypoints of the first 500 training images;
- ``oracle_shape``: the CNN features with their last two replaced by the one-hot shape of the
  object whose centre is nearest the keypoint (from the generator's region rows);
- ``oracle``: only the one-hot colour and shape of that nearest object (zeros elsewhere).

The oracles use what a from-pixels model is not given: they say how far the fusion gets once the
keypoints carry an object's attributes cleanly, so that a failure can be put on the positions or
on the features.

    python benchmarks/frozen_keypoints.py runs/s10_joint_w1/lxmert --tokens cnn standardised oracle_shape
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from mmfuse.data import sort_of_clevr as soc
from mmfuse.models.encoders import CNNEncoder, Encoded, fourier_extend
from mmfuse.models.task import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixel_keypoints import IMAGES_PER_BATCH, load_entry, make_batch, region_centres, split_tensors  # noqa: E402

TOKENS = ("cnn", "standardised", "oracle_shape", "oracle")
WARMUP_STEPS = 200


class FrozenKeypoints(nn.Module):
    """The trained CNN's keypoints, frozen, with their features chosen by ``tokens``, then the
    fresh encoder's Fourier coordinates and projection. ``regions`` (the batch's distinct images'
    region rows) must be set before each call for the oracles."""

    extra_inputs: dict[str, str] = {}  # what the task model asks of an encoder: no extra batch keys

    def __init__(self, trained: CNNEncoder, fresh: CNNEncoder, tokens: str, stats: tuple[Tensor, Tensor] | None):
        super().__init__()
        self.cnn, self.fresh, self.tokens, self.stats = trained.eval(), fresh, tokens, stats
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        self.regions: Tensor | None = None

    def train(self, mode: bool = True) -> "FrozenKeypoints":
        super().train(mode)
        self.cnn.eval()  # frozen: running statistics, always
        return self

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Encoded:
        f = keypoints(self.cnn, x)  # [B, K, C + 2]
        feats, xy = f[..., :-2], f[..., -2:]
        if self.tokens == "standardised":
            mean, std = self.stats
            feats = (feats - mean) / std
        elif self.tokens.startswith("oracle"):
            onehots = nearest_attributes(xy, self.regions)  # [B, K, 8]: colour (6), shape (2)
            if self.tokens == "oracle_shape":
                feats = torch.cat([feats[..., :-2], onehots[..., 6:8]], dim=-1)
            else:
                feats = torch.cat([onehots, feats.new_zeros(*feats.shape[:2], feats.shape[-1] - 8)], dim=-1)
        f = fourier_extend(torch.cat([feats, xy], dim=-1), self.fresh.xy_index, self.fresh.fourier_omegas)
        seq = self.fresh.proj(f)
        return Encoded(seq, torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device), seq.mean(1))


def keypoints(cnn: CNNEncoder, x: Tensor) -> Tensor:
    """The keypoints' expected CNN features and (x, y): Tensor[B, K, C + 2]."""
    g = cnn.convs(x)
    return cnn.keypoint_maps(g, x.shape[2:]) @ cnn.cells(g, x.shape[2:])


def nearest_attributes(xy: Tensor, regions: Tensor) -> Tensor:
    """Keypoints' (x, y) Tensor[B, K, 2] in (-1, 1) and region rows Tensor[B, R, 10] -> the colour
    and shape one-hots (columns 0-7) of the region whose centre is nearest each keypoint."""
    nearest = (xy[:, :, None] - region_centres(regions)[:, None]).norm(dim=-1).argmin(-1)  # [B, K]
    return torch.gather(regions[..., :8], 1, nearest[..., None].expand(-1, -1, 8))


def accuracy_by_type(model: nn.Module, frozen: FrozenKeypoints, split: dict[str, Tensor]) -> list[float]:
    """Test accuracy (%) for each of the six question types."""
    model.eval()
    right, types = [], []
    with torch.no_grad():
        for start in range(0, len(split["images"]), IMAGES_PER_BATCH):
            rows = torch.arange(start, min(start + IMAGES_PER_BATCH, len(split["images"])))
            batch, answer, qtype = make_batch(split, rows)
            frozen.regions = split["regions"][rows]
            right.append(model(batch).logits.argmax(-1) == answer)
            types.append(qtype)
    model.train()
    right_all, types_all = torch.cat(right), torch.cat(types)
    return [100 * right_all[types_all == t].float().mean().item() for t in range(len(soc.QTYPE_NAMES))]


def run(folder: Path, tokens: str, steps: int, lr: float, every: int, seed: int) -> list[float]:
    trained, config = load_entry(folder)
    cnn = trained.encoders["v"]
    if not isinstance(cnn, CNNEncoder) or cnn.keypoints is None or cnn.glimpse_encoder is not None:
        raise SystemExit(f"{folder}: expected a cnn encoder with keypoints and no glimpse")
    channels = cnn.keypoint_logits.in_channels
    if tokens == "oracle" and channels < 8:
        raise SystemExit(f"{folder}: the oracle tokens need 8 channels for their one-hots, the cnn has {channels}")
    data = config["data"]
    root = data["path"] or soc.make_sort_of_clevr(seed=data["seed"], **{k: data[k] for k in (
        "n_train", "n_test", "n_nonrel", "n_rel", "n_distractors", "region_noise")})
    splits = soc.load_sort_of_clevr(root).splits
    train, test = split_tensors(splits["train"]), split_tensors(splits["test"])
    stats = None
    if tokens == "standardised":
        with torch.no_grad():
            feats = keypoints(cnn.eval(), train["images"][:500])[..., :-2].flatten(0, 1)
        stats = (feats.mean(0), feats.std(0) + 1e-3)
    torch.manual_seed(seed)
    model = build_model(config["model"])
    frozen = FrozenKeypoints(cnn, model.encoders["v"], tokens, stats)
    model.encoders["v"] = frozen
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP_STEPS))
    model.train()
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    acc: list[float] = []
    for step in range(1, steps + 1):
        rows = torch.randint(0, len(train["images"]), (IMAGES_PER_BATCH,), generator=gen)
        batch, answer, _ = make_batch(train, rows)
        frozen.regions = train["regions"][rows]
        loss = nn.functional.cross_entropy(model(batch).logits, answer)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % every == 0 or step == steps:
            acc = accuracy_by_type(model, frozen, test)
            print(f"{tokens:>13} step {step:5d}: " + " ".join(f"{n} {a:5.1f}" for n, a in zip(soc.QTYPE_NAMES, acc))
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    return acc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("entry", type=Path, help="an entry folder of `mmfuse run --pixels` with cnn keypoints")
    p.add_argument("--tokens", nargs="+", choices=TOKENS, default=["cnn"], help="what the keypoints carry")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=500, help="test every this many steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    final = {t: run(args.entry, t, args.steps, args.lr, args.every, args.seed) for t in args.tokens}
    print(f"\ntest accuracy (%) after {args.steps} steps:")
    print("| tokens | " + " | ".join(soc.QTYPE_NAMES) + " |")
    print("|---|" + "---|" * len(soc.QTYPE_NAMES))
    for t, acc in final.items():
        print(f"| {t} | " + " | ".join(f"{a:.1f}" for a in acc) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

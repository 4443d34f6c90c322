"""Is Sort-of-CLEVR learnable from pixels with mmfuse's CNN? The relation-network paper's CNN+MLP probe.

Santoro et al. 2017's baseline: the four-layer CNN (``mmfuse.models.encoders.CNNEncoder``, 24
filters, a 5 x 5 grid of cells with their coordinates), the cells flattened, the 11-bit question
code appended, a 256-256 MLP over the answers; Adam. Each step takes ``--images`` images and all of
their questions, so the CNN runs once per image. Prints test accuracy (non-relational,
relational) after every epoch. Outside the task-model stack on purpose: it checks the data and the
encoder on their own, so a from-pixels model that stays at the answer prior can be told apart
from a data or encoder fault.

    python benchmarks/pixels_probe.py                     # 15 epochs, lr 1e-3, 4 images a step
    python benchmarks/pixels_probe.py --pool mean         # cells averaged: position is lost
    python benchmarks/pixels_probe.py --fusion dan        # an attention fusion over the cells instead

With ``--fusion NAME`` the cells (projected to 64) are the regions of a registered attention
fusion and the question code (through Linear + ReLU to 64) its question vector; the fused vector
(128) goes through a 128-unit MLP: the same data, CNN and training loop, so a gap to the CNN+MLP
is the fusion's.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import mmfuse
from mmfuse.data import sort_of_clevr as soc
from mmfuse.models.encoders import CNNEncoder


def _split(arrays):
    images = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float().div_(255.0)  # [N, 3, 75, 75]
    return (images, torch.from_numpy(arrays["question_bits"]).float(),  # [N, Q, 11]
            torch.from_numpy(arrays["answer"]).long(), torch.from_numpy(arrays["relational"]))  # [N, Q]


class Probe(nn.Module):
    def __init__(self, n_answers: int, pool: str, image_size: int = 75, fusion: str | None = None, layers: int = 4):
        super().__init__()
        self.fusion = None
        if fusion is not None:  # an attention fusion over the cells
            self.cnn = CNNEncoder(num_layers=layers, dim=64)
            self.question = nn.Sequential(nn.Linear(soc.QUESTION_BITS, 64), nn.ReLU())
            self.fusion = mmfuse.create_fusion(fusion, v_dim=64, q_dim=64, out_dim=128)
            self.mlp = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, n_answers))
            return
        self.cnn, self.pool = CNNEncoder(num_layers=layers, dim=None), pool
        cells = CNNEncoder.grid_size(image_size, layers) ** 2
        d = self.cnn.out_dim * (cells if pool == "flatten" else 1)
        self.mlp = nn.Sequential(nn.Linear(d + soc.QUESTION_BITS, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, n_answers))

    def forward(self, images, bits):
        """images [n, 3, H, W], bits [n, Q, 11] -> logits [n * Q, answers]."""
        cells = self.cnn(images).seq  # [n, cells, C + 2]
        if self.fusion is not None:  # each question attends over its own image's cells
            q = bits.shape[1]
            regions = cells[:, None].expand(-1, q, -1, -1).flatten(0, 1)  # [n * Q, cells, 64]
            return self.mlp(self.fusion(regions, self.question(bits.flatten(0, 1))).fused)
        v = cells.flatten(1) if self.pool == "flatten" else cells.mean(1)
        v = v[:, None].expand(-1, bits.shape[1], -1)  # every question of the image
        return self.mlp(torch.cat([v, bits], -1)).flatten(0, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--images", type=int, default=4, help="images a step (x 20 questions)")
    p.add_argument("--pool", choices=("flatten", "mean"), default="flatten")
    p.add_argument("--layers", type=int, default=4, help="conv layers (stride 2 each): 4 -> 5 x 5 cells, 3 -> 10 x 10")
    p.add_argument("--fusion", help="an attention fusion over the cells instead of the MLP (e.g. dan)")
    p.add_argument("--n-train", type=int, default=9800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.fusion is not None and mmfuse.fusion_info(args.fusion).kind != "attention":
        p.error(f"--fusion: expected an attention fusion, got {args.fusion!r} "
                f"(known: {', '.join(mmfuse.list_fusions(kind='attention'))})")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    data = soc.load_sort_of_clevr(soc.make_sort_of_clevr(seed=args.seed, n_train=args.n_train))
    images, bits, answers, _ = _split(data.splits["train"])
    t_images, t_bits, t_answers, t_rel = _split(data.splits["test"])
    model = Probe(len(data.answer_vocab), args.pool, fusion=args.fusion, layers=args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    what = f"{args.fusion} over the cells" if args.fusion else f"{args.pool} cells + 11-bit question -> MLP"
    print(f"# pixels probe: {what}; {len(images)} images, lr {args.lr}, "
          f"{args.images} images a step, {args.layers} conv layers")
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(images))
        for s in range(0, len(order) - args.images + 1, args.images):
            rows = order[s : s + args.images]
            loss = F.cross_entropy(model(images[rows], bits[rows]), answers[rows].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            right = (model(t_images, t_bits).argmax(-1) == t_answers.flatten()).float()
        rel = t_rel.flatten()
        print(f"epoch {epoch + 1}: test non-relational {100 * right[~rel].mean():.1f}%, relational "
              f"{100 * right[rel].mean():.1f}% ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a Sort-of-CLEVR model misses "closest" / "furthest": accuracy against the distance gap.

For every test question of those two types, the gap is how much farther the second-nearest
object is than the nearest ("closest"), or how much nearer the second-farthest is than the
farthest ("furthest"), in pixels, measured from the region rows' (x, y) columns. A model whose
errors sit in the first bucket lacks precision; errors at gaps of several pixels are a coarse
distance comparison. It also prints the median distance to the answer object and the median gap
in squared distance, which is what a score bilinear in two positions compares.

    python benchmarks/relational_gaps.py RUN/dan/model          # a model folder of mmfuse run / train

For an attention model it also prints where the last hop (or glimpse, averaged) looks on those
questions: its mean weight on the object the question names, on the answer object (the nearest /
farthest other object), how often its largest weight is on the answer object, and the accuracy
when it is and when it is not.

The model must read Sort-of-CLEVR region features and question tokens (the main job's models).
"""

from __future__ import annotations

import argparse
import sys

import torch

import mmfuse
from mmfuse.data.sort_of_clevr import COLOUR_NAMES, IMAGE_SIZE, QTYPE_NAMES
from mmfuse.train import build_datamodule, validate_config
from mmfuse.train.checkpoint import read_config

BUCKETS = ((0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, float("inf")))
CLOSEST, FURTHEST = QTYPE_NAMES.index("closest"), QTYPE_NAMES.index("furthest")


def _distances(regions: torch.Tensor, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(own [B, 6] bool: the named object's row, d [B, 6]: pixel distance to it, NaN on its row)``."""
    xy = regions[..., 8:10] * (IMAGE_SIZE - 1)  # [B, 6, 2] pixels
    own = regions[..., :6].argmax(-1) == colour[:, None]  # [B, 6] the named object's row
    ref = (xy * own[..., None]).sum(1, keepdim=True)  # [B, 1, 2]
    return own, ((xy - ref) ** 2).sum(-1).sqrt().masked_fill(own, float("nan"))


def sorted_others(regions: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Per row: the pixel distances from the named object to the 5 others, ascending: Tensor[B, 5]."""
    return _distances(regions, colour)[1].sort(-1).values[:, :-1]  # its own row (NaN) sorts last


def gaps_of(others: torch.Tensor, qtype: torch.Tensor, power: int = 1) -> torch.Tensor:
    """:func:`gaps` from :func:`sorted_others`' distances."""
    others = others ** power
    near = others[:, 1] - others[:, 0]
    far = others[:, -1] - others[:, -2]
    return torch.where(qtype == CLOSEST, near, far)


def gaps(regions: torch.Tensor, colour: torch.Tensor, qtype: torch.Tensor, power: int = 1) -> torch.Tensor:
    """Per row: the gap between the answer object's distance and the runner-up's, in pixels, or
    (``power=2``) in squared pixels, the scale a bilinear score of two positions compares on.

    ``regions`` [B, 6, 10] (colour one-hot in columns 0-5, x and y in [0, 1] in 8-9), ``colour``
    [B] the question's colour id, ``qtype`` [B] (closest or furthest) -> Tensor[B].
    """
    return gaps_of(sorted_others(regions, colour), qtype, power)


def answer_distance_of(others: torch.Tensor, qtype: torch.Tensor) -> torch.Tensor:
    """:func:`answer_distance` from :func:`sorted_others`' distances."""
    return torch.where(qtype == CLOSEST, others[:, 0], others[:, -1])


def answer_distance(regions: torch.Tensor, colour: torch.Tensor, qtype: torch.Tensor) -> torch.Tensor:
    """Per row: the pixel distance from the named object to the answer object (nearest / farthest)."""
    return answer_distance_of(sorted_others(regions, colour), qtype)


def attention_on(attn: torch.Tensor, regions: torch.Tensor, colour: torch.Tensor,
                 qtype: torch.Tensor) -> torch.Tensor:
    """Where a region attention map looks, per row: Tensor[B, 3] of (weight on the named object,
    weight on the answer object, 1.0 where the largest weight is on the answer object).

    ``attn`` [B, 6] (rows sum to 1), the rest as in :func:`gaps`; the answer object is the
    nearest other object for "closest" and the farthest for "furthest" (ties: the first row).
    """
    own, d = _distances(regions, colour)
    target = torch.where(qtype == CLOSEST, d.nan_to_num(float("inf")).argmin(-1), d.nan_to_num(-1.0).argmax(-1))
    on_own = (attn * own).sum(-1)
    on_target = attn.gather(1, target[:, None]).squeeze(1)
    return torch.stack([on_own, on_target, (attn.argmax(-1) == target).to(attn.dtype)], dim=1)


def _last_map(out) -> torch.Tensor | None:
    """The last hop's region map [B, K] of a model output (glimpses averaged), None without attention."""
    a = getattr(out, "attention", None)
    if a is None:
        return None
    hops = a.extras.get("v_attn_hops") if a.extras else None
    if hops is not None:
        return hops[:, -1]
    return None if a.v_attn is None else a.v_attn.mean(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model folder (mmfuse run / mmfuse train output)")
    args = p.parse_args(argv)
    model = mmfuse.load(args.model).eval()
    cfg = validate_config(read_config(args.model))
    if cfg["data"]["name"] != "sort-of-clevr" or cfg["data"].get("representation") != "regions" \
            or cfg["data"].get("question") != "tokens":
        p.error(f"expected a model on Sort-of-CLEVR regions + question tokens, got data {cfg['data']['name']!r} "
                f"({cfg['data'].get('representation')}, {cfg['data'].get('question')})")
    dm = build_datamodule(cfg["data"])
    dm.setup("test")
    words = dm.info["word_vocab"]
    colour_ids = torch.tensor([words.index(c) for c in COLOUR_NAMES])
    all_gaps, all_sq, all_dist, all_right, all_types, all_looks = [], [], [], [], [], []
    with torch.no_grad():
        for b in dm.test_dataloader():
            keep = (b["qtype"] == CLOSEST) | (b["qtype"] == FURTHEST)
            if not keep.any():
                continue
            out = model(b)
            right = out.logits.argmax(-1) == b["answer"]
            colour = (b["question_tokens"][:, :, None] == colour_ids).any(1).float().argmax(-1)  # [B]
            others = sorted_others(b["regions"], colour)  # one distance sort serves all three
            all_gaps.append(gaps_of(others, b["qtype"])[keep])
            all_sq.append(gaps_of(others, b["qtype"], power=2)[keep])
            all_dist.append(answer_distance_of(others, b["qtype"])[keep])
            all_right.append(right[keep])
            all_types.append(b["qtype"][keep])
            attn = _last_map(out)
            if attn is not None and attn.shape[-1] == b["regions"].shape[1]:
                all_looks.append(attention_on(attn, b["regions"], colour, b["qtype"])[keep])
    g, r, t = torch.cat(all_gaps), torch.cat(all_right), torch.cat(all_types)
    print("| question | gap (px) | questions | accuracy (%) |")
    print("|---|---|---|---|")
    for qt in (CLOSEST, FURTHEST):
        name = QTYPE_NAMES[qt]
        m = t == qt
        print(f"| {name} | all | {int(m.sum())} | {100 * r[m].float().mean():.1f} |")
        for lo, hi in BUCKETS:
            b = m & (g >= lo) & (g < hi)
            label = f">= {lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}"
            acc = f"{100 * r[b].float().mean():.1f}" if b.any() else "-"
            print(f"| {name} | {label} | {int(b.sum())} | {acc} |")
    sq, dist = torch.cat(all_sq), torch.cat(all_dist)
    print("\nThe scale of the comparison (medians): a score bilinear in two positions is linear in the squared")
    print("distance, whose gap for the same pixel gap grows with the distance (2d + gap):\n")
    print("| question | distance to the answer (px) | gap (px) | gap in squared distance (px^2) |")
    print("|---|---|---|---|")
    for qt in (CLOSEST, FURTHEST):
        m = t == qt
        print(f"| {QTYPE_NAMES[qt]} | {dist[m].median():.1f} | {g[m].median():.1f} | {sq[m].median():.0f} |")
    if all_looks:
        looks = torch.cat(all_looks)
        print("\nWhere the last attention hop looks (mean weights; 'argmax' = its largest weight is on the answer object):\n")
        print("| question | on the named object | on the answer object | argmax on answer (%) "
              "| accuracy, argmax on answer (%) | accuracy, elsewhere (%) |")
        print("|---|---|---|---|---|---|")
        for qt in (CLOSEST, FURTHEST):
            m = t == qt
            lk, rt = looks[m], r[m].float()
            hit = lk[:, 2] == 1
            acc_hit = f"{100 * rt[hit].mean():.1f}" if hit.any() else "-"
            acc_miss = f"{100 * rt[~hit].mean():.1f}" if (~hit).any() else "-"
            print(f"| {QTYPE_NAMES[qt]} | {lk[:, 0].mean():.3f} | {lk[:, 1].mean():.3f} | {100 * lk[:, 2].mean():.1f} "
                  f"| {acc_hit} | {acc_miss} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Attention galleries: a saved model's attention on a few Sort-of-CLEVR questions, one PNG each.

    from mmfuse.viz.gallery import attention_gallery, gallery_data
    attention_gallery("runs/soc_dan/model", "runs/soc_dan/viz", n=6)   # 6 PNGs + index.md
    items = gallery_data("runs/soc_dan/model", n=6)                      # the same data, unplotted

Each PNG shows the scene once per attention map the method has (small multiples side by side:
DAN's hop 1 and hop 2, SAN's hops, BAN's / MFB's glimpses, LXMERT's layers), every real object
ringed with its weight (ring darkness and width follow the weight on a fixed 0..1 scale, so a
spread-out map looks pale and a focused one dark; the largest weight is in bold), or a heat map
over the CNN cells for a pixel model (relative to the top cell, never darker than weight / 0.25;
each cell drawn over the pixels it is centred on), or its keypoints ringed where they are;
the question's words, each with its weight and shaded by it (darkest at :data:`WORD_FULL`), under
the panel whose map they belong to (for methods with word attention); and a title with the
question, the predicted answer with its probability and the true answer (green when right, red
when wrong).

Which maps are drawn (:func:`attention_panels`), from ``AttentionOutput(fused, v_attn, q_attn,
extras)``:

- ``extras["v_attn_hops"]`` ``[B, S, K]`` (and ``extras["q_attn_hops"]`` ``[B, S, T]``) when
  present (DAN): one panel per hop;
- else ``v_attn`` ``[B, G, K]``: one panel per hop (``G == fusion.hops``: SAN, DMN, ...), per
  glimpse (``G == fusion.glimpses``) or per map;
- else (LXMERT: no region map) ``extras["q2v_attn"]`` ``[B, L, T, K]`` averaged over the valid
  words: one panel per layer, words attending to regions;
- words: ``q_attn`` ``[B, G, T]`` labelled the same way (none where the method has no word map,
  e.g. SAN on a bag-of-words vector: the words are then shown unshaded).

A vector fusion has no maps: :func:`gallery_data` raises ``ValueError`` saying so before it
reads any data, and nothing is written.
"""
from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attention._base import AttentionOutput
from ..models.encoders import CNNEncoder
from .attention import cell_extent, cell_geometry, cnn_layout

__all__ = [
    "GalleryItem",
    "attention_gallery",
    "attention_panels",
    "gallery_data",
    "render_item",
    "select_questions",
]

# the question types in the order per-type selection takes them: non-relational and relational
# alternate, so even n = 2 shows one of each
_TYPE_ORDER = (0, 3, 1, 4, 2, 5)


@dataclass
class GalleryItem:
    """One question of the gallery, with everything the plot draws.

    Attributes:
        index: the question's index in the split's dataset (``image * Q + question``).
        image_index: the scene's row in the split's arrays.
        qtype / qtype_name / relational: the question type.
        question: the question's words joined by spaces; ``words``: the words (``T`` of them).
        image: uint8 [H, W, 3], the scene.
        answer / predicted: true and predicted answer strings; ``probability`` of the prediction.
        region_maps: float [P, K], the region attention of each panel (rows sum to 1 over the
            valid regions for softmax attention); ``region_labels``: P panel titles.
        region_valid: bool [K], the region mask the model saw.
        region_centres: float [K, 2] pixel (x, y) of each region's object (NaN for a distractor
            row) or of each CNN keypoint, or None for grid cells; ``grid``: (rows, cols) of the
            cells, or None; ``cell_size``: pixels between the cells' centres (cell (r, c) is
            centred on pixel (c, r) times it), or 0 for cells spread evenly over the image.
        word_maps: float [Pw, T] or None (no word attention); ``word_labels``: Pw titles.
        source: where the maps came from, e.g. ``extras["v_attn_hops"]``.
    """

    index: int
    image_index: int
    qtype: int
    qtype_name: str
    relational: bool
    question: str
    words: list[str]
    image: np.ndarray
    answer: str
    predicted: str
    probability: float
    region_maps: np.ndarray
    region_labels: list[str]
    region_valid: np.ndarray
    region_centres: np.ndarray | None
    grid: tuple[int, int] | None
    word_maps: np.ndarray | None
    word_labels: list[str]
    source: str
    cell_size: float = 0.0

    @property
    def correct(self) -> bool:
        return self.predicted == self.answer


# --------------------------------------------------------------------------- which maps


def _labels(count: int, fusion: Any) -> list[str]:
    """Panel titles for ``count`` maps of ``fusion``: hops, glimpses, or plain numbers."""
    if count == 1:
        return ["attention"]
    for attr, word in (("hops", "hop"), ("glimpses", "glimpse")):
        if getattr(fusion, attr, None) == count:
            return [f"{word} {i + 1}" for i in range(count)]
    return [f"map {i + 1}" for i in range(count)]


def attention_panels(
    att: AttentionOutput, fusion: Any, q_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, list[str], torch.Tensor | None, list[str], str]:
    """The maps a gallery panel draws, chosen as in the module docstring.

    Args:
        att: an attention fusion's output.
        fusion: the fusion module (its ``hops`` / ``glimpses`` name the panels).
        q_mask: Tensor[B, T] bool, the word mask (averaging LXMERT's word-to-region maps).

    Returns:
        ``(region [B, P, K] or None, region labels, words [B, Pw, T] or None, word labels,
        source)``.
    """
    region: torch.Tensor | None = None
    words: torch.Tensor | None = None
    if "v_attn_hops" in att.extras:
        region, source = att.extras["v_attn_hops"], 'extras["v_attn_hops"]'
        r_labels = [f"hop {i + 1}" for i in range(region.shape[1])]
        if att.extras.get("q_attn_hops") is not None:
            words = att.extras["q_attn_hops"]
            w_labels = [f"hop {i + 1}" for i in range(words.shape[1])]
    elif att.v_attn is not None:
        region, source = att.v_attn, "v_attn"
        r_labels = _labels(region.shape[1], fusion)
    elif att.extras.get("q2v_attn") is not None:
        q2v = att.extras["q2v_attn"].float()  # [B, L, T, K]
        w = torch.ones(q2v.shape[:3][::2], dtype=q2v.dtype) if q_mask is None else q_mask.to(q2v.dtype)  # [B, T]
        region = (q2v * w[:, None, :, None]).sum(2) / w.sum(1).clamp_min(1.0)[:, None, None]  # [B, L, K]
        source = 'extras["q2v_attn"] (mean over words)'
        r_labels = [f"layer {i + 1}: words → regions" for i in range(region.shape[1])]
    else:
        source, r_labels = "none", []
    if words is None and att.q_attn is not None:
        words = att.q_attn
        w_labels = _labels(words.shape[1], fusion)
    if words is None:
        w_labels = []
    return region, r_labels, words, w_labels, source


# --------------------------------------------------------------------------- selection


def select_questions(qtypes: np.ndarray, n: int, seed: int = 0, per_type: bool = True) -> list[int]:
    """Indices (``image * Q + question``) of ``n`` questions of a split.

    Args:
        qtypes: int [N, Q], the question type of every question.
        n: how many.
        seed: the draw (``np.random.default_rng(seed)``).
        per_type: take the types in turn (shape, closest, left, furthest, top, count, then
            again), one random question of each, so relational and non-relational questions are
            both shown; otherwise ``n`` random questions.

    Returns:
        ``min(n, N*Q)`` distinct indices, in the order they are drawn.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"viz: n must be an int >= 1, got {n!r}")
    flat = np.asarray(qtypes).reshape(-1)
    rng = np.random.default_rng(seed)
    if not per_type:
        return [int(i) for i in rng.permutation(flat.size)[: min(n, flat.size)]]
    present = [t for t in _TYPE_ORDER if (flat == t).any()] + sorted(set(np.unique(flat).tolist()) - set(_TYPE_ORDER))
    pools = {t: list(rng.permutation(np.flatnonzero(flat == t))) for t in present}
    picked: list[int] = []
    while len(picked) < min(n, flat.size):
        for t in present:
            if pools[t] and len(picked) < n:
                picked.append(int(pools[t].pop(0)))
    return picked


# --------------------------------------------------------------------------- data


def _check_attention_model(folder: Path, config: dict[str, Any]) -> None:
    from .. import fusion_info

    name = config["model"]["fusion"]["name"]
    if fusion_info(name).kind != "attention":
        raise ValueError(
            f"viz: {folder} uses the vector fusion {name!r}, which has no attention maps to draw "
            "(it fuses one vector per modality); train an attention fusion to see where a model "
            "looks (mmfuse list --kind attention)"
        )


def _load_split(folder: Path, split: str) -> tuple[Any, dict[str, Any]]:
    """The model's data (its saved config) and the ``split`` dataset of its Sort-of-CLEVR."""
    from ..train.checkpoint import read_config, read_info
    from ..train.config import load_config
    from ..train.data import build_datamodule

    config = load_config(read_config(folder))
    if config["data"]["name"] != "sort-of-clevr":
        raise ValueError(f"viz: {folder} was trained on {config['data']['name']!r}; the gallery draws Sort-of-CLEVR scenes only")
    if split not in ("train", "val", "test"):
        raise ValueError(f"viz: split must be 'train', 'val' or 'test', got {split!r}")
    saved = read_info(folder)
    vocab = saved if saved.get("answer_vocab") is not None and saved.get("word_vocab") is not None else None
    dm = build_datamodule(config["data"], shuffle_seed=config["train"]["seed"], vocab=vocab)
    dm.setup()
    dataset = dm.datasets[split]
    if len(dataset) == 0:
        raise ValueError(f"viz: the {split!r} split of {folder}'s data is empty")
    return dataset, dm.info


@torch.no_grad()
def gallery_data(
    model_dir: str | os.PathLike[str],
    n: int = 6,
    split: str = "test",
    seed: int = 0,
    per_type: bool = True,
) -> list[GalleryItem]:
    """Run the saved model on ``n`` questions of ``split`` and collect what the gallery draws.

    Each question is its own batch of one (its tokens trimmed to its length, so the word maps
    have exactly one weight per word), built by the model's own data module from the data its
    ``config.json`` names.

    Raises:
        ValueError: not a model folder (the message names the path); a vector fusion; a model
            not trained on Sort-of-CLEVR; an unknown split; ``n < 1``.
    """
    from ..train.checkpoint import load, model_folder, read_config

    folder = model_folder(model_dir)
    _check_attention_model(folder, read_config(folder))
    dataset, info = _load_split(folder, split)
    model = load(folder).eval()
    arrays, images = dataset.a, dataset.images
    q_per_image = int(arrays["qtype"].shape[1])
    answers = list(info["answer_vocab"])
    words_vocab = list(info["word_vocab"])
    type_names = list(info["qtype_names"])
    v_name, v_input = next(iter(model.config["inputs"].items()))
    cnn = model.encoders[v_name] if isinstance(model.encoders[v_name], CNNEncoder) else None
    items = []
    for index in select_questions(arrays["qtype"][images], n, seed, per_type):
        batch = dataset.__getitems__([index])
        out = model(batch)
        att = out.attention
        img_row, q = int(images[index // q_per_image]), index % q_per_image
        probs = torch.softmax(out.logits.float(), dim=-1)[0]
        best = int(probs.argmax())
        length = int(arrays["question_len"][img_row, q])
        words = [words_vocab[int(t)] for t in arrays["question_tokens"][img_row, q, :length]]
        region, r_labels, word_maps, w_labels, source = attention_panels(att, model.fusion, batch.get("question_mask"))
        if region is None:
            raise ValueError(f"viz: the fusion {model.config['fusion']['name']!r} returned no region map to draw")
        k = region.shape[-1]
        valid = batch["region_mask"][0].numpy() if "region_mask" in batch else np.ones(k, dtype=bool)
        centres, grid, cell_size = None, None, 0.0
        if cnn is not None:  # keypoints where they are, or cells over the pixels they see
            layout = cnn_layout(cnn, batch[v_input["key"]])
            centres, grid, cell_size = layout.get("region_centres"), layout.get("grid"), layout.get("cell_size", 0.0)
        elif v_input["key"] == "image":  # another image encoder's cells: spread over the image
            side = int(round(k**0.5))
            grid = (side, side) if side * side == k else (1, k)
        else:
            owner = arrays["region_object"][img_row].astype(np.int64)  # [R], -1 = distractor
            centres = np.full((k, 2), np.nan)
            real = owner >= 0
            centres[real] = arrays["object_xy"][img_row][owner[real]]
        if word_maps is not None and word_maps.shape[-1] != len(words):  # a question vector: no per-word map
            word_maps, w_labels = None, []
        qtype = int(arrays["qtype"][img_row, q])
        items.append(GalleryItem(
            index=int(index), image_index=img_row, qtype=qtype, qtype_name=type_names[qtype],
            relational=qtype in info.get("relational_qtypes", (3, 4, 5)), question=" ".join(words), words=words,
            image=np.asarray(arrays["images"][img_row]), answer=answers[int(arrays["answer"][img_row, q])],
            predicted=answers[best], probability=float(probs[best]),
            region_maps=region[0].float().numpy(), region_labels=r_labels, region_valid=valid,
            region_centres=centres, grid=grid, cell_size=cell_size,
            word_maps=None if word_maps is None else word_maps[0].float().numpy(), word_labels=w_labels,
            source=source,
        ))
    return items


# --------------------------------------------------------------------------- drawing

_RIGHT, _WRONG = "#1a7f37", "#cf222e"
WORD_FULL = 0.5  # a word of this weight or more gets the darkest shade


def _draw_regions(ax: Any, item: GalleryItem, weights: np.ndarray) -> None:
    import matplotlib.pyplot as plt

    h, w = item.image.shape[:2]
    ax.imshow(item.image, interpolation="nearest")
    if item.grid is not None:
        # cells: shaded relative to the top cell, but never above weight / 0.25, so a uniform map
        # over 25 cells (0.04 each) stays pale; unattended cells stay clear
        scale = max(float(weights.max()), 0.25)
        heat = np.clip(weights.reshape(item.grid) / scale, 0.0, 1.0)
        rgba = plt.cm.YlOrRd(heat)
        rgba[..., 3] = 0.8 * heat
        rows, cols = item.grid
        x0, y0, sx, sy = cell_geometry(item.grid, item.cell_size, h, w)  # cell (r, c) on pixel (x0 + c sx, y0 + r sy)
        ax.imshow(rgba, interpolation="nearest", extent=cell_extent(item.grid, item.cell_size, h, w))
        for r in range(1, rows):
            ax.axhline(y0 + (r - 0.5) * sy, color="#999999", lw=0.4)
        for c in range(1, cols):
            ax.axvline(x0 + (c - 0.5) * sx, color="#999999", lw=0.4)
        r, c = np.unravel_index(int(np.argmax(weights)), item.grid)
        ax.text(min(x0 + c * sx, w - 6.0), min(y0 + r * sy, h - 4.0), f"{weights.max():.2f}", fontsize=8,
                ha="center", va="center", color="#a50f15", fontweight="bold",
                bbox={"facecolor": "white", "alpha": 0.85, "pad": 0.8, "lw": 0})
    else:
        best = int(np.argmax(np.where(item.region_valid, weights, -np.inf)))
        for k, ((x, y), a) in enumerate(zip(item.region_centres, weights)):
            if not item.region_valid[k] or np.isnan(x):
                continue
            rel = min(max(float(a), 0.0), 1.0)  # absolute: a spread-out map looks pale, a focused one dark
            ax.add_patch(plt.Circle((x, y), radius=8.0, fill=False, lw=0.8 + 4.0 * rel,
                                    color=plt.cm.Reds(0.2 + 0.8 * rel)))
            ty = y + 11.0 if y < h - 12 else y - 11.0
            tx = min(max(x, 8.0), w - 9.0)  # a keypoint can sit at the border: its label stays inside
            ax.text(tx, ty, f"{a:.2f}", fontsize=8, ha="center", va="center", clip_on=True,
                    color="#a50f15" if k == best else "#333333", fontweight="bold" if k == best else "normal",
                    bbox={"facecolor": "white", "alpha": 0.85, "pad": 0.6, "lw": 0})
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_words(ax: Any, words: Sequence[str], weights: np.ndarray | None, label: str) -> None:
    """Words left to right, wrapped, each on a background shaded by its weight (Blues, full at WORD_FULL)."""
    import matplotlib.pyplot as plt

    ax.set_axis_off()
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    inv = ax.transAxes.inverted()
    y = 1.0
    if label:
        t = ax.text(0.0, y, label, transform=ax.transAxes, fontsize=7.5, va="top", color="#555555")
        y = t.get_window_extent(renderer).transformed(inv).y0 - 0.06
    x, line_height = 0.0, 0.0
    for i, word in enumerate(words):
        a = None if weights is None else float(weights[i])
        shade = None if a is None else min(max(a / WORD_FULL, 0.0), 1.0)
        face = "#eeeeee" if shade is None else plt.cm.Blues(0.04 + 0.8 * shade)
        ink = "white" if shade is not None and shade > 0.6 else "black"
        text = word if a is None else f"{word}\n{a:.2f}"
        t = ax.text(x, y, text, transform=ax.transAxes, fontsize=8.5, va="top", ha="left", color=ink,
                    multialignment="center", linespacing=1.05, bbox={"facecolor": face, "pad": 1.5, "lw": 0})
        bb = t.get_window_extent(renderer).transformed(inv)
        if bb.x1 > 1.0 and x > 0:  # wrap: a new line below the tallest box of this one
            x, y = 0.0, y - line_height - 0.08
            t.set_position((x, y))
            bb = t.get_window_extent(renderer).transformed(inv)
            line_height = 0.0
        line_height = max(line_height, bb.height)
        x = bb.x1 + 0.035


def render_item(item: GalleryItem, path: str | os.PathLike[str]) -> Path:
    """Write one question's PNG (layout in the module docstring) atomically; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(item.region_labels)
    has_words = item.word_maps is not None
    under = has_words and len(item.word_labels) == panels  # each panel's words under it
    spanning = 0 if under else max(len(item.word_labels), 1)  # else full-width word rows
    width = max(3.0 * panels, 5.0)
    kind = "relational" if item.relational else "non-relational"
    question = textwrap.fill(item.question[:1].upper() + item.question[1:] + "?", width=int(width * 11.5))
    extra = 0.2 * question.count("\n")  # inches per extra title line
    header = 0.95 + extra
    heights = [3.0] + ([1.35] if under else [1.1 if has_words else 0.6] * spanning)
    fig = plt.figure(figsize=(width, header + sum(heights) + 0.15))
    fig_h = fig.get_figheight()
    gs = fig.add_gridspec(len(heights), panels, height_ratios=heights, hspace=0.1, wspace=0.06,
                          top=1 - header / fig_h, bottom=0.1 / fig_h, left=0.02, right=0.98)
    for p in range(panels):
        ax = fig.add_subplot(gs[0, p])
        _draw_regions(ax, item, item.region_maps[p])
        ax.set_title(item.region_labels[p], fontsize=10)
        if under:
            _draw_words(fig.add_subplot(gs[1, p]), item.words, item.word_maps[p], "word attention")
    for r in range(spanning):
        wax = fig.add_subplot(gs[1 + r, :])
        if not has_words:
            _draw_words(wax, item.words, None, "question (this method has no word attention)")
        else:
            label = item.word_labels[r]
            _draw_words(wax, item.words, item.word_maps[r], "word attention" + ("" if label == "attention" else f", {label}"))
    fig.text(0.5, 1 - 0.08 / fig_h, question, ha="center", va="top", fontsize=11, fontweight="bold")
    colour = _RIGHT if item.correct else _WRONG
    verdict = "right" if item.correct else "wrong"
    fig.text(0.5, 1 - (0.32 + extra) / fig_h,
             f"predicted: {item.predicted} ({100 * item.probability:.0f}%)   true: {item.answer}   [{verdict}]",
             ha="center", va="top", fontsize=10.5, color=colour, fontweight="bold")
    fig.text(0.5, 1 - (0.58 + extra) / fig_h, f"{item.qtype_name} question ({kind}) · maps: {item.source}",
             ha="center", va="top", fontsize=8.5, color="#555555")
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    os.replace(tmp, out)
    return out


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def attention_gallery(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    n: int = 6,
    split: str = "test",
    seed: int = 0,
    per_type: bool = True,
) -> list[Path]:
    """Write one PNG per question (see :func:`gallery_data`) and ``index.md`` into ``out_dir``.

    Returns:
        The PNG paths, in the order of ``index.md``. Nothing is written when the model has a
        vector fusion (``ValueError``).
    """
    from ..train.checkpoint import model_folder, read_config

    items = gallery_data(model_dir, n=n, split=split, seed=seed, per_type=per_type)
    folder = model_folder(model_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fusion = read_config(folder)["model"]["fusion"]["name"]
    paths, rows = [], []
    for i, item in enumerate(items, 1):
        name = f"{i:02d}_{item.qtype_name}_{split}{item.index}.png"
        paths.append(render_item(item, out / name))
        rows.append(f"| [{name}]({name}) | {item.qtype_name} | {item.question}? | {item.predicted} "
                    f"({100 * item.probability:.0f}%) | {item.answer} | {'yes' if item.correct else 'no'} |")
    right = sum(item.correct for item in items)
    text = "\n".join([
        f"# Attention gallery: {fusion}",
        "",
        f"Model: `{folder}`; {len(items)} {split} questions (seed {seed}, {'one per question type' if per_type else 'random'});"
        f" maps from `{items[0].source}`; {right}/{len(items)} answered right.",
        "",
        "| file | type | question | predicted | true | right |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    _atomic_text(out / "index.md", text)
    return paths

"""Attention overlays: regions (object centres or grid cells) on the image, weights on the words."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_attention"]


def plot_attention(
    image: np.ndarray,
    path: str | os.PathLike[str],
    *,
    region_weights: np.ndarray | None = None,
    region_centres: np.ndarray | None = None,
    grid: tuple[int, int] | None = None,
    words: Sequence[str] = (),
    word_weights: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Save a PNG of ``image`` with its attention.

    Args:
        image: uint8 [H, W, 3].
        region_weights: float [K], one weight per region (summed over glimpses by the caller).
        region_centres: float [K, 2] pixel (x, y) of each region: drawn as discs whose opacity
            follows the weight; or ``grid=(rows, cols)`` for grid features, drawn as a heat map.
        words / word_weights: the question's words and their weights, drawn under the image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.asarray(image)
    h, w = img.shape[:2]
    fig, ax = plt.subplots(figsize=(5.2, 6.0))
    ax.imshow(img, interpolation="nearest")
    if region_weights is not None:
        weights = np.asarray(region_weights, dtype=np.float64)
        top = weights.max() if weights.size and weights.max() > 0 else 1.0
        if grid is not None:
            heat = weights.reshape(grid)
            ax.imshow(heat / top, cmap="magma", alpha=0.55, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                      interpolation="bilinear", vmin=0, vmax=1)
        elif region_centres is not None:
            for (x, y), a in zip(np.asarray(region_centres), weights):
                ax.add_patch(plt.Circle((x, y), radius=9, fill=False, lw=1 + 4 * a / top, color="black",
                                        alpha=0.25 + 0.75 * a / top))
                ax.text(x, min(y + 12, h - 2), f"{a:.2f}", fontsize=8, color="black", ha="center", clip_on=True,
                        bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "lw": 0})
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if words:
        ww = np.zeros(len(words)) if word_weights is None else np.asarray(word_weights, dtype=np.float64)
        top = ww.max() if ww.size and ww.max() > 0 else 1.0
        x, y = 0.0, -0.04
        for word, a in zip(words, ww):
            t = ax.text(x, y, word, transform=ax.transAxes, fontsize=10, va="top",
                        bbox={"facecolor": plt.cm.Oranges(0.15 + 0.8 * a / top), "pad": 1.5, "lw": 0})
            fig.canvas.draw()
            bb = t.get_window_extent().transformed(ax.transAxes.inverted())
            if bb.x1 > 1.0 and x > 0:  # wrap: move the word to a new line
                x, y = 0.0, y - 0.07
                t.set_position((x, y))
                fig.canvas.draw()
                bb = t.get_window_extent().transformed(ax.transAxes.inverted())
            x = bb.x1 + 0.015
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)
    return out

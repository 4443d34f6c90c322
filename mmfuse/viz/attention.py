"""Attention overlays: regions (object centres or grid cells) on the image, weights on the words."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_attention", "cnn_layout", "cell_geometry"]


def cell_geometry(grid: tuple[int, int], cell_size: float | None, h: int, w: int) -> tuple[float, float, float, float]:
    """``(x0, y0, sx, sy)``: cell (r, c) of a ``grid`` of cells over an h × w image is centred on
    pixel (x0 + c·sx, y0 + r·sy) and spans sx × sy pixels. With a ``cell_size`` (a CNN's cells,
    :func:`cnn_layout`) the cells sit that many pixels apart from pixel 0; without one (None or
    0) they are spread evenly over the image."""
    if cell_size:
        return 0.0, 0.0, float(cell_size), float(cell_size)
    rows, cols = grid
    sx, sy = w / cols, h / rows
    return sx / 2 - 0.5, sy / 2 - 0.5, sx, sy


def cell_extent(grid: tuple[int, int], cell_size: float | None, h: int, w: int) -> tuple[float, float, float, float]:
    """The ``imshow`` extent (left, right, bottom, top) of a heat map over the cells (:func:`cell_geometry`)."""
    x0, y0, sx, sy = cell_geometry(grid, cell_size, h, w)
    rows, cols = grid
    return x0 - sx / 2, x0 + (cols - 0.5) * sx, y0 + (rows - 0.5) * sy, y0 - sy / 2


def cnn_layout(cnn: Any, image: Any) -> dict[str, Any]:
    """Where a CNN encoder's regions are in ``image`` (Tensor[1, C, H, W]), as
    :func:`plot_attention`'s keywords: its keypoints' pixel (x, y) (``region_centres``), or its
    cells' ``grid`` and ``cell_size`` (pixels between their centres: cell (r, c) looks at the
    pixels around (c, r) times it, :func:`mmfuse.models.encoders.receptive_field_centres`)."""
    import torch

    with torch.no_grad():
        if cnn.keypoints is not None:
            xy = cnn.keypoint_positions(image)[0].double().numpy()  # [K, 2] in (-1, 1)
            return {"region_centres": ((xy + 1) * np.array(image.shape[:1:-1]) - 1) / 2}
        rows, cols = cnn.convs(image).shape[2:]
    return {"grid": (int(rows), int(cols)), "cell_size": float(cnn.stride)}


def plot_attention(
    image: np.ndarray,
    path: str | os.PathLike[str],
    *,
    region_weights: np.ndarray | None = None,
    region_centres: np.ndarray | None = None,
    grid: tuple[int, int] | None = None,
    cell_size: float | None = None,
    words: Sequence[str] = (),
    word_weights: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Save a PNG of ``image`` with its attention.

    Args:
        image: uint8 [H, W, 3].
        region_weights: float [K], one weight per region (summed over glimpses by the caller).
        region_centres: float [K, 2] pixel (x, y) of each region: drawn as discs whose opacity
            follows the weight; or ``grid=(rows, cols)`` for grid features, drawn as a heat map,
            cell (r, c) centred on pixel (c, r) times ``cell_size`` (:func:`cnn_layout`), or
            spread evenly over the image without it.
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
            ax.imshow(heat / top, cmap="magma", alpha=0.55, extent=cell_extent(grid, cell_size, h, w),
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

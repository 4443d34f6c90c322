"""PNG plots of a leaderboard (matplotlib, Agg): what a person looks at instead of the tables.

Per task, from the summary rows of :func:`mmfuse.bench.leaderboard.summarize`:

- ``<task>_accuracy_vs_params.png``: test accuracy (mean ± std over seeds) against parameters,
  log x, one point per fusion, coloured by family;
- ``<task>_accuracy_vs_time.png``: the same against training seconds;
- ``<task>_robustness.png``: accuracy against noise level, one panel per modality, one line
  per fusion (its own colour; the line style marks the family; rows with robustness results only);
- ``<task>_qtypes.png``: accuracy per question type, one panel per type, one bar per fusion
  (Sort-of-CLEVR).

Every file is written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FAMILY_COLOURS", "plot_accuracy_vs_params", "plot_accuracy_vs_time", "plot_all", "plot_qtypes",
           "plot_robustness"]

FAMILY_COLOURS: dict[str, str] = {
    "simple": "#7f7f7f",
    "gated": "#17becf",
    "bilinear": "#d62728",
    "attention": "#1f77b4",
    "bilinear attention": "#9467bd",
    "transformer": "#ff7f0e",
    "relational": "#e377c2",
    "search": "#2ca02c",
    "other": "#8c564b",
}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_STYLES = ("-", "--", "-.", ":")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, *, dpi: int = 120, bbox_inches: str | None = "tight") -> Path:
    """Write ``fig`` to ``path`` atomically and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches=bbox_inches)
    _plt().close(fig)
    os.replace(tmp, path)
    return path


def _colour(family: str) -> str:
    return FAMILY_COLOURS.get(family, FAMILY_COLOURS["other"])


def _place_labels(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: float = 7.5) -> None:
    """Annotate each point with its label, choosing among 28 offsets (the far ones with a leader
    line) the one that overlaps the texts already on the axes, the labels placed before it and the
    points the least."""
    from matplotlib.text import Text

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    # near offsets first; far ones (drawn with a thin leader line) when every near one collides
    offsets = [(5, 4), (5, -10), (-5, 4), (-5, -10), (0, 8), (0, -13), (9, -3), (-9, -3),
               (14, 16), (14, -22), (-14, 16), (-14, -22), (0, 24), (0, -28), (26, -3), (-26, -3),
               (28, 30), (28, -36), (-28, 30), (-28, -36), (0, 42), (0, -46), (48, -3), (-48, -3),
               (48, 22), (48, -28), (-48, 22), (-48, -28)]
    placed: list[Any] = [Text.get_window_extent(t, renderer) for t in ax.texts]  # e.g. the reference lines' names
    points = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    axbox = ax.get_window_extent(renderer)
    order = sorted(range(len(labels)), key=lambda i: (ys[i], xs[i]))
    for i in order:
        best, best_cost = None, None
        for dx, dy in offsets:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            far = abs(dx) > 10 or abs(dy) > 14
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                            ha=ha, va="bottom" if dy >= 0 else "top",
                            arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.7, "shrinkA": 1, "shrinkB": 3}
                            if far else None)
            # the text alone: an annotation's own extent also spans its leader line
            t.update_positions(renderer)
            box = Text.get_window_extent(t, renderer).expanded(1.05, 1.1)
            cost = 5.0 * sum(_overlap(box, p) for p in placed)  # text over text: the worst outcome
            cost += sum(50.0 for j, (px, py) in enumerate(points)
                        if j != i and box.x0 - 5 <= px <= box.x1 + 5 and box.y0 - 5 <= py <= box.y1 + 5)
            cost += 0.5 * (abs(dx) + abs(dy))  # prefer near labels
            # a label without a leader line must sit nearer its own point than any other (or it reads
            # as the other's); a far one has its line to say whose it is
            cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
            own = (cx - points[i][0]) ** 2 + (cy - points[i][1]) ** 2
            cost += 0.0 if far else sum(40.0 for j, (px, py) in enumerate(points)
                                        if j != i and (cx - px) ** 2 + (cy - py) ** 2 < own)
            cost += 1e4 * (box.x0 < axbox.x0 or box.x1 > axbox.x1 or box.y0 < axbox.y0 or box.y1 > axbox.y1)
            if best_cost is None or cost < best_cost:
                if best is not None:
                    best.remove()
                best, best_cost, best_box = t, cost, box
            else:
                t.remove()
            if best_cost <= 0.5 * (abs(dx) + abs(dy)):
                break
        placed.append(best_box)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def _family_legend(ax, families: Sequence[str], loc: str = "best", outside: bool = False) -> None:
    """The family colours; ``outside``: to the right of the axes, where no point or label can be
    under it (a legend inside the axes covered a label placed before it)."""
    plt = _plt()
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=_colour(f), label=f) for f in families]
    where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if outside else {"loc": loc}
    ax.legend(handles=handles, title="family", fontsize=8, title_fontsize=8, framealpha=0.85, **where)


# the no-training reference levels (leaderboard.task_references) as lines: (colour, line style)
_REFERENCE_STYLES = (("0.35", "--"), ("0.1", ":"))


def _reference_lines(ax, references: Mapping[str, Mapping[str, float]] | None, key: str, vertical: bool) -> list[float]:
    """One line per reference level at its ``key`` accuracy (%), labelled for the legend; the values drawn."""
    drawn = []
    for (name, acc), (colour, ls) in zip((references or {}).items(), _REFERENCE_STYLES):
        value = acc.get(key)
        if value is None or value != value:  # a type without questions
            continue
        line = ax.axvline if vertical else ax.axhline
        line(100 * value, color=colour, linestyle=ls, linewidth=1.2, zorder=1, label=f"{name} (no training)")
        if not vertical:  # named on the line itself, at the left edge: no legend to cover the points
            ax.text(0.01, 100 * value, f"{name} (no training)", transform=ax.get_yaxis_transform(), ha="left",
                    va="bottom", fontsize=8, color=colour, zorder=2)
        drawn.append(100 * value)
    return drawn


def _scatter(rows: Sequence[Mapping[str, Any]], path: Path, task: str, x_key: str, x_label: str, title: str,
             log_x: bool, references: Mapping[str, Mapping[str, float]] | None = None) -> Path | None:
    rows = [r for r in rows if r.get(f"{x_key}_mean") and r.get("accuracy_mean") is not None]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 6.2))
    xs = [float(r[f"{x_key}_mean"]) for r in rows]
    ys = [100 * float(r["accuracy_mean"]) for r in rows]
    for r, x, y in zip(rows, xs, ys):
        err = 100 * (r.get("accuracy_std") or 0.0)
        ax.errorbar(x, y, yerr=err if r.get("seeds", 1) > 1 else None, fmt="o", color=_colour(r["family"]), ms=7,
                    capsize=3, elinewidth=1, markeredgecolor="black", markeredgewidth=0.5, zorder=3)
    if log_x:
        ax.set_xscale("log")
        import matplotlib.ticker as mt

        ax.xaxis.set_major_formatter(mt.FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k"
                                                      if v >= 1e3 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(mt.NullFormatter())
    levels = _reference_lines(ax, references, "overall", vertical=False)
    lo, hi = min(ys + levels), max(ys + levels)
    pad = max(2.0, 0.08 * (hi - lo))
    ax.set_ylim(lo - pad, hi + 2 * pad)
    if log_x:
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    else:
        span = max(xs) - min(xs) or max(xs)
        ax.set_xlim(min(xs) - 0.08 * span, max(xs) + 0.12 * span)
    ax.set_xlabel(x_label, fontsize=11)
    ax.set_ylabel("test accuracy (%), mean ± std over seeds", fontsize=11)
    ax.set_title(title, fontsize=12)
    ax.grid(alpha=0.3, which="major")
    _family_legend(ax, sorted({r["family"] for r in rows}), outside=True)
    fig.tight_layout()  # with the legend, before the labels are placed in the axes it leaves
    _place_labels(ax, xs, ys, [r["fusion"] for r in rows])
    return _save(fig, path)


def plot_accuracy_vs_params(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], task: str,
                            references: Mapping[str, Mapping[str, float]] | None = None) -> Path | None:
    """Accuracy against the model's parameters (log x), coloured by family, with the task's
    no-training ``references`` (level -> accuracy by type) as horizontal lines; ``None`` without rows."""
    return _scatter(rows, Path(path), task, "params", "parameters (whole model, log scale)",
                    f"{task}: test accuracy vs model size", log_x=True, references=references)


def plot_accuracy_vs_time(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], task: str,
                          references: Mapping[str, Mapping[str, float]] | None = None) -> Path | None:
    """Accuracy against training seconds (the whole budget), coloured by family, with ``references``."""
    return _scatter(rows, Path(path), task, "train_s", "training time (s, fit incl. validation)",
                    f"{task}: test accuracy vs training time", log_x=False, references=references)


def plot_robustness(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], task: str) -> Path | None:
    """Accuracy against noise level per modality, one line per fusion; ``None`` without results."""
    rows = [r for r in rows if r.get("robust_modalities")]
    if not rows:
        return None
    plt = _plt()
    mods = list(rows[0]["robust_modalities"])
    fig, axes = plt.subplots(1, len(mods), figsize=(5.2 * len(mods) + 2.6, 5.0), sharey=True, squeeze=False)
    # a distinct colour per fusion (tab10, tab20 beyond 10 lines) and a line style per family: a dozen lines of one family
    # in one colour could not be told apart
    families = sorted({r["family"] for r in rows})
    cmap, k = (plt.get_cmap("tab10"), 10) if len(rows) <= 10 else (plt.get_cmap("tab20"), 20)
    styles = {r["fusion"]: (cmap(i % k), _STYLES[families.index(r["family"]) % len(_STYLES)], _MARKERS[i % len(_MARKERS)])
              for i, r in enumerate(rows)}
    for ax, m in zip(axes[0], mods):
        for r in rows:
            colour, ls, marker = styles[r["fusion"]]
            ax.plot(r["noise_levels"], [100 * a for a in r[f"noise_{m}"]], color=colour, linestyle=ls, marker=marker,
                    ms=4, lw=1.4, label=f"{r['fusion']} ({r['family']})")
        ax.set_title(f"noise on input '{m}'", fontsize=11)
        ax.set_xlabel("noise std / feature std", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%), mean over seeds", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
               ncol=1 if len(rows) <= 22 else 2)
    fig.suptitle(f"{task}: robustness to Gaussian noise on one modality", fontsize=12)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_qtypes(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], task: str,
                qtypes: Sequence[str], references: Mapping[str, Mapping[str, float]] | None = None) -> Path | None:
    """Accuracy per question type: one panel per type, one horizontal bar per fusion, and the
    no-training ``references`` (level -> accuracy by type) as vertical lines."""
    qs = [q for q in qtypes if any(r.get(f"acc_{q}_mean") is not None for r in rows)]
    if not qs:
        return None
    plt = _plt()
    rows = sorted(rows, key=lambda r: r.get("accuracy_mean") or 0.0)
    n = len(rows)
    fig, axes = plt.subplots(1, len(qs), figsize=(2.3 * len(qs) + 2.0, max(3.2, 0.28 * n + 1.8)), sharey=True,
                             squeeze=False)
    ys = list(range(n))
    # Sort-of-CLEVR's first three types are non-relational, the last three relational
    soc = ("shape", "left", "top", "closest", "furthest", "count")
    relational = {q: ("non-relational" if i < 3 else "relational") for i, q in enumerate(soc)}
    for ax, q in zip(axes[0], qs):
        vals = [100 * (r.get(f"acc_{q}_mean") or 0.0) for r in rows]
        errs = [100 * (r.get(f"acc_{q}_std") or 0.0) if r.get("seeds", 1) > 1 else 0.0 for r in rows]
        ax.barh(ys, vals, xerr=errs if any(errs) else None, color=[_colour(r["family"]) for r in rows], height=0.7,
                error_kw={"elinewidth": 0.8, "capsize": 2})
        _reference_lines(ax, references, q, vertical=True)
        ax.set_xlim(0, 100)
        ax.set_title(q + (f"\n({relational.get(q)})" if relational.get(q) else ""), fontsize=10)
        ax.set_xlabel("accuracy (%)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels([r["fusion"] for r in rows], fontsize=8)
    handles = [plt.Line2D([], [], marker="s", linestyle="", ms=9, color=_colour(f), label=f)
               for f in sorted({r["family"] for r in rows})]
    handles += [plt.Line2D([], [], color=colour, linestyle=ls, label=f"{name}\n(no training)")
                for name, (colour, ls) in zip(references or {}, _REFERENCE_STYLES)]
    fig.legend(handles=handles, title="family", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title_fontsize=8, frameon=False)
    fig.suptitle(f"{task}: test accuracy per question type (mean over seeds)", fontsize=12)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_all(rows: Sequence[Mapping[str, Any]], folder: str | os.PathLike[str],
             qtypes: Sequence[str] = (), references: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
             ) -> list[Path]:
    """Every plot for every task in ``rows`` (``references``: task -> its no-training levels,
    drawn as lines); the files written."""
    folder = Path(folder)
    out: list[Path] = []
    for task in dict.fromkeys(r["task"] for r in rows):
        trows = [r for r in rows if r["task"] == task]
        refs = (references or {}).get(task)
        for made in (
            plot_accuracy_vs_params(trows, folder / f"{task}_accuracy_vs_params.png", task, refs),
            plot_accuracy_vs_time(trows, folder / f"{task}_accuracy_vs_time.png", task, refs),
            plot_robustness(trows, folder / f"{task}_robustness.png", task),
            plot_qtypes(trows, folder / f"{task}_qtypes.png", task, qtypes, refs),
        ):
            if made is not None:
                out.append(made)
    return out

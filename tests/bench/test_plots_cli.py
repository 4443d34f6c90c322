"""Plots from summary rows, and the ``mmfuse bench`` command line."""
from __future__ import annotations

import json

import pytest

from mmfuse import cli
from mmfuse.bench import leaderboard as lb
from mmfuse.bench import plots
from mmfuse.bench.cli import parse_tasks
from mmfuse.bench.robustness import NOISE_LEVELS

PNG = b"\x89PNG\r\n\x1a\n"
QTYPES = ("shape", "left", "top", "closest", "furthest", "count")


def _entries():
    """Per-seed entries of 3 fusions on soc, with robustness results."""
    out = []
    for i, (fusion, family) in enumerate((("concat", "simple"), ("mlb", "bilinear"), ("ban", "bilinear attention"))):
        for seed in (0, 1):
            acc = 0.5 + 0.1 * i + 0.02 * seed
            curve = [acc - 0.03 * k * (3 - i) / 3 for k in range(11)]
            out.append({
                "task": "soc", "fusion": fusion, "family": family, "kind": "vector", "seed": seed, "accuracy": acc,
                "params": 10_000 * 10 ** i, "fusion_params": 5000, "train_s": 10.0 + i, "plateau_epoch": 2 + seed,
                "plateau_s": 5.0, "latency_ms": 1.0, **{f"acc_{q}": acc - 0.01 * j for j, q in enumerate(QTYPES)},
                "robustness": {"levels": list(NOISE_LEVELS),
                               "clean": acc, "modalities": {m: {"noise": curve, "missing": acc / 2} for m in ("v", "q")}},
            })
    return out


def test_summary_robustness_columns_and_every_plot(tmp_path):
    rows = lb.summarize(_entries(), QTYPES)
    lb.add_effective_robustness(rows, "concat")
    by = {r["fusion"]: r for r in rows}
    assert [r["fusion"] for r in rows] == ["ban", "mlb", "concat"]  # best first
    assert by["mlb"]["acc_left_mean"] == pytest.approx((0.6 - 0.01) + 0.01)  # mean of 0.59 and 0.61
    assert by["concat"]["effective_v"] == 0.0
    # mlb drops 2/3 as fast as concat: sum_k 0.03 k (1 - 2/3) = 0.01 * 55
    assert by["mlb"]["effective_v"] == pytest.approx(0.55)
    assert by["ban"]["missing_q_mean"] == pytest.approx((0.7 + 0.72) / 4)
    md = lb.format_markdown(rows, {"soc/tfn": "why not"}, QTYPES)
    assert "Robustness, soc" in md and "- tfn: why not" in md
    assert "| mlb | 61.0 | 30.5 ± 0.7 |" in md  # clean mean; missing v: mean and std of 0.30, 0.31
    files = plots.plot_all(rows, tmp_path, qtypes=QTYPES)
    assert sorted(p.name for p in files) == sorted(
        f"soc_{k}.png" for k in ("accuracy_vs_params", "accuracy_vs_time", "robustness", "qtypes"))
    for p in files:
        assert p.read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary file


def test_reference_levels_are_drawn_where_their_accuracies_are(tmp_path, monkeypatch):
    rows = lb.summarize(_entries(), QTYPES)
    refs = {"question only": {"overall": 0.45, **{q: 0.3 + 0.05 * i for i, q in enumerate(QTYPES)}},
            "question + shape counts": {"overall": 0.6, **{q: 0.5 for q in QTYPES}, "left": float("nan")}}
    figures = {}
    real_save = plots._save

    def keep(fig, path, **kw):
        figures[path.name] = fig
        return real_save(fig, path, **kw)

    monkeypatch.setattr(plots, "_save", keep)
    plots.plot_all(rows, tmp_path, qtypes=QTYPES, references={"soc": refs, "other": {"x": {"overall": 0.1}}})

    def levels(ax, vertical):
        return {ln.get_label(): (ln.get_xdata() if vertical else ln.get_ydata())[0]
                for ln in ax.lines if ln.get_label().endswith("(no training)")}

    for name in ("soc_accuracy_vs_params.png", "soc_accuracy_vs_time.png"):
        ax = figures[name].axes[0]
        assert levels(ax, False) == {"question only (no training)": 45.0, "question + shape counts (no training)": 60.0}
        assert {t.get_text() for t in ax.texts} >= {"question only (no training)",
                                                    "question + shape counts (no training)"}
        assert ax.get_ylim()[0] < 45.0  # the lines are inside the axes
    panels = figures["soc_qtypes.png"].axes
    for i, q in enumerate(QTYPES):
        want = {"question only (no training)": pytest.approx(100 * (0.3 + 0.05 * i))}
        if q != "left":  # a level without that type draws nothing there
            want["question + shape counts (no training)"] = 50.0
        assert levels(panels[i], True) == want
    # without references: no lines
    figures.clear()
    plots.plot_all(rows, tmp_path / "plain", qtypes=QTYPES)
    assert not any(levels(ax, v) for f in figures.values() for ax in f.axes for v in (True, False))


def test_labels_of_a_dense_cluster_do_not_overlap():
    from matplotlib.text import Text

    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(9.5, 6.2))
    # ten fusions within a few pixels of each other (as soc_pixels' vector fusions), three apart
    xs = [130 + 3 * (i % 4) for i in range(10)] + [300, 1200, 1400]
    ys = [67 + 0.3 * (i % 3) for i in range(10)] + [89, 79, 87]
    labels = ["concat", "concat_mlp", "linear_sum", "product", "mlb", "mfb", "mfh", "block", "gmu", "mcb", "dan",
              "bilinear", "ban"]
    ax.scatter(xs, ys)
    ax.set_xlim(0, 1600)
    ax.set_ylim(40, 95)
    # a text already there (a reference line's name) right where a label would go first
    ax.text(128, 67.4, "question + shape counts (no training)", fontsize=8)
    plots._place_labels(ax, xs, ys, labels)
    renderer = fig.canvas.get_renderer()
    boxes = []
    for t in ax.texts:
        if hasattr(t, "update_positions"):  # an annotation
            t.update_positions(renderer)
        boxes.append((t.get_text(), Text.get_window_extent(t, renderer)))
    assert sorted(b[0] for b in boxes) == sorted([*labels, "question + shape counts (no training)"])
    overlaps = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if plots._overlap(ba, bb) > 0]
    plt.close(fig)
    assert overlaps == []


def test_scatter_legend_sits_outside_the_axes_and_under_no_label(tmp_path, monkeypatch):
    """The family legend of the scatter plots goes to the right of the axes: inside, placed after
    the labels, it covered one (session 17's soc_pixels plot hid "bilinear")."""
    from matplotlib.text import Text

    rows = lb.summarize(_entries(), QTYPES)
    seen = {}
    real_save = plots._save

    def measure(fig, path, **kw):  # before _save closes the figure
        ax = fig.axes[0]
        renderer = fig.canvas.get_renderer()
        seen["legend"] = ax.get_legend().get_window_extent(renderer)
        seen["axes"], seen["figure"] = ax.get_window_extent(renderer), fig.bbox
        seen["labels"] = [Text.get_window_extent(t, renderer) for t in ax.texts]
        return real_save(fig, path, **kw)

    monkeypatch.setattr(plots, "_save", measure)
    plots.plot_accuracy_vs_params(rows, tmp_path / "p.png", "soc")
    legend = seen["legend"]
    assert legend.x0 >= seen["axes"].x1  # right of the axes
    assert legend.x1 <= seen["figure"].x1 + 1  # and inside the figure
    assert len(seen["labels"]) == len(rows) and not any(plots._overlap(legend, b) > 0 for b in seen["labels"])


def test_parse_tasks_and_unknown_task_error(capsys):
    assert parse_tasks(None) is None
    assert parse_tasks(["soc,soc_bits", "interactions_o2", "soc"]) == ["soc", "soc_bits", "interactions_o2"]
    with pytest.raises(ValueError, match=r"unknown task 'pixels'.*known tasks: soc, soc_bits, soc_pixels, interactions_o1"):
        parse_tasks(["pixels"])
    assert cli.main(["bench", "leaderboard", "--tasks", "interactions_o9"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'interactions_o9'" in err and "interactions_o3" in err


def test_parser_options_and_argparse_errors(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["bench", "leaderboard", "--tasks", "soc", "soc_bits", "--fusions", "mf*", "--seeds", "2",
                              "--steps", "40", "--robustness", "--out", "x"])
    assert (args.tasks, args.fusions, args.seeds, args.steps, args.epochs, args.robustness, args.quick, args.out) == (
        ["soc", "soc_bits"], "mf*", 2, 40, None, True, False, "x")
    args = parser.parse_args(["bench", "fusions", "--batch", "8", "--preset", "small"])
    assert (args.bench_command, args.batch, args.preset, args.fusions) == ("fusions", 8, "small", "*")
    for bad in (["bench", "leaderboard", "--seeds", "0"], ["bench", "leaderboard", "--epochs", "2", "--steps", "3"],
                ["bench"], ["bench", "fusions", "--preset", "huge"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(SystemExit):
        cli.main(["bench", "fusions", "--bogus", "1"])
    assert "unrecognized arguments: --bogus 1" in capsys.readouterr().err


def test_bench_fusions_runs(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert cli.main(["bench", "fusions", "--fusions", "mlb,san", "--batch", "4", "--dim", "16", "--regions", "3",
                     "--words", "2", "--repeat", "1", "--no-memory", "--preset", "small", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| mlb | vector | bilinear |" in text and "| san | attention | attention |" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["mlb", "san"] and all(r["fb"] > 0 and r["params"] > 0 for r in rows)
    assert cli.main(["bench", "fusions", "--fusions", "nothing*"]) == 2
    assert "no fusion matches 'nothing*'" in capsys.readouterr().err


def test_bench_leaderboard_command(tmp_path, capsys):
    code = cli.main(["bench", "leaderboard", "--tasks", "interactions_o1", "--fusions", "concat", "--seeds", "1",
                     "--epochs", "1", "--n-train", "200", "--n-test", "60", "--out", str(tmp_path), "--no-plots",
                     "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "### interactions_o1" in out and "| concat | simple |" in out
    assert json.loads((tmp_path / "results.json").read_text())["entries"].keys() == {"interactions_o1/concat/seed0"}


def test_run_plot_labels_of_two_close_points_go_above_and_below():
    from mmfuse.bench.run import _label_offsets

    # the main job's concat MLP (lower) and MLB (higher) sit at about the same size and accuracy
    low, high, far = (59_658, 70.9), (59_786, 71.5), (348_010, 98.0)
    assert _label_offsets([low, high, far]) == [(4, -4), (4, 4), (4, 4)]
    assert _label_offsets([high, low, far]) == [(4, 4), (4, -4), (4, 4)]
    # apart in size or in accuracy: both above
    assert _label_offsets([low, (2 * 59_658, 70.9), far]) == [(4, 4)] * 3
    assert _label_offsets([low, (59_658, 90.0), far]) == [(4, 4)] * 3
    assert _label_offsets([]) == []

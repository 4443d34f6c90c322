"""benchmarks/profile_fusions.py on the CPU: the profile's numbers add up, the GEMMs are found."""

from __future__ import annotations

import json

import pytest
from script_helpers import load_script


def test_profile_rows_add_up_and_count_the_gemms(tmp_path, capsys):
    mod = load_script("profile_fusions")
    out = tmp_path / "p.json"
    assert mod.main(["--device", "cpu", "--fusions", "mlb", "--batch", "4", "--repeat", "1", "--steps", "2",
                     "--top", "50", "--autocast", "none", "--threads", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["graph ms"] is None  # no CUDA graph on a CPU
    top = {t["name"]: t for t in row["top"]}
    # MLB: two input projections and the output Linear, forward and backward
    assert {"aten::addmm", "aten::mm"} <= set(top)
    gemm = sum(t["ms"] for n, t in top.items() if n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"))
    assert row["GEMM ms"] == pytest.approx(gemm) and 0 < row["GEMM ms"] < row["kernel ms"]
    assert row["kernel ms"] == pytest.approx(sum(t["ms"] for t in row["top"]))  # every op listed: the total
    assert top["aten::addmm"]["calls"] == 3  # per step: the three Linears' forwards
    side = int(row["params"] ** 0.5)
    assert row["square"]["params"] == side * side
    text = capsys.readouterr().out
    assert "| mlb | 8.94M |" in text and "mlb: top kernels" in text
    with pytest.raises(SystemExit, match="unknown \\['nope'\\]"):
        mod.main(["--device", "cpu", "--fusions", "nope"])


def test_square_baseline_takes_the_fastest_side_per_weight():
    from mmfuse.bench import micro

    assert micro.square_sides(5025**2) == [5025, 5024, 4992]  # 4992 is a multiple of 64 and 128
    assert micro.square_sides(4143**2) == [4143, 4136, 4096]
    assert micro.square_sides(100) == [10, 8]
    assert micro.square_sides(3) == [1]
    # a slow 5025 (3 ms) loses to 4992 at 1 ms, scaled up to 5025**2 weights
    times = {5025: 3.0, 5024: 2.5, 4992: 1.0}
    ms, side = micro.square_baseline(5025**2, times.get)
    assert side == 4992 and ms == 1.0 * 5025**2 / 4992**2
    assert micro.square_baseline(100, lambda s: None) == (None, None)


def test_fusions_square_baseline_runs_on_the_cpu(tmp_path):
    mod = load_script("fusions")
    out = tmp_path / "f.json"
    assert mod.main(["--fusions", "mlb", "--batch", "4", "--shapes", "2d", "--repeat", "1", "--rounds", "1",
                     "--no-block", "--no-memory", "--square-baseline", "--json", str(out)]) == 0
    from mmfuse.bench import micro

    (row,) = json.loads(out.read_text())
    assert row["extra"]["square side"] in micro.square_sides(row["params"])
    assert row["extra"]["mmfuse / square"] == row["fb"] / row["extra"]["square GEMM f+b"] > 0

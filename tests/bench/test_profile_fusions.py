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

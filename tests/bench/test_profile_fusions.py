"""benchmarks/profile_fusions.py on the CPU: the profile's numbers add up, the GEMMs are found."""

from __future__ import annotations

import json

import pytest
import torch
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


def test_fusions_runs_tucker_at_3d_only_when_named(tmp_path):
    mod = load_script("fusions")
    kw = ["--batch", "1", "--shapes", "2d,3d", "--repeat", "1", "--rounds", "1", "--no-block", "--no-memory"]
    out = tmp_path / "named.json"
    assert mod.main(["--fusions", "tucker", *kw, "--json", str(out)]) == 0
    assert [r["shape"] for r in json.loads(out.read_text())] == ["2d", "3d"]
    out = tmp_path / "pattern.json"
    assert mod.main(["--fusions", "tuck*", *kw, "--json", str(out)]) == 0
    assert [r["shape"] for r in json.loads(out.read_text())] == ["2d"]  # a pattern keeps the default skip


def test_gemm_replay_shares_operands_only_past_its_memory_budget(monkeypatch):
    from mmfuse.bench import micro

    rec = micro.GemmRecorder()
    a, b = torch.randn(4, 3), torch.randn(3, 5)
    with rec:
        a @ b
        a @ b
        a @ b.t().contiguous().t()  # another layout (strides)
    calls = rec.calls
    assert len(calls) == 3
    own = micro.replay_operands(calls, torch.device("cpu"), torch.float32)
    assert len({id(t) for _, ts, _ in own for t in ts}) == 6  # every call its own operands
    monkeypatch.setattr(micro, "REPLAY_SHARE_BYTES", 0)
    shared = micro.replay_operands(calls, torch.device("cpu"), torch.float32)
    assert shared[0][1] is shared[1][1] and shared[2][1] is not shared[0][1]
    assert [(tuple(t.shape), t.stride()) for t in shared[2][1]] == [((4, 3), (3, 1)), ((3, 5), (1, 3))]


def test_gemm_replay_writes_out_calls_into_one_tensor_of_their_own():
    from mmfuse.bench import micro

    rec = micro.GemmRecorder()
    a, b, buf = torch.randn(4, 3), torch.randn(3, 5), torch.empty(4, 5)
    with rec:
        for _ in range(3):
            torch.mm(a, b, out=buf)
        torch.bmm(a.unsqueeze(0), b.unsqueeze(0))
    assert [c[0] for c in rec.calls] == [torch.ops.aten.mm.out] * 3 + [torch.ops.aten.bmm.default]
    assert rec.calls[0][2] == {"out": micro.OutLayout((4, 5), (5, 1))}
    replays = micro.replay_operands(rec.calls, torch.device("cpu"), torch.float32)
    outs = {id(kw["out"]) for _, _, kw in replays[:3]}
    assert len(outs) == 1 and replays[0][2]["out"] is not buf and "out" not in replays[3][2]
    func, tensors, kw = replays[0]
    func(*tensors, **kw)
    torch.testing.assert_close(kw["out"], tensors[0] @ tensors[1])
